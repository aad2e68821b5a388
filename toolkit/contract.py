"""The family contract: what each kind of registered part must be, on one page.

`hookspecs.py` says where a part is registered; this page says what the registered thing is. The
core calls parts only through these protocols: it never probes a part for optional methods, and
it never branches on a family. A new family (T5, GLM, ELMo, ...) is a plugin folder that registers
parts meeting these protocols, plus shared blocks in `lmkit.nn`; `tests/test_conformance.py` holds
every registered component to them through its tiny preset.

Kinds of model, from which parts a spec names (`ModelKind`):

    encoder          an encoder only (BERT, CoVe, ELMo): features, task heads
    decoder          a decoder only (GPT, LSTM LMs): generation, features, task heads
    encoder-decoder  both (Seq2Seq, NMT, T5): sequence-to-sequence generation; the encoder's
                     features for task heads and embeddings

Tensors are torch tensors; shapes use B (batch), T (positions), D (d_model), V (vocabulary).
This module imports neither torch nor numpy: specs are checked, and plugins listed, without them.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from .training.arguments import TrainingArguments

ModelKind = Literal["encoder", "decoder", "encoder-decoder"]


def model_kind(has_encoder: bool, has_decoder: bool) -> ModelKind:
    """The kind of a composition from the stacks it has (a spec, a model, or an export's source spec)."""
    if has_encoder and has_decoder:
        return "encoder-decoder"
    if has_encoder:
        return "encoder"
    if has_decoder:
        return "decoder"
    raise ValueError("the composition has neither an encoder nor a decoder")


# -- stacks ----------------------------------------------------------------------------------------


@dataclass
class EncoderOutput:
    """What every encoder returns, whatever its family (Hugging Face's BaseModelOutput names).

    last_hidden_state: (B, T, D) the top layer's states, in word order.
    attention_mask:    (B, T) bool, True at real tokens.
    pooler_output:     (B, D) one vector per sequence, as the family defines it (BERT's tanh
                       pooler over [CLS], RoBERTa's <s> state, a BiLSTM's two final states), or
                       None where the family has none: heads then read the first position.
    hidden_states:     every layer's states, embeddings first, each (B, T, D_l), for stacks whose
                       users mix layers (ELMo's scalar mix); None where the stack does not keep them.
    final_state:       recurrent encoders' last (h, c), each (layers, B, H), which a recurrent
                       decoder may start from; None for other stacks.
    """

    last_hidden_state: Tensor
    attention_mask: Tensor
    pooler_output: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    final_state: tuple[Tensor, Tensor] | None = None


@runtime_checkable
class Stack(Protocol):
    """What the core needs of every encoder and decoder module, before its kind-specific methods."""

    d_model: int  # the width of the states forward() gives, which task heads read (features() may add more)
    max_positions: int | None  # the longest input it reads, None when it has no limit (recurrent stacks)
    task_recipe: ClassVar[str]  # the task recipe `lmkit finetune` uses on it ("encoder", "decoder", ...)
    embed_options: ClassVar[tuple[str, ...]]  # keyword options its features() takes (CoVe: word_vectors)
    # Special tokens its data and generation read from the tokenizer (GLM: [MASK] [sMASK] [gMASK] [S] [E]);
    # composing adds those the tokenizer lacks, before the vocabulary is sized. Empty for most stacks.
    special_tokens: ClassVar[tuple[str, ...]]
    # Roles (bos, eos, mask, ...) it gives some of them when the tokenizer has no token in that role (GLM: eos [E]).
    special_token_roles: ClassVar[dict[str, str]]
    # The task recipe `lmkit finetune --pattern --verbalizer` uses (lmkit.tasks.cloze: GLM's glm-cloze); None for
    # stacks that cannot score a word in a blank.
    cloze_recipe: ClassVar[str | None]
    # The objective `lmkit finetune --task text-to-text` trains a decoder-only stack with (lmkit.tasks.text_to_text:
    # GLM's glm-text-to-text, a target written after its source); None for stacks that do not.
    text_to_text_objective: ClassVar[str | None]

    def features(self, input_ids: Tensor, attention_mask: Tensor | None = None, **options) -> EncoderOutput:
        """What `lmkit embed` returns for input_ids (B, T): token features and a pooled vector."""

    def parameters_without_sharing(self) -> int:
        """The parameter count without cross-layer sharing (ALBERT); the plain count for other stacks."""

    def bind_tokenizer(self, tokenizer) -> None:
        """At compose: keep what the stack derives from its tokenizer's vocabulary (ELMo spells each word into
        character ids, saved with its weights); a no-op for most stacks (lmkit.nn.stack).

        A stack that reads per-token inputs beside input_ids (ELMo: every word's characters, unknown words
        included) also defines token_inputs(tokenizer) (lmkit.nn.stack's default: None; lmkit.token_inputs)."""


@runtime_checkable
class Encoder(Stack, Protocol):
    """A bidirectional stack: BERT's transformer, CoVe's BiLSTM, ELMo's biLM.

    An encoder-decoder's encoder may declare `source_suffix`, a tuple of special-token roles (bos, eos,
    pad, unk) appended to every source wherever sources are encoded: training pairs, text-to-text
    fine-tuning and eval, generation, and the export's runtime (the manifest records the ids). T5's is
    ("eos",): transformers' T5 tokenizer ends every input with </s>. Absent or empty (lmkit.nn.stack's
    default, the LSTM NMT families): sources are the tokenizer's ids alone.
    """

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> EncoderOutput:
        """input_ids (B, T), attention_mask (B, T) (1 at real tokens, right padding), token_type_ids
        (B, T) segment ids, which a stack without segments ignores. Too long: ValueError naming the limit."""


@runtime_checkable
class CausalDecoder(Stack, Protocol):
    """A decoder-only language model with a key/value (or recurrent) cache: GPT, LSTM LMs.

    The cache (a `Cache`) is the decoder's own object; the core creates it, passes it back and
    reorders it. With
    left-padded prompts the caller gives attention_mask and position_ids (transformers' convention).
    position_ids are (B, T), or (B, K, T) for a stack whose tokens carry K positions (GLM's pos1 and
    pos2); the decoding backends feed either as the model's generator supplies them
    (lmkit.decoding.common.Positions).

    A stateful decoder (a recurrent LM: AWD-LSTM) has a lmkit.nn.recurrent.RecurrentCache, and
    causal-LM training then carries that state, detached, from each BPTT window to the next: every
    row of a batch continues the row of the step before (lmkit.training.batches.TokenStreams), and
    the state is saved with each checkpoint so that resume stays exact. Evaluation and generation
    start from a fresh cache.
    """

    stateful: bool  # see above; False for attention stacks, whose windows are independent

    def new_cache(self, batch_size: int, max_len: int | None = None) -> Cache:
        """An empty cache for batch_size rows and up to max_len positions (default: max_positions)."""

    def hidden_states(self, input_ids: Tensor, cache: Cache | None = None, attention_mask: Tensor | None = None,
                      position_ids: Tensor | None = None) -> Tensor:
        """The final hidden states (B, T, D) of input_ids (B, T) after the cache's positions."""

    def logits(self, hidden_states: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, V): the language-model head on hidden states."""

    def forward(self, input_ids: Tensor, cache: Cache | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> Tensor:
        """logits(hidden_states(...)): (B, T, V)."""


@runtime_checkable
class Cache(Protocol):
    """A causal decoder's cache (lmkit.nn.KVCache, BandedKVCache, a recurrent state).

    The key/value caches (KVCache, BandedKVCache) also take a prefix (lmkit.prefix): `geometry` (n_layers,
    n_heads, head_dim), `start_from(keys, values)` with (n_layers, B or 1, n_heads, P, head_dim), and
    `prefix_length`, the P positions it filled (0 without one), which a decoder whose positions depend on
    it reads (GLM's left-to-right view writes its span after the prefix, as after a context).
    """

    length: int  # positions it holds

    def reorder(self, rows: Tensor) -> None:
        """Keep rows `rows` (B',) in that order, in place: beams kept by beam search, finished rows dropped."""

    def merge(self, other: Cache, max_len: int) -> Cache:
        """A new cache of this cache's B rows followed by `other`'s B' rows, for max_len positions: rows that
        join a running batch (lmkit.decoding.backend.Backend.merge), neither side recomputed.

        Every row's positions end at the longer cache's length, which the merged cache has: the shorter
        side is shifted right, with zeros before its first position, which the caller masks as padding
        (left padding, as a prefill of prompts of unequal length). A cache without positions (a
        recurrent state) joins its rows alone. Raises ValueError when the two do not fit together.
        """


@runtime_checkable
class Seq2SeqDecoder(Stack, Protocol):
    """The decoder of an encoder-decoder model: it reads the encoder's output through its state.

    The state is a dictionary of tensors, each with the batch on a known axis, so that beam search
    reorders it by rows and an export feeds it from step to step.

    Optional: `join(state, other) -> state`, `state`'s rows followed by `other`'s, which `lmkit serve` uses to
    take new sources into a running batch (without it they wait for the batch to end).
    lmkit.nn.stack.Seq2SeqDecoderStack.join does it for any state from STATE_ROWS and SOURCE_AXES; a decoder
    with a self-attention cache joins only if it reads state["target_mask"] (B, P) bool, where present: False
    at the left padding of rows that joined with fewer target positions, which no query may see. It says so
    by listing "target_mask" in its STATE_ROWS (T5 does).
    """

    # The names of the state's self-attention keys and values, each (L, B, nh, P, hs) after P target positions,
    # that a cache prefix (lmkit.prefix) fills before the start token; None (lmkit.nn.stack's default): no
    # such cache, no prefix (the LSTM decoders). T5: ("self_k", "self_v").
    self_attention_cache: ClassVar[tuple[str, str] | None]
    # The names of the state's entries made from the source alone (the encoder's keys and values, its
    # mask), alike in every row of one source: a reorder that keeps each row among its own source's rows
    # (a beam search step) leaves them as they are, so the backend passes `reorder` the rest only.
    # () (lmkit.nn.stack's default): every entry is reordered. T5: ("cross_k", "cross_v", "encoder_mask").
    source_state: ClassVar[tuple[str, ...]]

    def check_encoder(self, encoder: Encoder) -> None:
        """Raise SpecError, naming the option to set, when the encoder's states do not fit this decoder."""

    def tie_to_encoder(self, encoder: Encoder) -> None:
        """Take the parameters it shares with the encoder, after check_encoder (T5 reads its tokens through
        the encoder's embedding); most decoders share nothing and do nothing."""

    def decoder_start_token_id(self, tokenizer) -> int:
        """The token the target side starts from: <s> (LSTM NMT), or pad (T5)."""

    def start(self, encoded: EncoderOutput) -> dict[str, Tensor]:
        """The state before the first target token."""

    def forward(self, input_ids: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Target tokens (B, T) after the state -> logits (B, T, V) and the state after them."""

    def reorder(self, state: dict[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
        """The state of rows `rows` (B',), in that order; `state` may lack the source_state entries. The caller
        drops `state`, so its tensors may be reordered in place (as Cache.reorder is)."""


# -- training --------------------------------------------------------------------------------------


@runtime_checkable
class Objective(Protocol):
    """A training loss: an nn.Module built from its options (or sized to the model by for_model)."""

    @classmethod
    def batches(cls, context) -> Any:
        """The data it trains on, a lmkit.training.batches.Batches over the run's files (context)."""

    @classmethod
    def with_unlabeled(cls, batches, context) -> Any:
        """With `lmkit train --unlabeled`: the Batches that mix the unlabelled sentences of context.args.unlabeled
        into `batches` (the labelled data), or None when this objective does not learn from unlabelled text.
        An unlabelled batch carries an `unlabeled` entry; only objectives with reads_unlabeled train on it."""

    @classmethod
    def for_model(cls, options, model) -> nn.Module:
        """The objective built for `model`, whose stacks exist already (BERT's MLM head tied to them)."""

    @classmethod
    def check_composition(cls, options, spec, tokenizer) -> None:
        """At compose, before anything is built or written: SpecError (one line) when this objective could not
        train the composition: a token it needs that the tokenizer (None: composed without one) lacks, an
        option beyond the model's vocabulary. spec is the resolved lmkit.spec.ModelSpec."""

    # True when forward() is the mean cross-entropy of the tokens predicted (exp of it is a perplexity);
    # lmkit.objectives.base.ObjectiveModule says False.
    models_language: bool

    def forward(self, model, batch: dict[str, Tensor]) -> Tensor:
        """The scalar loss of one batch."""

    def carried_state(self) -> dict[str, Tensor]:
        """Tensors carried from step to step outside the weights (a stateful LM's state), saved with checkpoints."""

    def load_carried_state(self, tensors: dict[str, Tensor]) -> None:
        """Restore carried_state() on resume."""


@runtime_checkable
class Optimizer(Protocol):
    """Built from its options dataclass; `lmkit train --optimizer NAME --optimizer-set k=v`."""

    def build(self, model: nn.Module, args: TrainingArguments, device) -> Any:
        """A torch.optim.Optimizer over the model's trainable parameters, at args.lr.

        Each step the trainer sets every param group's rate to the schedule's rate times the group's
        `lr_scale` (default 1: ULMFiT's discriminative rates give lower layers less), and drops the
        gradients of a group whose `train_from_step` (default 0) is after the step, so the optimizer
        leaves it as it is (gradual unfreezing). Both depend on the step alone, so resume stays exact.
        """


@runtime_checkable
class Schedule(Protocol):
    """A learning-rate schedule, built from its options; `lmkit train --schedule NAME --schedule-set k=v`."""

    def rate(self, step: int, args: TrainingArguments) -> float:
        """The rate of optimizer step `step` (0-based). It depends on the step alone, so resume is exact."""


@runtime_checkable
class TrainingRecipe(Protocol):
    """Named training settings: `lmkit train --recipe NAME` starts from them, flags given win."""

    def arguments(self) -> dict[str, Any]:
        """lmkit.training.arguments.TrainingArguments fields (optimizer, schedule, their options, lr, ...)."""


@runtime_checkable
class TaskRecipe(Protocol):
    """How a kind of stack is fine-tuned on labelled examples (`lmkit finetune`).

    A recipe turns an example's text segments into the token sequences the stack reads, and the
    stack's states into one feature vector per sequence.
    """

    name: str
    # Optional: the --task kinds it fine-tunes (ELMo's BiLSTM taggers: token-classification); absent or None:
    # every kind, and lmkit finetune refuses the others in one line.
    # task_kinds: tuple[str, ...] | None
    # Optional: the stack types it reads (CVT's recipe: cvt-tagger); absent or None: any stack, and lmkit finetune
    # refuses the others in one line before anything is built.
    # stacks: tuple[str, ...] | None
    default_lr: float  # the peak learning rate its papers fine-tune with
    reference_width: int  # the d_model default_lr was chosen at; narrower stacks get it scaled up
    default_warmup_ratio: float  # the share of the steps its papers warm up over

    def prepare(self, tokenizer) -> bool:
        """Make the tokenizer ready (GPT adds its markers); True when its vocabulary grew."""

    def auxiliary_objectives(self, aux_lm_weight: float | None) -> list[dict]:
        """Objectives trained beside the task head (GPT's λ-weighted LM loss), as spec tables."""

    def encode(self, tokenizer, segments: tuple[str, ...], max_length: int) -> tuple[list[int], list[int], int, int]:
        """(token ids, segment ids, the position features are read at, tokens cut) of one sequence."""

    def states(self, model, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        """The stack's states (N, T, D) of N right-padded sequences."""

    def features(self, model, states: Tensor, extract_index: Tensor) -> Tensor:
        """(N, T, D) -> (N, D): one vector per sequence."""

    def pooler(self, d_model: int) -> tuple[nn.Module, int] | None:
        """Layers a sequence head runs on the features before its linear layer, and their output width;
        None for none (ULMFiT: batch norm, dropout, linear, ReLU over [last; max; mean])."""

    def training_arguments(self, steps: int, per_epoch: int) -> dict[str, Any]:
        """Training arguments in place of lmkit finetune's defaults (ULMFiT: its optimizer and schedule)."""


# -- import and export -----------------------------------------------------------------------------


@runtime_checkable
class Importer(Protocol):
    """A converter of one Hugging Face model_type, registered under that model_type.

    Called with the checkpoint's config.json (a dict) and its tensors (name -> torch tensor); returns
    an lmkit spec table (encoder/decoder/objectives in lmkit's option names) and the state dict of
    the whole composed model. Raises ValueError, in one line, for a config it cannot convert.

    It may carry a `spiece` table for checkpoints that ship only a SentencePiece spiece.model:
    {"extra_ids": sentinels appended after the pieces, "template": a tokenizer template preset}
    (T5: 100 and t5); lmkit.commands.import_hf converts the file with it.
    """

    def __call__(self, hf_config: dict, tensors: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]: ...


@runtime_checkable
class HFExporter(Protocol):
    """The converse of an Importer: a composed model as a transformers checkpoint (`lmkit export-hf`).

    Registered (register_hf_exporters) under the stack it converts, as exporters are ("decoder.gpt2",
    "encoder.bert"; a model with a decoder by its decoder's). Called with the composed model (eval
    mode) and its tokenizer; returns config.json as transformers reads it (model_type, architectures
    and the sizes in transformers' names) and the tensors of that architecture's state dict, tied
    copies left out (transformers ties them again on load). Raises ValueError, in one line, for a
    model transformers' class cannot represent.
    """

    def __call__(self, model, tokenizer) -> tuple[dict, dict[str, Tensor]]: ...


@runtime_checkable
class ModelRuntime(Protocol):
    """What lmkit.opening.OpenedModel runs a model through, on either backend: lmkit.torch_runtime's over a
    model directory, an ExportRuntime over an export directory. Arrays cross it as numpy, on the host."""

    kind: ModelKind  # what the model does: generates (decoder, encoder-decoder), embeds (encoder, ...)
    max_positions: int | None  # the most tokens it reads at once (an encoder-decoder: of a source); None: no limit

    def backend(self, max_new_tokens: int | None = None) -> Any:
        """A fresh lmkit.decoding Backend (an encoder-decoder's with set_sources), or LmkitError if it cannot generate.

        A runtime whose cache is keys/values also takes prefix=lmkit.prefix.CachePrefix: the cache every row
        starts from, the prompt's positions after it (lmkit.prefix; lmkit generate --prefix); an encoder-decoder's
        decoder self-attention cache, before the start token.
        """

    def features(self, input_ids, attention_mask, token_type_ids=None) -> dict[str, Any]:
        """input_ids int64 (B, T), attention_mask bool (B, T) -> last_hidden_state (B, T, D), pooler_output (B, D)|None."""


@runtime_checkable
class ExportRuntime(ModelRuntime, Protocol):
    """Runs one architecture of export with onnxruntime and numpy, without torch.

    Registered (register_export_runtimes) under the architecture the manifest names; opening an
    export (lmkit.exports.runtime) looks it up there, so a family that brings a new architecture
    brings its runtime, not an edit to exports/. Everything it reads of the graphs (names, shapes,
    batch axes, cache pairs, an encoder-decoder's wiring) comes from the manifest.
    """

    def __init__(self, export) -> None:
        """From a checked lmkit.exports.runtime.ExportDirectory: refuse, in one line, a manifest it cannot run."""


@runtime_checkable
class Generator(Protocol):
    """How a decoder family turns prompts into generations when it does not simply continue them (GLM fills the
    blanks of a prompt, span after span). Registered (register_generators) under the decoder type it serves;
    built with the lmkit.opening.OpenedModel it generates for, on either backend, and searching with the
    shared strategies over opened.backend(), so a model directory and its export give the same tokens.
    Decoders with none registered continue each prompt (OpenedModel.generate_ids).
    """

    def __init__(self, opened) -> None: ...

    def generate_ids(self, prompts: list[list[int]], decoding, *, stop: list[list[int]] | None = None,
                     on_token=None, prefix=None) -> list:
        """One lmkit.decoding Generation per prompt, its `output` the whole text's ids and its `spans` the parts
        generated; a prompt it cannot take is a one-line LmkitError. prefix: a lmkit.prefix.CachePrefix to hand to
        opened.backend(..., prefix=), the positions it gives counting the prefix's P first (GLM: pos1 from P).
        stop: token sequences or lmkit.decoding.common.StopTexts, for the strategy's generate() as they are."""

    def source_prompt(self, source: list[int]) -> list[int]:
        """The prompt that asks for the target of a source's ids, as text-to-text fine-tuning writes it (GLM: the
        source then [gMASK]); generate_ids() of it gives the target as its `tokens`."""

    def prefill_inputs(self, prompts: list[list[int]]) -> tuple[list[list[int]], Any]:
        """The rows, and their lmkit.decoding.common.Positions (None: 0, 1, 2, ...), of the first prefill that
        generate_ids() of prompts makes (GLM: Part A and the first blank's [S]). lmkit bench times that prefill
        and greedy steps after it; a generator without this method is not timed."""

    def score_documents(self, documents: list[list[int]], context: int, batch_size: int = 8,
                        stride: int | None = None) -> tuple[float, int]:
        """(NLL in nats, tokens predicted) of the documents written left to right the family's way, each
        document's end included, in windows of at most `context` positions, each scoring `stride` new tokens
        (None: the family's default) (`lmkit eval --data`; documents as lmkit.documents reads them); PyTorch
        only. A stride the family cannot honour is a one-line LmkitError."""


def iter_protocols() -> Iterator[tuple[str, type]]:
    """Every protocol of this page, by the component kind it governs (for docs and the conformance suite)."""
    yield from (("encoder", Encoder), ("decoder", CausalDecoder), ("decoder (encoder-decoder)", Seq2SeqDecoder),
                ("cache", Cache),
                ("objective", Objective), ("optimizer", Optimizer), ("schedule", Schedule),
                ("task-recipe", TaskRecipe), ("training-recipe", TrainingRecipe), ("importer", Importer),
                ("hf-exporter", HFExporter),
                ("export-runtime", ExportRuntime), ("generator", Generator))
