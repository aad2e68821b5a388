"""Running an export without PyTorch: onnxruntime, numpy and the tokenizer.

    model = lmkit.exports.load("exp/m0")       # checks names and hashes, then opens the session
    model.generate(["The cat"], max_new_tokens=20)
    backend = model.backend()                  # for lmkit.decoding's strategies, as TorchBackend is

Loading checks the directory before onnxruntime reads anything from it (see manifest.py): names
that leave the directory, files whose hash changed and external data that the manifest does not
list are refused, each in one line.
"""
from __future__ import annotations

import logging
import os
import posixpath
import re
from collections.abc import Sequence

import numpy as np

from lmkit.decoding.common import drop_padding_columns
from lmkit.errors import ArtifactError, LmkitError, MissingDependency

from .graphs import BATCH, DECODER_ONLY, ENCODER, PAST
from .manifest import check_graphs, read_manifest, safe_path, verify_files

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
# The onnxruntime package that brings an execution provider, for the error when it is missing.
PACKAGES = {CUDA: "onnxruntime-gpu", "TensorrtExecutionProvider": "onnxruntime-gpu",
            "DmlExecutionProvider": "onnxruntime-directml", "OpenVINOExecutionProvider": "onnxruntime-openvino",
            "QNNExecutionProvider": "onnxruntime-qnn"}
# The distributions that install the `onnxruntime` module; two of them overwrite each other's files.
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                         "onnxruntime-qnn", "onnxruntime-training")
# Where the cache stays between steps (IO binding), by the session's first provider; else the host.
BINDING_DEVICES = {CUDA: "cuda", "TensorrtExecutionProvider": "cuda"}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("running an export needs onnxruntime, which is not installed; install one of "
                                "pip install 'lmkit-toolkit[serve]' (CPU) or pip install 'lmkit-toolkit[serve-gpu]' (CUDA)") from None
    return onnxruntime


def installed_runtimes() -> list[str]:
    """The installed distributions that provide the onnxruntime module (one, unless the install is broken)."""
    from importlib import metadata

    found = []
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def _check_one_runtime() -> None:
    runtimes = installed_runtimes()
    if len(runtimes) > 1:
        log.warning("%s are all installed and overwrite each other's files in the onnxruntime module, so its "
                    "providers may be missing or broken; keep one: pip uninstall -y %s, then pip install the "
                    "one you want", " and ".join(runtimes), " ".join(runtimes))


def _device(device: str) -> tuple[str, int]:
    """("auto" | "cpu" | "cuda", card index) from auto, cpu, cuda or cuda:N."""
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise LmkitError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    return kind, int(index or 0)


def providers_for(device: str = "auto", provider: str | None = None) -> list:
    """The providers to ask onnxruntime for: a device (auto, cpu, cuda, cuda:N) or one provider by name.

    auto is CUDA when this onnxruntime build has it, else the CPU. A named provider must be one this
    build has; it is followed by the CPU provider, which runs the operators it lacks.
    """
    ort = _onnxruntime()
    kind, index = _device(device)
    available = ort.get_available_providers()
    if provider is not None:
        if kind != "auto":
            raise LmkitError(f"give a device ('{device}') or a provider ('{provider}'), not both")
        if provider not in available:
            raise LmkitError(_unavailable(ort, provider, available))
        return [provider] if provider == CPU else [provider, CPU]
    if kind == "cuda" and CUDA not in available:
        raise LmkitError(f"device '{device}' was asked for, but {_runtime_name(ort)} has no {CUDA} (it has "
                         f"{', '.join(available)}); install onnxruntime-gpu in place of onnxruntime, or use "
                         "device 'cpu'")
    if kind == "cpu" or CUDA not in available:
        return [CPU]
    return [(CUDA, {"device_id": index}), CPU]


def _unavailable(ort, provider: str, available: list[str]) -> str:
    """Why `provider` cannot be had, in one line, with the providers that can."""
    from lmkit.errors import did_you_mean

    have = f"this onnxruntime has {', '.join(available)}"
    if provider not in ort.get_all_providers():
        return (f"unknown execution provider '{provider}'{did_you_mean(provider, ort.get_all_providers())}; "
                f"{have}")
    package = PACKAGES.get(provider)
    fix = f"; install {package} in place of {_runtime_name(ort).split()[0]}" if package else ""
    return f"execution provider {provider} is not available in {_runtime_name(ort)}: {have}{fix}"


def _runtime_name(ort) -> str:
    """"onnxruntime-gpu 1.32.0": the installed package and version."""
    runtimes = installed_runtimes()
    return f"{runtimes[0] if len(runtimes) == 1 else 'onnxruntime'} {ort.__version__}"


def _name(provider) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def _cannot_load(ort, file: str, opsets: dict[str, int], manifest: dict, error: Exception) -> str:
    """One line on why onnxruntime refused a graph: an opset or IR version it does not know, or its own words."""
    text = " ".join(str(error).split())
    runtime = _runtime_name(ort)
    opset = opsets.get("ai.onnx") or manifest.get("opset")
    newest = re.search(r"official support for domain ai\.onnx is till opset (\d+)", text)
    asked = re.search(r"Opset (\d+) is under development", text)
    if newest or asked:
        opset = int(asked.group(1)) if asked else opset
        limit = f" (it runs opsets up to {newest.group(1)})" if newest else ""
        return (f"{file} is ONNX opset {opset}, which {runtime} cannot run{limit}; upgrade onnxruntime, or export "
                "the model again with a lower --opset (the default, 18, runs on onnxruntime 1.14 and later)")
    ir = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text)
    if ir:
        return (f"{file} is ONNX IR version {ir.group(1)}, which {runtime} cannot read (it reads up to "
                f"{ir.group(2)}); upgrade onnxruntime, or export the model again with an older onnx")
    # onnxruntime's message starts with its error code and the C++ source line; the rest is the reason.
    reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    reason = re.sub(r"^Load model from \S+ failed:", "", reason)
    reason = re.sub(r"^/\S+:\d+ [^)]*\) ", "", reason)[:300]
    missing = re.search(r"Could not find an implementation for (\S+)", text)
    if missing:
        return (f"{runtime} has no kernel for {missing.group(1)} in {file} (ONNX opset {opset}); upgrade "
                "onnxruntime, or export the model again with --opset 18")
    if opset is not None and "opset" in text.lower():
        return f"{file} is ONNX opset {opset}, which {runtime} cannot run ({reason}); upgrade onnxruntime"
    return f"{runtime} could not load {file}: {reason}"


class ExportedModel:
    """An export directory, checked and opened: its manifest, tokenizer and onnxruntime session.

    device: auto (CUDA when this onnxruntime has it, else the CPU), cpu, cuda or cuda:N; or
    provider: one onnxruntime execution provider by name (CUDAExecutionProvider, ...), which must
    then be the one that runs the graph. session_options: an onnxruntime.SessionOptions (threads).
    """

    def __init__(self, directory: str, device: str = "auto", provider: str | None = None, session_options=None):
        self.directory = directory
        manifest = read_manifest(directory)
        ort = _onnxruntime()
        wanted = providers_for(device, provider)  # before reading the graph: a wrong provider fails fast
        architecture = manifest.get("architecture")
        if architecture not in (DECODER_ONLY, ENCODER):
            raise ArtifactError(f"{directory} is a '{architecture}' export; this lmkit runtime "
                                f"serves {DECODER_ONLY} and {ENCODER} exports")
        verify_files(directory, manifest)
        opsets = check_graphs(directory, manifest)
        self.manifest = manifest
        self.architecture = architecture
        if set(manifest["graphs"]) != {"model"}:
            raise ArtifactError(f"{directory}: a {architecture} export has one graph, 'model'; this one has "
                                f"{', '.join(manifest['graphs'])}")
        self.graph = manifest["graphs"]["model"]
        inputs, outputs = ({t["name"] for t in self.graph[side]} for side in ("inputs", "outputs"))
        needed = ("input_ids", "logits") if architecture == DECODER_ONLY else ("input_ids", "last_hidden_state")
        if needed[0] not in inputs or needed[1] not in outputs:
            raise ArtifactError(f"{directory}: a {architecture} graph takes {needed[0]} and returns {needed[1]}; "
                                "this one does not")
        self.tokenizer = self._tokenizer(directory, manifest)
        _check_one_runtime()
        path = safe_path(directory, self.graph["file"], "graph file")
        try:
            self.session = ort.InferenceSession(path, sess_options=session_options, providers=wanted)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types (Fail, InvalidGraph, ...)
            raise ArtifactError(f"{directory}: " + _cannot_load(ort, self.graph["file"], opsets["model"], manifest,
                                                                 error)) from None
        self.providers = self.session.get_providers()
        # onnxruntime falls back to the CPU, with only a log line, when a provider does not start (the
        # CUDA libraries do not load, say): what runs is what get_providers() says, not what was asked.
        first = _name(wanted[0])
        if self.providers[0] != first:
            if provider is not None or device != "auto":
                raise LmkitError(f"onnxruntime could not start {first} for {path} and fell back to "
                                 f"{self.providers[0]}" + ("; check the CUDA and cuDNN libraries it needs"
                                                           if first == CUDA else ""))
            log.warning("onnxruntime could not start %s; running %s on %s", first, path, self.providers[0])

    @staticmethod
    def _tokenizer(directory: str, manifest: dict):
        if not manifest.get("tokenizer"):
            return None
        from lmkit.tokenizers import TOKENIZER_CONFIG, load_tokenizer

        path = safe_path(directory, manifest["tokenizer"], "the tokenizer file")
        # The tokenizer reads the special-token roles from the config beside it: hashed, or refused.
        config = posixpath.join(posixpath.dirname(manifest["tokenizer"]), TOKENIZER_CONFIG)
        if os.path.exists(os.path.join(os.path.dirname(path), TOKENIZER_CONFIG)) and config not in manifest["files"]:
            raise ArtifactError(f"{directory}: {config} is not listed with a hash in the manifest; refusing to load it")
        return load_tokenizer(path)

    def __repr__(self) -> str:
        return f"ExportedModel({self.directory!r}, dtype={self.manifest['dtype']}, providers={self.providers})"

    @property
    def max_length(self) -> int | None:
        return self.manifest.get("dimensions", {}).get("max_length")

    @property
    def generation(self) -> dict:
        """The decoding strategy and options the model was composed with: {"strategy", "options"}."""
        return self.manifest["generation"]

    def backend(self, io_binding: bool | None = None) -> OrtBackend:
        """A fresh backend over this session, for lmkit.decoding's strategies (io_binding: see OrtBackend)."""
        if self.architecture != DECODER_ONLY:
            raise LmkitError(f"{self.directory} is an {self.architecture} export: it embeds (encode(), embed()) "
                             "but does not generate")
        return OrtBackend(self.session, self.graph, self.max_length, io_binding)

    def generate(self, prompts: Sequence[str], strategy: str | None = None, **options) -> list[str]:
        """The text each prompt continues with, by the manifest's strategy unless told another.

        options override the strategy's, e.g. max_new_tokens=20 or num_beams=4.
        """
        from lmkit.options import build_options
        from lmkit.registry import get_host

        if self.tokenizer is None:
            raise ArtifactError(f"{self.directory} has no tokenizer; encode the prompts yourself and use backend()")
        settings = self.generation
        if strategy is None or strategy == settings["strategy"]:
            strategy, values = settings["strategy"], {**settings["options"], **options}
        else:
            values = options
        component = get_host().component("decoding", strategy)
        search = component.load()(build_options(component.options_class(), values, f"decoding {strategy}"))
        tokens = [self.tokenizer.encode(prompt) for prompt in prompts]
        special = self.manifest["special_tokens"]
        generations = search.generate(self.backend(), tokens, eos_id=special.get("eos"), pad_id=special.get("pad"))
        return [self.tokenizer.decode(generation.tokens) for generation in generations]


    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray,
               token_type_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """An encoder export's outputs by name (last_hidden_state, pooler_output, logits, ...) for a batch."""
        if self.architecture != ENCODER:
            raise LmkitError(f"{self.directory} is a {self.architecture} export; encode() runs {ENCODER} exports")
        feeds = {"input_ids": np.asarray(input_ids, dtype=np.int64),
                 "attention_mask": np.asarray(attention_mask, dtype=np.int64),
                 "token_type_ids": (np.zeros_like(input_ids, dtype=np.int64) if token_type_ids is None
                                    else np.asarray(token_type_ids, dtype=np.int64))}
        names = [t["name"] for t in self.graph["outputs"]]
        wanted = {t["name"] for t in self.graph["inputs"]}
        return dict(zip(names, self.session.run(names, {k: v for k, v in feeds.items() if k in wanted})))

    def embed(self, texts: Sequence[str], *, pooling: str = "mean", batch_size: int = 32,
              max_length: int | None = None):
        """As lmkit.embedding.embed_texts, without torch: (pooled (N, D) or None, token states per text, ids)."""
        if self.tokenizer is None:
            raise ArtifactError(f"{self.directory} has no tokenizer; encode the texts yourself and use encode()")
        ids = [self.tokenizer.encode(text, add_special_tokens=True) for text in texts]
        if max_length is not None:
            sep = self.tokenizer.sep_id  # a cut text keeps its closing separator, as in embed_texts
            ids = [row if len(row) <= max_length else
                   row[:max_length - 1] + [sep] if sep is not None and row[-1] == sep else row[:max_length]
                   for row in ids]
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        pooled, token_states = [], []
        for start in range(0, len(ids), batch_size):
            rows = ids[start:start + batch_size]
            width = max(len(row) for row in rows)
            input_ids = np.full((len(rows), width), pad, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, row in enumerate(rows):
                input_ids[i, :len(row)] = row
                mask[i, :len(row)] = 1
            outputs = self.encode(input_ids, mask)
            states = outputs["last_hidden_state"]
            vectors = pool(states, mask, pooling, outputs.get("pooler_output"))
            if vectors is not None:
                pooled.append(vectors)
            token_states.extend(states[i, :len(row)] for i, row in enumerate(rows))
        return (np.concatenate(pooled) if pooled else None), token_states, ids


def pool(states: np.ndarray, mask: np.ndarray, how: str, pooled: np.ndarray | None = None) -> np.ndarray | None:
    """lmkit.embedding.pool in numpy: mean over real tokens, the pooled output (cls), the last real token."""
    if how == "none":
        return None
    if how == "mean":
        weights = mask.astype(states.dtype)[:, :, None]
        return (states * weights).sum(1) / np.maximum(weights.sum(1), 1)
    if how == "cls":
        return pooled if pooled is not None else states[:, 0]
    if how == "last":
        return states[np.arange(len(states)), mask.sum(1) - 1]
    raise LmkitError(f"unknown pooling {how!r}; allowed: mean, cls, last, none")


def load(directory: str, device: str = "auto", provider: str | None = None, session_options=None) -> ExportedModel:
    """Open an export directory written by `lmkit export`; see ExportedModel for the arguments."""
    return ExportedModel(directory, device, provider, session_options)


class OrtBackend:
    """The Backend of lmkit.decoding over a decoder-only export, its cache kept where the session runs.

    Each step feeds the graph's cache outputs back as its cache inputs (the keys/values grow by the
    new positions; a recurrent state would be replaced), and reordering rows for beam search is a
    take along each cache tensor's batch axis.

    io_binding: on CUDA (the default there), the cache goes from step to step through onnxruntime's
    IO binding as its own values on the GPU, and only the logits come to the host. On the CPU
    (default: off) session.run already hands its outputs over as numpy arrays without a copy and takes
    them back the same way, and measured no slower than IO binding, so the simpler path is used.
    """

    def __init__(self, session, graph: dict, max_length: int | None, io_binding: bool | None = None):
        self.session = session
        self.max_length = max_length
        self.inputs = {tensor["name"]: tensor for tensor in graph["inputs"]}
        self.cache = [(pair["input"], pair["output"]) for pair in graph["cache"]]
        self.output_names = ["logits", *(output for _, output in self.cache)]
        provider = session.get_providers()[0]
        self.device = BINDING_DEVICES.get(provider, "cpu")
        self.device_id = int(session.get_provider_options().get(provider, {}).get("device_id", 0) or 0)
        if io_binding is None:
            io_binding = self.device != "cpu"
        self.binding = session.io_binding() if io_binding else None
        self.past: dict = {}  # cache input name -> numpy array, or OrtValue on self.device with IO binding
        self.attention_mask = np.zeros((0, 0), dtype=np.int64)  # (B, positions so far), 0 at padding
        # The tokens fed so far (B, positions so far), to run the rows again without the padding they
        # share once the graph's max_length is reached (see Backend.step).
        self.fed = np.zeros((0, 0), dtype=np.int64)
        self.positions = np.zeros(0, dtype=np.int64)  # (B,), the position of each row's next token

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        batch = input_ids.shape[0]
        mask = attention_mask.astype(np.int64)
        # As transformers does for left padding: every row's first real token is at position 0.
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        self.past = {name: self._cache_value(self._empty(name, batch)) for name, _ in self.cache}
        self.attention_mask = np.zeros((batch, 0), dtype=np.int64)
        self.fed = np.zeros((batch, 0), dtype=np.int64)
        return self._run(input_ids, mask, positions)

    def step(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is not None:
            self.past = {name: self._cache_value(np.take(self._host(value), rows, axis=self._batch_axis(name)))
                         for name, value in self.past.items()}
            self.attention_mask = self.attention_mask[rows]
            self.positions = self.positions[rows]
            self.fed = self.fed[rows]
        batch = tokens.shape[0]
        if self.max_length is not None and self.attention_mask.shape[1] == self.max_length:
            ids, mask = drop_padding_columns(np.concatenate([self.fed, tokens.reshape(batch, 1)], axis=1),
                                             np.concatenate([self.attention_mask, np.ones((batch, 1), np.int64)], axis=1))
            if mask.shape[1] <= self.max_length:
                return self.prefill(ids, mask.astype(np.bool_))
        return self._run(tokens.reshape(batch, 1), np.ones((batch, 1), dtype=np.int64), self.positions[:, None])

    def _run(self, input_ids: np.ndarray, new_mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        mask = np.concatenate([self.attention_mask, new_mask], axis=1)
        if self.max_length is not None and mask.shape[1] > self.max_length:
            raise LmkitError(f"the model reads at most {self.max_length} positions and this step would make "
                             f"{mask.shape[1]}; generate fewer tokens or shorten the prompt")
        feeds = {name: np.ascontiguousarray(value, dtype=self.inputs[name]["dtype"])
                 for name, value in (("input_ids", input_ids), ("attention_mask", mask), ("position_ids", positions))
                 if name in self.inputs}
        if self.binding is None:
            logits, *cache = self.session.run(self.output_names, {**feeds, **self.past})
        else:
            logits, *cache = self._run_bound(feeds)
            logits = logits.numpy()
        self.past = {name: value for (name, _), value in zip(self.cache, cache)}
        self.attention_mask = mask
        self.fed = np.concatenate([self.fed, input_ids], axis=1)
        self.positions = positions[:, -1] + 1
        # A copy: the strategies may change the logits in place, and they are onnxruntime's buffer.
        return np.array(logits[:, -1], dtype=np.float32)

    def _run_bound(self, feeds: dict) -> list:
        """One step through IO binding: the cache in and out as OrtValues on the device, the logits to the host."""
        binding = self.binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name, value in self.past.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for _, output in self.cache:
            binding.bind_output(output, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()

    def _cache_value(self, array: np.ndarray):
        """A cache tensor as this backend keeps it: numpy, or an OrtValue on the device with IO binding."""
        if self.binding is None:
            return array
        from onnxruntime import OrtValue

        return OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    @staticmethod
    def _host(value) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    def _batch_axis(self, name: str) -> int:
        return self.inputs[name]["shape"].index(BATCH)

    def _empty(self, name: str, batch: int) -> np.ndarray:
        """The cache input before the first token: no past positions (zeros of any other shape)."""
        tensor = self.inputs[name]
        shape = []
        for size in tensor["shape"]:
            if size not in (BATCH, PAST) and not isinstance(size, int):
                raise ArtifactError(f"cache input '{name}' has an axis '{size}' this runtime cannot size")
            shape.append(batch if size == BATCH else 0 if size == PAST else size)
        return np.zeros(shape, dtype=np.dtype(tensor["dtype"]))
