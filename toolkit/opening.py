"""One way to open a model: a model directory (PyTorch) or an export directory (onnxruntime), the same
object either way.

    model = lmkit.open_model("runs/m0")                    # or an export: lmkit.open_model("exp/m0")
    model.generate(["The cat"], max_new_tokens=20)         # decoder-only: continuations
    model.generate(["a source sentence"])                  # encoder-decoder: sequence-to-sequence
    pooled, token_states, ids = model.embed(["a text"])    # sentence vectors and token states
    model.features(input_ids, attention_mask)              # the feature stack's outputs, numpy

OpenedModel is written once over a runtime (lmkit.contract.ModelRuntime): lmkit.torch_runtime's
over a ComposedModel, or the export runtime the manifest's architecture names. Decoding
(lmkit.decoding), sequence-to-sequence generation (lmkit.seq2seq) and embedding (lmkit.embedding)
are numpy code over it, so the two backends give the same tokens and vectors.

This module imports neither torch nor onnxruntime: each is imported when a directory needs it.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .errors import ArtifactError, LmkitError

EXPORT_MANIFEST = "lmkit-onnx.json"  # an export directory's manifest (lmkit.exports.manifest.MANIFEST)
MODEL_CONFIG = "config.json"  # = lmkit.artifacts.CONFIG


def no_tokenizer(directory: str, purpose: str) -> ArtifactError:
    """The one-line error for a model or export directory that has no tokenizer to `purpose` with, saying what
    to do for its kind: a model directory is composed with one; an export is made again from such a model."""
    if os.path.isfile(os.path.join(directory, EXPORT_MANIFEST)):
        advice = "export it again from a model directory that has one (lmkit compose --set tokenizer=DIR gives one)"
    else:
        advice = "compose the model with --set tokenizer=DIR (a tokenizer from lmkit tokenizer train)"
    return ArtifactError(f"{directory} has no tokenizer to {purpose}; {advice}")


def is_export(directory: str) -> bool:
    """True for an export directory (lmkit export), False for a model directory; a one-line error otherwise."""
    if not os.path.isdir(directory):
        raise ArtifactError(f"{directory} is not a directory; give a model directory (lmkit compose, lmkit import-hf) "
                            "or an export directory (lmkit export)")
    if os.path.isfile(os.path.join(directory, EXPORT_MANIFEST)):
        return True
    if os.path.isfile(os.path.join(directory, MODEL_CONFIG)):
        return False
    hint = exports_inside_hint(directory)
    raise ArtifactError(f"{directory} is neither an export directory (no {EXPORT_MANIFEST}) nor a model directory "
                        f"(no {MODEL_CONFIG}){hint}; make one with lmkit export, or lmkit compose")


def exports_inside_hint(directory: str) -> str:
    """" (...; give DIR/NAME)" where a folder of `directory` is an export, else "": a Triton repository (the
    export's folder has a config.pbtxt) or an export written inside another folder."""
    inside = [name for name in sorted(os.listdir(directory))
              if os.path.isfile(os.path.join(directory, name, EXPORT_MANIFEST))]
    if not inside:
        return ""
    where = os.path.join(directory, inside[0])
    if os.path.isfile(os.path.join(where, "config.pbtxt")):
        return f" (it looks like a Triton repository: give {where})"
    return f" (it holds an export in {inside[0]}/: give {where})"


def model_kind_of(directory: str) -> str:
    """encoder, decoder or encoder-decoder, from the spec in the config or manifest (no torch, no session)."""
    from .contract import model_kind

    if is_export(directory):
        from .exports.manifest import read_manifest

        spec = (read_manifest(directory).get("source") or {}).get("spec") or {}  # a damaged manifest: one line
    else:
        from .artifacts import read_config

        spec = read_config(directory).get("spec", {})
    return model_kind(bool(spec.get("encoder")), bool(spec.get("decoder")))


def generation_settings(spec: dict) -> dict:
    """{"strategy", "options"}: a spec's decoding table, else greedy with its defaults (what an export records)."""
    decoding = dict(spec.get("decoding") or {})
    if decoding:
        return {"strategy": decoding.pop("strategy"), "options": decoding}
    from .decoding.options import GreedyOptions
    from .options import options_to_dict

    return {"strategy": "greedy", "options": options_to_dict(GreedyOptions())}


def build_decoding(settings: dict, strategy: str | None = None, **options):
    """The decoding strategy of `settings` ({"strategy", "options"}: generation_settings), unless `strategy` names
    another, `options` overriding."""
    from .options import build_options
    from .registry import get_host

    if strategy is None or strategy == settings["strategy"]:
        strategy, values = settings["strategy"], {**settings["options"], **options}
    else:
        values = options
    component = get_host().component("decoding", strategy)
    return component.load()(build_options(component.options_class(), values, f"decoding {strategy}"))


def open_model(path: str, device: str = "auto", provider: str | None = None, session_options=None) -> OpenedModel:
    """A model directory on PyTorch, or an export directory on onnxruntime, as one OpenedModel.

    device: auto (CUDA when the backend has it, else the CPU), cpu, cuda or cuda:N. provider and
    session_options: onnxruntime's, for an export directory only (see lmkit.exports.ExportedModel).
    """
    if is_export(path):
        from .exports.runtime import ExportedModel

        return ExportedModel(path, device, provider, session_options)
    if provider is not None or session_options is not None:
        raise LmkitError(f"{path} is a model directory, run with PyTorch: give a device, not an onnxruntime "
                         "provider or session options (those are for export directories)")
    from .errors import require_torch

    require_torch(f"opening the model directory {path}")
    from .torch_runtime import open_model_directory

    return open_model_directory(path, device)


class OpenedModel:
    """A model ready to run, whatever its backend: generation, features and embeddings over `runtime`.

    runtime: a lmkit.contract.ModelRuntime (kind, max_positions, backend(), features()).
    tokenizer: the source side's (or the only one); target_tokenizer: an encoder-decoder's target side,
        None when both sides share `tokenizer`.
    generation: {"strategy", "options"}, the decoding the model was composed with.
    decoder_start: the token an encoder-decoder's target side starts from (its decoder's
        decoder_start_token_id: <s> for LSTM NMT, pad for T5); None for other models.
    model: a model directory's ComposedModel, for what only PyTorch does (scoring text, fine-tuning);
        None for an export.
    token_inputs: the per-token inputs the feature stack reads beside input_ids (lmkit.token_inputs; an
        export's manifest keeps them under dimensions.token_inputs), None for most models.
    source_suffix: the token ids an encoder-decoder appends to every source (its encoder's source_suffix:
        T5's </s>); empty for other models.
    spec: the resolved spec the model was built from (config.json's, or the export manifest's source), {} when
        unknown; a generator may read how the model was trained from it (GLM: fine-tuned text to text).
    """

    def __init__(self, directory: str, runtime, *, tokenizer, target_tokenizer=None, generation: dict,
                 decoder_start: int | None = None, model=None, decoder_type: str | None = None,
                 token_inputs: dict | None = None, source_suffix: Sequence[int] = (), spec: dict | None = None):
        self.directory = directory
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.target_tokenizer = target_tokenizer
        self.generation = generation
        self.decoder_start = decoder_start
        self.model = model
        self.decoder_type = decoder_type  # the spec's decoder type, which may have a generator of its own
        self.token_inputs = token_inputs
        self.source_suffix = [int(token) for token in source_suffix]
        self.spec = dict(spec or {})
        self._generator = None

    @property
    def generator(self):
        """The lmkit.contract.Generator registered for this model's decoder (GLM fills blanks), or None: the
        decoder continues prompts."""
        if self._generator is None and self.kind == "decoder" and self.decoder_type is not None:
            from .registry import get_host

            component = get_host().components["generator"].get(self.decoder_type)
            if component is not None:
                self._generator = component.load()(self)
        return self._generator

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.directory!r}, kind={self.kind})"

    @property
    def kind(self) -> str:
        """encoder, decoder or encoder-decoder (lmkit.contract.ModelKind)."""
        return self.runtime.kind

    @property
    def max_positions(self) -> int | None:
        """The most tokens the model reads at once (of a source, for an encoder-decoder); None: no limit."""
        return self.runtime.max_positions

    @property
    def output_tokenizer(self):
        """The tokenizer of what generate() produces: an encoder-decoder's target side, else the only one."""
        return self.target_tokenizer or self.tokenizer

    # -- generation -------------------------------------------------------------------------------

    def encode_sources(self, texts: Sequence[str], truncate: bool | None = None) -> list[list[int]]:
        """An encoder-decoder's source ids of `texts`, as it was trained on them (source_suffix appended); an
        empty or too long source is a one-line DataError, or with truncate, a long one keeps its first tokens
        (lmkit.seq2seq.encode_sources). A decoder whose family
        writes a target after its source (a generator's source_prompt: GLM's source then [gMASK]) gets those
        prompts, which generate_ids() answers with the targets as `tokens`."""
        from .seq2seq import encode_sources

        if self.kind == "decoder" and self.generator is not None:
            sources = encode_sources(self._needs_tokenizer("encode sources"), list(texts), self.max_positions)
            return [self.generator.source_prompt(ids) for ids in sources]
        return encode_sources(self._needs_tokenizer("encode sources"), list(texts), self.max_positions,
                              self.source_suffix, truncate)

    def backend(self, max_new_tokens: int | None = None, **options):
        """A fresh lmkit.decoding Backend (an encoder-decoder's takes set_sources); LmkitError for an encoder."""
        return self.runtime.backend(max_new_tokens, **options)

    def decoding(self, strategy: str | None = None, **options):
        """The decoding strategy to generate with: the model's settings unless told another, options overriding."""
        return build_decoding(self.generation, strategy, **options)

    def generate_ids(self, inputs: Sequence[Sequence[int]], decoding=None, *, stop: list[list[int]] | None = None,
                     on_token: Callable[[int, int], None] | None = None, batch_size: int = 64,
                     prefix=None) -> list:
        """One lmkit.decoding Generation per input: a prompt's continuation, or a source's target sequence.

        decoding: a strategy (decoding()), by default the model's. stop: token sequences (of the output tokenizer)
            that end a continuation or target where it produces one, left out of it, or StopTexts (stop_texts()),
            matched on the text. on_token: decoder-only models.
        prefix: a lmkit.prefix.CachePrefix (lmkit.prefix.load_prefix) every prompt's key/value cache starts from
            (an encoder-decoder's decoder self-attention cache; a Generator's, GLM's, places it itself); None: none.
        """
        decoding = decoding or self.decoding()
        tokenizer = self._needs_tokenizer("generate")
        if self.kind == "encoder-decoder":
            from .seq2seq import Seq2SeqGenerator

            room = decoding.options.max_new_tokens  # an export's cache buffers are sized for it
            backend = self.backend(room) if prefix is None else self._prefixed_backend(room, prefix)
            generator = Seq2SeqGenerator.for_tokenizer(backend, self.decoder_start, self.output_tokenizer)
            return generator.generate(decoding, [list(source) for source in inputs], batch_size, stop=stop)
        if self.generator is not None:  # the family's own way with prompts (GLM: fill the blanks)
            options = {} if prefix is None else {"prefix": prefix}  # a Generator places the prefix's positions
            if on_token is not None or len(inputs) <= batch_size:
                return self.generator.generate_ids([list(ids) for ids in inputs], decoding, stop=stop,
                                                   on_token=on_token, **options)
            return [result for first in range(0, len(inputs), batch_size)
                    for result in self.generator.generate_ids([list(ids) for ids in inputs[first:first + batch_size]],
                                                              decoding, stop=stop, **options)]
        # An empty prompt starts from the bos token, as GPT-2 was trained to (each document followed one).
        prompts = [list(ids) or ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) for ids in inputs]
        pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        backend = (self.backend(decoding.options.max_new_tokens) if prefix is None
                   else self._prefixed_backend(decoding.options.max_new_tokens, prefix))
        return decoding.generate(backend, prompts, eos_id=tokenizer.eos_id, pad_id=pad_id, stop=stop,
                                 on_token=on_token)

    def _prefixed_backend(self, max_new_tokens: int | None, prefix):
        """A backend whose cache starts from `prefix`: a runtime takes it as an option of its backend
        (lmkit.contract.ModelRuntime.backend); a plugin's runtime that takes none is a one-line LmkitError."""
        try:
            return self.backend(max_new_tokens, prefix=prefix)
        except TypeError:
            raise LmkitError(f"{self.directory}'s runtime ({type(self.runtime).__name__}) takes no prefix; "
                             "prefixes steer attention decoders with a key/value cache") from None

    def generate(self, texts: Sequence[str], strategy: str | None = None, *, prefix=None, **options) -> list[str]:
        """The text each input generates, by the model's strategy unless told another (options override it).

        A decoder-only model continues each prompt; an encoder-decoder turns each source into its
        target (translation, summarisation).
        """
        tokenizer = self._needs_tokenizer("generate")
        decoding = self.decoding(strategy, **options)
        if self.kind == "encoder-decoder":
            results = self.generate_ids(self.encode_sources(texts), decoding, prefix=prefix)
            from .seq2seq import target_text

            return [target_text(self.output_tokenizer, r.tokens) for r in results]
        results = self.generate_ids(tokenizer.encode_batch(list(texts)), decoding, prefix=prefix)
        return [tokenizer.decode(result.tokens if result.output is None else result.output) for result in results]

    # -- features ---------------------------------------------------------------------------------

    def features(self, input_ids, attention_mask=None, token_type_ids=None, **options) -> dict:
        """The feature stack's outputs by name, numpy: last_hidden_state (B, T, D), pooler_output (B, D) or
        None, and an export's other outputs; input_ids (B, T) right-padded, attention_mask (B, T) 1 at tokens.

        options: the stack's features() options (CoVe: word_vectors), for a model directory.
        """
        import numpy as np

        input_ids = np.asarray(input_ids, dtype=np.int64)
        attention_mask = (np.ones_like(input_ids, dtype=np.bool_) if attention_mask is None
                          else np.asarray(attention_mask).astype(np.bool_))
        return self.runtime.features(input_ids, attention_mask, token_type_ids, **options)

    encode = features  # what an export's encode() has always been called

    def embed(self, texts: Sequence[str], *, pooling: str = "mean", batch_size: int = 32,
              max_length: int | None = None, progress: bool = False, **options):
        """(pooled (N, D) or None, token states per text: a list of (T_i, D) arrays, token ids per text);
        see lmkit.embedding.embed_texts."""
        from .embedding import embed_texts

        return embed_texts(self.features, self._needs_tokenizer("embed"), texts, pooling=pooling,
                           batch_size=batch_size, max_length=max_length, progress=progress, options=options,
                           token_inputs=self.token_inputs)

    def _needs_tokenizer(self, what: str):
        if self.tokenizer is None:
            raise ArtifactError(f"{self.directory} has no tokenizer to {what} with; give token ids to generate_ids() "
                                "or features()")
        return self.tokenizer
