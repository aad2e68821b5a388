"""T5's span corruption (Raffel et al. 2020 §3.1.4, §3.3.4): drop random spans of the input, each replaced
by one sentinel, and train the decoder to write the dropped spans after their sentinels.

The rules are those of google-research/text-to-text-transfer-transformer's preprocessors
(random_spans_noise_mask, noise_span_to_unique_sentinel, nonnoise_span_to_unique_sentinel):

    num_noise = round(L * noise_density), clipped to [1, L - 1]
    num_spans = max(1, round(num_noise / mean_noise_span_length))
    the noise tokens and the other tokens are each cut into num_spans non-empty runs at random (a
    uniformly random composition), and the runs alternate: other, noise, other, noise, ..., noise
    (starting with kept text, ending with noise)
    inputs:  each noise run becomes one sentinel: x1 <X0> x4 <X1> ... (then </s>)
    targets: <X0> noise run 0 <X1> noise run 1 ... </s>, no trailing sentinel (the text ends in noise)

Sentinels are the tokenizer's <extra_id_0>, <extra_id_1>, ..., which T5's vocabulary puts at its end,
counting down (`lmkit tokenizer train --kind unigram --set sentinels=100`). Every random choice comes
from (seed, stream, epoch, window), so a resumed run corrupts exactly what the interrupted one would
have, and each epoch corrupts the windows anew (as the BERT family's dynamic masking).
"""
from __future__ import annotations

import numpy as np

from lmkit.errors import DataError
from lmkit.objectives.seq2seq import Seq2SeqLM
from lmkit.training.arguments import TrainingError

IGNORE = -100


def noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
               rng: np.random.Generator) -> np.ndarray:
    """bool (length,): True at the tokens to drop (random_spans_noise_mask)."""
    original = length
    length = max(length, 2)
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)

    def segmentation(items: int, segments: int) -> np.ndarray:
        # segments - 1 distinct cut points among the items - 1 gaps: every run non-empty, all compositions equally likely
        first = np.zeros(items, dtype=np.int64)
        first[1 + rng.choice(items - 1, segments - 1, replace=False)] = 1
        return np.bincount(np.cumsum(first), minlength=segments)

    noise = segmentation(num_noise, num_spans)
    kept = segmentation(length - num_noise, num_spans)
    runs = np.stack([kept, noise], axis=1).reshape(-1)  # kept, noise, kept, noise, ...
    is_noise = np.repeat(np.tile([False, True], num_spans), runs)
    return is_noise[:original]


def to_sentinels(tokens: np.ndarray, mask: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
    """Each run of True in `mask` replaced by one sentinel, sentinels[0] for the first run
    (noise_span_to_unique_sentinel; the targets are this with the mask inverted)."""
    before = np.concatenate([[False], mask[:-1]])
    first = mask & ~before
    runs = int(first.sum())
    if runs > len(sentinels):
        raise DataError(f"a window has {runs} spans but the tokenizer has {len(sentinels)} sentinels; lower --seq-len "
                        "or train the tokenizer with more (--set sentinels=N)")
    out = np.where(first, sentinels[np.clip(np.cumsum(first) - 1, 0, len(sentinels) - 1)], tokens)
    return out[~(mask & before)]


def corrupt(tokens: np.ndarray, mask: np.ndarray, sentinels: np.ndarray, eos: int,
            source_suffix: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of `tokens` with `mask`'s runs dropped, the targets ending with eos and the inputs
    with source_suffix (default [eos]; seqio's append_eos), as every source the encoder reads."""
    suffix = [eos] if source_suffix is None else list(source_suffix)
    return (np.concatenate([to_sentinels(tokens, mask, sentinels), np.asarray(suffix, dtype=tokens.dtype)]),
            np.append(to_sentinels(tokens, ~mask, sentinels), eos))


def sentinel_ids(tokenizer, needed: int) -> np.ndarray:
    """The ids of <extra_id_0>, <extra_id_1>, ... that the tokenizer has (at least `needed`)."""
    ids = []
    while (token := tokenizer.token_to_id(f"<extra_id_{len(ids)}>")) is not None:
        ids.append(token)
    if len(ids) < needed:
        raise TrainingError(f"span corruption of --seq-len windows needs up to {needed} sentinels (<extra_id_0> ...) "
                            f"and the tokenizer has {len(ids)}; train it with --set sentinels={max(needed, 100)}, or "
                            "lower --seq-len")
    return np.asarray(ids, dtype=np.int64)


class SpanCorruptionBatches:
    """The trainer's Batches (lmkit.training.batches.Batches): windows of --seq-len tokens of the text,
    corrupted; source_ids/source_mask, target_ids (start, targets[:-1]) and labels as parallel text has."""

    def __init__(self, context):
        from lmkit.training.batches import _load_token_split

        args, model = context.args, context.model
        if model.encoder is None or model.decoder is None:
            raise TrainingError("span-corruption trains an encoder-decoder; the spec needs both an encoder and a decoder")
        self.options = next(o for o in model.objectives.values() if isinstance(o, SpanCorruption)).options
        tokenizer = context.tokenizer
        self.eos, self.pad = tokenizer.eos_id, tokenizer.pad_id
        if self.eos is None or self.pad is None:
            raise TrainingError("span-corruption needs a tokenizer with </s> and <pad> (T5's: pad 0, eos 1)")
        self.start = model.decoder.decoder_start_token_id(tokenizer)
        self.seq_len, self.batch_size, self.seed = args.seq_len, args.batch_size, args.seed
        num_noise = min(max(int(round(max(self.seq_len, 2) * self.options.noise_density)), 1), self.seq_len - 1)
        num_spans = max(int(round(num_noise / self.options.mean_noise_span_length)), 1)
        self.sentinels = sentinel_ids(tokenizer, num_spans)
        from lmkit.seq2seq import source_suffix_ids

        self.source_suffix = source_suffix_ids(model.encoder, tokenizer)  # T5's </s>, as every source has
        limit = model.encoder.max_positions
        inputs = self.seq_len - num_noise + num_spans + len(self.source_suffix)  # kept, a sentinel per span, </s>
        if limit is not None and inputs > limit:
            raise TrainingError(f"--seq-len {self.seq_len} windows corrupt to {inputs} input tokens, more than the "
                                f"encoder's {limit} positions; lower --seq-len")
        self.train_tokens, self.val_tokens = _load_token_split(context)
        self.windows = len(self.train_tokens) // self.seq_len
        self.eval_count = min(args.eval_batches * args.batch_size, len(self.val_tokens) // self.seq_len)
        self._orders: dict[int, np.ndarray] = {}
        context.say(f"span corruption: {self.windows:,} windows of {self.seq_len} tokens, noise density "
                    f"{self.options.noise_density}, mean span {self.options.mean_noise_span_length}")

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.windows)
        return self._orders[epoch]

    def sample(self, tokens: np.ndarray, window: int, epoch: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, stream, epoch, window])
        text = tokens[window * self.seq_len:(window + 1) * self.seq_len].astype(np.int64)
        mask = noise_mask(len(text), self.options.noise_density, self.options.mean_noise_span_length, rng)
        return corrupt(text, mask, self.sentinels, self.eos, self.source_suffix)

    def _collate(self, pairs) -> dict[str, np.ndarray]:
        from lmkit.parallel import make_batch

        # make_batch appends eos to each target and starts the decoder's input with the start token.
        return make_batch([(list(source), list(target[:-1])) for source, target in pairs], self.start, self.eos,
                          self.pad)

    def train(self, first: int, count: int) -> dict[str, np.ndarray]:
        samples = []
        for i in range(first, first + count):
            epoch, position = divmod(i, self.windows)
            samples.append(self.sample(self.train_tokens, int(self._order(epoch)[position]), epoch, 0))
        return self._collate(samples)

    def validation(self) -> list[dict[str, np.ndarray]]:
        samples = [self.sample(self.val_tokens, i, 0, 1) for i in range(self.eval_count)]
        return [self._collate(samples[i:i + self.batch_size]) for i in range(0, len(samples), self.batch_size)]

    def tokens(self, batch) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def describe(self) -> dict:
        return {"train_tokens": len(self.train_tokens), "val_tokens": len(self.val_tokens),
                "train_windows": self.windows}


class SpanCorruption(Seq2SeqLM):
    """The seq2seq cross-entropy of the dropped spans given the corrupted text (T5's pre-training loss)."""

    @classmethod
    def check_composition(cls, options, spec, tokenizer) -> None:
        from lmkit.errors import SpecError
        from lmkit.objectives.base import require_end_of_text

        require_end_of_text(tokenizer)
        if tokenizer is not None and tokenizer.token_to_id("<extra_id_0>") is None:
            raise SpecError(f"span corruption replaces each dropped span with a sentinel (<extra_id_0>, "
                            f"<extra_id_1>, ...) and this {tokenizer.kind} tokenizer has none; train a unigram "
                            "tokenizer with them (lmkit tokenizer train --kind unigram --set sentinels=100)")

    @classmethod
    def batches(cls, context):
        return SpanCorruptionBatches(context)
