"""Where the trainer's batches come from: each objective says what data it reads.

The trainer knows nothing of windows, sentence pairs or labelled examples. It asks the objectives
of the model for a `Batches` (lmkit.contract.Objective.batches; objectives that only add a loss to
the same data, like next-sentence prediction next to masked LM, return None) and reads training samples from it by index, which is what makes a resumed run
read exactly the samples the interrupted one would have.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import DataError
from .arguments import TrainingArguments, TrainingError

Batch = dict[str, np.ndarray]


class Batches(Protocol):
    """An endless seeded stream of training samples, addressed by index, and fixed validation batches."""

    def train(self, first: int, count: int) -> Batch:
        """Samples first, ..., first + count - 1 of the stream, as arrays with `count` rows."""

    def validation(self) -> list[Batch]:
        """The held-out batches every evaluation reads, the same each time (empty: no validation)."""

    def tokens(self, batch: Batch) -> int:
        """How many tokens of `batch` the loss is computed over, for tokens/s."""

    def describe(self) -> dict:
        """Sizes of the data, saved with each checkpoint (e.g. train_tokens, val_tokens)."""


@dataclass
class DataContext:
    """What an objective's `batches` gets to build its data from."""

    model: object  # the ComposedModel being trained
    tokenizer: object
    args: TrainingArguments
    objectives: list[str] = field(default_factory=list)  # the spec's objective types, in order
    progress: bool = True
    say: object = print  # say(message): a line on stderr, above the progress bar
    target_tokenizer: object = None  # an encoder-decoder model's target-side tokenizer; None: `tokenizer`

    def max_positions(self) -> int | None:
        stack = self.model.decoder if self.model.decoder is not None else self.model.encoder
        return stack.max_positions


def batches_for(context: DataContext) -> Batches:
    """The Batches of the model's objectives: all that define one must define the same."""
    from ..objectives.base import ObjectiveModule

    makers = {}  # the class that defines batches() -> the first objective that inherits it
    for name, objective in context.model.objectives.items():
        owner = next(cls for cls in type(objective).__mro__ if "batches" in vars(cls))
        if owner is not ObjectiveModule:  # the default: this objective reads another's batches
            makers.setdefault(owner, name)
    if len(makers) > 1:
        names = list(makers.values())
        raise TrainingError(f"objectives {names[0]} and {names[1]} read different kinds of data and cannot be "
                            "trained together; keep one of them")
    batches = next(iter(makers)).batches(context) if makers else None
    if batches is None and not context.objectives:  # a stack composed for fine-tuning alone (CVT's presets)
        raise TrainingError("this model has no training objective (its spec lists none): train it on a task with "
                            "lmkit finetune, or compose it with an objective to pre-train with lmkit train")
    if batches is None:
        raise TrainingError(f"none of the objectives ({', '.join(context.objectives) or 'none'}) says what data "
                            "it trains on; add one that does, e.g. causal-lm")
    if context.args.unlabeled:  # an objective that learns from unlabelled text mixes it in (CVT's)
        for objective in context.model.objectives.values():
            mixed = type(objective).with_unlabeled(batches, context)
            if mixed is not None:
                return mixed
        raise TrainingError(f"--unlabeled: none of the objectives ({', '.join(context.objectives) or 'none'}) "
                            "learns from unlabelled text; leave --unlabeled out or add one that does "
                            "(cvt-translation for an encoder-decoder)")
    return batches


# -- token windows: language modelling on a stream of text --------------------------------------------


class TokenWindows:
    """Windows of seq_len + 1 tokens of the tokenized text (causal LM and everything that reads plain text).

    A stack that reads per-token inputs beside the ids (lmkit.token_inputs: ELMo's char ids) gets them
    for every window, each unknown word spelled as the text it replaced (lmkit.data.Spellings), not as
    <unk>: they are computed from the window's place in the stream, so a resumed run reads the same.
    """

    def __init__(self, context: DataContext):
        from ..data import WindowSampler

        args = context.args
        limit = context.max_positions()
        if limit is not None and args.seq_len > limit:
            raise TrainingError(f"--seq-len {args.seq_len} is beyond the model's context of {limit} "
                                f"positions; use --seq-len {limit} or less")
        self.seq_len, self.batch_size = args.seq_len, args.batch_size
        self.eval_windows = args.eval_batches * args.batch_size
        self.tokenizer = context.tokenizer
        self.token_inputs = None if context.tokenizer is None else \
            context.model.feature_stack.token_inputs(context.tokenizer)
        (self.train_tokens, self.train_spellings), (self.val_tokens, self.val_spellings) = \
            _load_spelled_split(context, spellings=self.token_inputs is not None)
        self.sampler = WindowSampler(self.train_tokens, args.seq_len, args.seed)

    def inputs(self, tokens, spellings, starts) -> Batch:
        """The per-token inputs of the windows at `starts` ({} for a stack that reads ids alone)."""
        from ..token_inputs import window_inputs

        return window_inputs(self.token_inputs, self.tokenizer, tokens, spellings, starts, self.seq_len + 1)

    def train(self, first: int, count: int) -> Batch:
        starts = self.sampler.starts(first, count)
        return {"input_ids": self.sampler.samples(first, count),
                **self.inputs(self.train_tokens, self.train_spellings, starts)}

    def validation(self) -> list[Batch]:
        from ..data import evaluation_starts, evaluation_windows

        windows = evaluation_windows(self.val_tokens, self.seq_len, self.eval_windows)
        starts = evaluation_starts(self.val_tokens, self.seq_len, self.eval_windows)
        return [{"input_ids": windows[i:i + self.batch_size],
                 **self.inputs(self.val_tokens, self.val_spellings, starts[i:i + self.batch_size])}
                for i in range(0, len(windows), self.batch_size)]

    def tokens(self, batch: Batch) -> int:
        return batch["input_ids"].shape[0] * self.seq_len

    def describe(self) -> dict:
        return {"train_tokens": len(self.train_tokens), "val_tokens": len(self.val_tokens)}


class TokenStreams(TokenWindows):
    """The training text as global_batch contiguous streams read in order, for a stateful decoder
    (lmkit.contract.CausalDecoder.stateful): row r of every step continues row r of the step before,
    so the state the model carries from one window to the next is the state of the text before it
    (fastai's LM data loader; ULMFiT §3). Each row also says its stream, under "stream".

    Sample i is window (i // streams) of stream (i % streams); a stream that runs out starts over.
    Validation windows are TokenWindows' own: evaluation starts from a fresh state.
    """

    def __init__(self, context: DataContext):
        super().__init__(context)
        self.streams = context.args.global_batch
        self.stream_length = len(self.train_tokens) // self.streams  # >= seq_len + 1, checked by the split
        self.windows = (self.stream_length - 1) // self.seq_len

    def train(self, first: int, count: int) -> Batch:
        index = np.arange(first, first + count, dtype=np.int64)
        stream = index % self.streams
        starts = stream * self.stream_length + (index // self.streams) % self.windows * self.seq_len
        ids = self.train_tokens[starts[:, None] + np.arange(self.seq_len + 1)]
        return {"input_ids": ids.astype(np.int64), "stream": stream,
                **self.inputs(self.train_tokens, self.train_spellings, starts)}


def _load_token_split(context: DataContext) -> tuple[np.ndarray, np.ndarray]:
    """(train tokens, validation tokens) of the run's data."""
    (train, _), (val, _) = _load_spelled_split(context)
    return train, val


def _load_spelled_split(context: DataContext, spellings: bool = False):
    """((train tokens, their spellings), (validation tokens, theirs)); the spellings are None unless asked for
    (lmkit.data.load_tokens)."""
    from ..data import load_tokens, split_validation

    args = context.args

    def load(paths, what: str):
        stream = load_tokens(paths, context.tokenizer, text_field=args.text_field, progress=context.progress,
                             what=what, spellings=spellings)
        context.say(f"{what}: {len(stream.tokens):,} tokens in {stream.documents:,} "
                    f"document{'s' if stream.documents != 1 else ''}"
                    f"{' (cached)' if stream.from_cache else ''}")
        return stream

    stream = load(args.data, "training data")
    if args.val_data:
        held_out = load(args.val_data, "validation data")
        (train, train_spelled), (val, val_spelled) = (stream.tokens, stream.spellings), \
            (held_out.tokens, held_out.spellings)
        if len(val) < args.seq_len + 1:
            raise DataError(f"the validation data has {len(val):,} tokens, fewer than one window of "
                            f"--seq-len + 1 = {args.seq_len + 1}; add validation data or lower --seq-len")
    else:
        train, val = split_validation(stream.tokens, args.val_fraction, args.seq_len)
        spelled = stream.spellings
        train_spelled = None if spelled is None else spelled.window(0, len(train))
        val_spelled = None if spelled is None else spelled.window(len(train), len(stream.tokens))
    needed = args.global_batch * (args.seq_len + 1)
    if len(train) < needed:
        raise DataError(f"a batch needs batch_size*grad_accum*(seq_len+1) = {args.global_batch}*"
                        f"{args.seq_len + 1} = {needed:,} tokens but the training split has {len(train):,} of the "
                        f"{len(stream.tokens):,} read; lower --batch-size/--seq-len or add data")
    return (train, train_spelled), (val, val_spelled)
