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
from collections.abc import Sequence

import numpy as np

from lmkit.errors import ArtifactError, LmkitError, MissingDependency

from .graphs import BATCH, DECODER_ONLY, PAST
from .manifest import check_external_data, read_manifest, safe_path, verify_files

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("running an export needs onnxruntime (or onnxruntime-gpu), which is not "
                                "installed; install it with: pip install 'lmkit[onnx]'") from None
    return onnxruntime


def providers_for(device: str) -> list[str]:
    """cuda when asked or (auto) when this onnxruntime build has it, with CPU for the ops CUDA lacks."""
    if device not in DEVICES:
        raise LmkitError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    available = _onnxruntime().get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise LmkitError("device 'cuda' was asked for, but this onnxruntime has no CUDAExecutionProvider; "
                         "install onnxruntime-gpu, or use device 'cpu'")
    if device == "cpu" or CUDA not in available:
        return [CPU]
    return [CUDA, CPU]


class ExportedModel:
    """An export directory, checked and opened: its manifest, tokenizer and onnxruntime session."""

    def __init__(self, directory: str, device: str = "auto"):
        self.directory = directory
        manifest = read_manifest(directory)
        if manifest.get("architecture") != DECODER_ONLY:
            raise ArtifactError(f"{directory} is a '{manifest.get('architecture')}' export; this lmkit runtime "
                                f"serves {DECODER_ONLY} exports")
        verify_files(directory, manifest)
        check_external_data(directory, manifest)
        self.manifest = manifest
        if set(manifest["graphs"]) != {"model"}:
            raise ArtifactError(f"{directory}: a {DECODER_ONLY} export has one graph, 'model'; this one has "
                                f"{', '.join(manifest['graphs'])}")
        self.graph = manifest["graphs"]["model"]
        inputs, outputs = ({t["name"] for t in self.graph[side]} for side in ("inputs", "outputs"))
        if "input_ids" not in inputs or "logits" not in outputs:
            raise ArtifactError(f"{directory}: a {DECODER_ONLY} graph takes input_ids and returns logits; "
                                "this one does not")
        self.tokenizer = self._tokenizer(directory, manifest)
        ort = _onnxruntime()
        wanted = providers_for(device)
        path = safe_path(directory, self.graph["file"], "graph file")
        self.session = ort.InferenceSession(path, providers=wanted)
        self.providers = self.session.get_providers()
        # onnxruntime falls back to CPU, with only a log line, when the CUDA libraries do not load.
        if wanted[0] == CUDA and self.providers[0] != CUDA:
            if device == "cuda":
                raise LmkitError(f"onnxruntime could not start CUDA for {path} and fell back to "
                                 f"{self.providers[0]}; check the CUDA and cuDNN libraries it needs")
            log.warning("onnxruntime could not start CUDA; running %s on the CPU", path)

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

    def backend(self) -> OrtBackend:
        """A fresh backend over this session, for lmkit.decoding's strategies."""
        return OrtBackend(self.session, self.graph, self.max_length)

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


def load(directory: str, device: str = "auto") -> ExportedModel:
    """Open an export directory written by `lmkit export` (device: auto, cuda or cpu)."""
    return ExportedModel(directory, device)


class OrtBackend:
    """The Backend of lmkit.decoding over a decoder-only export, its cache kept as numpy arrays.

    Each step feeds the graph's cache outputs back as its cache inputs (the keys/values grow by the
    new positions; a recurrent state would be replaced), and reordering rows for beam search is a
    take along each cache tensor's batch axis.
    """

    def __init__(self, session, graph: dict, max_length: int | None):
        self.session = session
        self.max_length = max_length
        self.inputs = {tensor["name"]: tensor for tensor in graph["inputs"]}
        self.cache = [(pair["input"], pair["output"]) for pair in graph["cache"]]
        self.output_names = ["logits", *(output for _, output in self.cache)]
        self.past: dict[str, np.ndarray] = {}
        self.attention_mask = np.zeros((0, 0), dtype=np.int64)  # (B, positions so far), 0 at padding
        self.positions = np.zeros(0, dtype=np.int64)  # (B,), the position of each row's next token

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        batch = input_ids.shape[0]
        mask = attention_mask.astype(np.int64)
        # As transformers does for left padding: every row's first real token is at position 0.
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        self.past = {name: self._empty(name, batch) for name, _ in self.cache}
        self.attention_mask = np.zeros((batch, 0), dtype=np.int64)
        return self._run(input_ids.astype(np.int64), mask, positions)

    def step(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is not None:
            self.past = {name: np.take(value, rows, axis=self._batch_axis(name)) for name, value in self.past.items()}
            self.attention_mask = self.attention_mask[rows]
            self.positions = self.positions[rows]
        batch = tokens.shape[0]
        return self._run(tokens.astype(np.int64).reshape(batch, 1), np.ones((batch, 1), dtype=np.int64),
                         self.positions[:, None])

    def _run(self, input_ids: np.ndarray, new_mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        mask = np.concatenate([self.attention_mask, new_mask], axis=1)
        if self.max_length is not None and mask.shape[1] > self.max_length:
            raise LmkitError(f"the model reads at most {self.max_length} positions and this step would make "
                             f"{mask.shape[1]}; generate fewer tokens or shorten the prompt")
        feeds = {"input_ids": input_ids, **self.past}
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = mask
        if "position_ids" in self.inputs:
            feeds["position_ids"] = positions
        logits, *cache = self.session.run(self.output_names, feeds)
        self.past = {name: value for (name, _), value in zip(self.cache, cache)}
        self.attention_mask = mask
        self.positions = positions[:, -1] + 1
        return np.ascontiguousarray(logits[:, -1], dtype=np.float32)

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
