"""Parallel text: sentence pairs for encoder-decoder models, read, checked, tokenized and batched.

Both sides share the model's tokenizer.json, unless the model has its own target-side tokenizer
(target_tokenizer/ in the model directory, composed with --set tokenizer.target=DIR).

Two layouts, one sentence (pair) per line:
  - a source file and a target file, given in that order (`--data train.de --data train.en`),
    with the same number of lines;
  - tab-separated files (.tsv), `source<TAB>target` on each line; several may be given.

Batches are right-padded: source_ids/source_mask (B, S), target_ids (B, T) = start y_1 .. y_n (the
decoder's inputs, from its decoder_start_token_id: <s>, or pad for T5) and labels (B, T) = y_1 .. y_n </s>, -100 at padding.
"""
from __future__ import annotations

import os

import numpy as np

from .errors import DataError


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(start, end, pad) token ids of the target side: <s> starts a translation, </s> ends it.

    A tokenizer without a start token starts with its end token (as GPT-2 starts from <|endoftext|>);
    without a pad token, padding reuses the end token (it is masked out anyway).
    """
    eos = tokenizer.eos_id
    if eos is None:
        raise DataError("the tokenizer has no end-of-sentence token (</s> or <|endoftext|>), which ends every "
                        "translation; train one whose special tokens include </s>")
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else eos
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else eos
    return bos, eos, pad


def _read_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise DataError(f"{path} is not a file; give a source and a target file, or .tsv files of pairs")
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\r\n") for line in handle]


def read_pairs(paths) -> list[tuple[str, str]]:
    """The sentence pairs of `paths` (see the module doc), every line checked."""
    paths = [os.fspath(p) for p in paths]
    tsv = [p for p in paths if p.endswith(".tsv")]
    pairs: list[tuple[str, str]] = []
    if tsv:
        if len(tsv) != len(paths):
            raise DataError("give either .tsv files of pairs or one source and one target file, not both")
        for path in paths:
            for number, line in enumerate(_read_lines(path), 1):
                if not line.strip():
                    raise DataError(f"{path} line {number} is empty; every line must hold a source<TAB>target pair")
                source, tab, target = line.partition("\t")
                if not tab:
                    raise DataError(f"{path} line {number} has no tab; each line must be source<TAB>target")
                if not source.strip() or not target.strip():
                    side = "source" if not source.strip() else "target"
                    raise DataError(f"{path} line {number} has an empty {side}; every pair needs both sentences")
                pairs.append((source, target))
        return pairs
    if len(paths) != 2:
        raise DataError(f"parallel text is a source file and a target file (or .tsv files); got {len(paths)} "
                        "file(s): pass --data SOURCE --data TARGET")
    sources, targets = _read_lines(paths[0]), _read_lines(paths[1])
    if len(sources) != len(targets):
        shorter, longer = (paths[0], paths[1]) if len(sources) < len(targets) else (paths[1], paths[0])
        line = min(len(sources), len(targets)) + 1
        raise DataError(f"{paths[0]} has {len(sources)} lines but {paths[1]} has {len(targets)}: line {line} of "
                        f"{longer} has no pair in {shorter}; give files with one sentence per line, line for line")
    for number, (source, target) in enumerate(zip(sources, targets), 1):
        for path, text in ((paths[0], source), (paths[1], target)):
            if not text.strip():
                raise DataError(f"{path} line {number} is empty; every line must hold a sentence (drop the pair "
                                "from both files)")
    return list(zip(sources, targets))


def encode_pairs(pairs, tokenizer, max_len: int, where: str, flag: str = "--seq-len", target_tokenizer=None,
                 source_suffix: list[int] | tuple = ()) -> list[tuple[list[int], list[int]]]:
    """Token ids of each pair (the targets with `target_tokenizer` when the sides have their own), each
    source followed by `source_suffix` (lmkit.seq2seq.source_suffix_ids); a sentence longer than max_len
    tokens is an error naming its pair."""
    sources = [ids + list(source_suffix) if ids else ids for ids in tokenizer.encode_batch([s for s, _ in pairs])]
    targets = (target_tokenizer or tokenizer).encode_batch([t for _, t in pairs])
    for number, (source, target) in enumerate(zip(sources, targets), 1):
        for side, ids in (("source", source), ("target", target)):
            if len(ids) > max_len:
                raise DataError(f"{where} pair {number}: the {side} has {len(ids)} tokens, more than the maximum of "
                                f"{max_len}; raise {flag} or drop the pair")
            if not ids:
                raise DataError(f"{where} pair {number}: the {side} has no tokens")
    return list(zip(sources, targets))


def pad_sources(sources: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """source_ids int64 (B, S) and source_mask bool (B, S), right-padded."""
    width = max(map(len, sources))
    ids = np.full((len(sources), width), pad, dtype=np.int64)
    mask = np.zeros((len(sources), width), dtype=np.bool_)
    for row, source in enumerate(sources):
        ids[row, :len(source)] = source
        mask[row, :len(source)] = True
    return ids, mask


def source_pad_id(tokenizer) -> int:
    """The id that pads sources: masked out, so any id of the source vocabulary will do."""
    return tokenizer.pad_id if tokenizer.pad_id is not None else 0


def make_batch(pairs: list[tuple[list[int], list[int]]], bos: int, eos: int, pad: int,
               source_pad: int | None = None) -> dict[str, np.ndarray]:
    source_ids, source_mask = pad_sources([s for s, _ in pairs], pad if source_pad is None else source_pad)
    width = max(len(t) for _, t in pairs) + 1
    target_ids = np.full((len(pairs), width), pad, dtype=np.int64)
    labels = np.full((len(pairs), width), -100, dtype=np.int64)
    for row, (_, target) in enumerate(pairs):
        target_ids[row, :len(target) + 1] = [bos, *target]
        labels[row, :len(target) + 1] = [*target, eos]
    return {"source_ids": source_ids, "source_mask": source_mask, "target_ids": target_ids, "labels": labels}


class ParallelText:
    """The trainer's Batches for sentence pairs (lmkit.training.batches.Batches).

    Sample i is pair order[i % N] of epoch i // N, where order is a permutation seeded by (seed, epoch):
    every pair once per epoch, and a resumed run reads exactly what the interrupted one would have.
    --seq-len is the longest sentence (either side) in tokens.
    """

    def __init__(self, context):
        args = context.args
        target_tokenizer = context.target_tokenizer
        _, self.eos, self.pad = special_ids(target_tokenizer or context.tokenizer)
        # The decoder's input starts with the token generation starts from: <s> (LSTM NMT), pad (T5).
        self.bos = context.model.decoder.decoder_start_token_id(target_tokenizer or context.tokenizer)
        self.source_pad = source_pad_id(context.tokenizer)
        self.batch_size, self.seed = args.batch_size, args.seed
        from .seq2seq import source_suffix_ids

        suffix = source_suffix_ids(context.model.encoder, context.tokenizer)  # T5's </s>; none for LSTM NMT
        train = encode_pairs(read_pairs(args.data), context.tokenizer, args.seq_len, "training data",
                             target_tokenizer=target_tokenizer, source_suffix=suffix)
        if args.val_data:
            val = encode_pairs(read_pairs(args.val_data), context.tokenizer, args.seq_len, "validation data",
                               target_tokenizer=target_tokenizer, source_suffix=suffix)
        else:
            held = int(round(len(train) * args.val_fraction))
            train, val = (train[:-held], train[-held:]) if held else (train, [])
        if not train:
            raise DataError("the training data holds no sentence pairs after holding out validation pairs; add data")
        self.train_pairs = train
        self.val_pairs = val[:args.eval_batches * args.batch_size]
        context.say(f"parallel text: {len(train):,} training pairs, {len(self.val_pairs):,} validation pairs")
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.train_pairs))
        return self._orders[epoch]

    def train(self, first: int, count: int) -> dict[str, np.ndarray]:
        N = len(self.train_pairs)
        picked = [self.train_pairs[self._order(i // N)[i % N]] for i in range(first, first + count)]
        return make_batch(picked, self.bos, self.eos, self.pad, self.source_pad)

    def validation(self) -> list[dict[str, np.ndarray]]:
        return [make_batch(self.val_pairs[i:i + self.batch_size], self.bos, self.eos, self.pad, self.source_pad)
                for i in range(0, len(self.val_pairs), self.batch_size)]

    def tokens(self, batch) -> int:
        return int((batch["labels"] != -100).sum())

    def describe(self) -> dict:
        return {"train_pairs": len(self.train_pairs), "val_pairs": len(self.val_pairs),
                "train_tokens": sum(len(t) + 1 for _, t in self.train_pairs)}
