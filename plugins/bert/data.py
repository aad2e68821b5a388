"""Pre-training data of the BERT family: documents of sentences -> masked sequences, the same for the same seed.

Data is text with one sentence per line and a blank line between documents (BERT's
create_pretraining_data.py input); a text file's end also ends a document, and each record of a
.jsonl file is one document whose lines are its sentences. Sentences are tokenized without
special tokens, then made into sequences in one of two ways:

    pairs           `[CLS] A [SEP] B [SEP]`, segments 0 and 1, when next-sentence prediction
                    (BERT: B is a random document's text half of the time) or sentence-order
                    prediction (ALBERT: A and B swapped half of the time) is trained beside
    full sentences  contiguous sentences packed up to the sequence length across documents, with
                    a separator between documents (RoBERTa's FULL-SENTENCES), when only masked LM is

Sample i of the endless stream is sequence order(epoch)[i % n] with epoch = i // n, and every random
choice for it (the pair, the negative, the mask) comes from a generator seeded by (seed, epoch,
sequence): a resumed run reads exactly the samples the interrupted one would have, and each epoch
masks every sequence anew (RoBERTa's dynamic masking; `dynamic = false` keeps one mask for good).

Nothing here imports torch: batches are numpy arrays.
"""
from __future__ import annotations

import numpy as np

from lmkit.documents import Corpus, load_corpus, split_documents
from lmkit.errors import DataError
from lmkit.training.arguments import TrainingError

from .config import MaskedLMOptions

ROLES = ("cls", "sep", "mask", "pad")


def missing_special_tokens(tokenizer) -> str | None:
    """Why `tokenizer` cannot make masked-LM examples (no cls, sep, mask or pad token), with the command that trains
    one of its kind that can; None when it can (or when there is no tokenizer yet to check)."""
    if tokenizer is None:
        return None
    missing = [role for role in ROLES if getattr(tokenizer, f"{role}_id", None) is None]
    if not missing:
        return None
    kind = getattr(tokenizer, "kind", "wordpiece")
    tokens = {"bytelevel-bpe": '["<s>","<pad>","</s>","<unk>","<mask>"]',  # RoBERTa's, in fairseq's order
              "unigram": '["<pad>","<unk>","[CLS]","[SEP]","[MASK]"]'}.get(  # ALBERT's (albert.md)
        kind, '["[PAD]","[UNK]","[CLS]","[SEP]","[MASK]"]')
    return (f"masked-lm needs a tokenizer with cls, sep, mask and pad tokens ([CLS] [SEP] [MASK] [PAD], or "
            f"RoBERTa's <s> </s> <mask> <pad>); this {kind} tokenizer has no {', '.join(missing)}: train it again "
            f"with them, lmkit tokenizer train --kind {kind} --set 'special_tokens={tokens}' ...")

PAIR_OBJECTIVES = {"next-sentence": "nsp", "sentence-order": "sop"}
IGNORE = -100  # label of positions that are not predicted (PyTorch's cross-entropy ignore_index)


# -- masking -----------------------------------------------------------------------------------------


class Masker:
    """BERT's masked-LM corruption of one sequence (create_pretraining_data.py create_masked_lm_predictions).

    Picks round(mask_prob * candidates) positions (at least 1, at most max_predictions), never a
    special token; whole words with `whole_word`, spans of up to max_ngram words with p(n) ~ 1/n
    (ALBERT); then 80% become the mask token, 10% a random non-special token, 10% stay.
    """

    def __init__(self, options: MaskedLMOptions, mask_id: int, special_ids: list[int], vocab_size: int):
        self.options, self.mask_id = options, mask_id
        ordinary = np.ones(vocab_size, dtype=bool)
        ordinary[special_ids] = False
        self.random_ids = np.flatnonzero(ordinary)
        n = np.arange(1, options.max_ngram + 1)
        self.ngram_p = (1.0 / n) / (1.0 / n).sum()  # ALBERT: 6/11, 3/11, 2/11 for n <= 3

    def __call__(self, ids: np.ndarray, candidate: np.ndarray, word_start: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(corrupted ids, labels with IGNORE where nothing is predicted) for ids (T,)."""
        o = self.options
        positions = np.flatnonzero(candidate)
        labels = np.full_like(ids, IGNORE)
        if len(positions) == 0:
            return ids.copy(), labels
        n_pick = max(1, int(round(len(positions) * o.mask_prob)))
        if o.max_predictions:
            n_pick = min(n_pick, o.max_predictions)
        if not o.whole_word and o.max_ngram == 1:
            picked = rng.permutation(positions)[:n_pick]
        else:
            picked = self._pick_spans(positions, word_start, n_pick, rng)
        labels[picked] = ids[picked]
        out = ids.copy()
        action = rng.random(len(picked))
        to_mask = action < o.mask_token_prob
        to_random = (action >= o.mask_token_prob) & (action < o.mask_token_prob + o.random_token_prob)
        out[picked[to_mask]] = self.mask_id
        out[picked[to_random]] = rng.choice(self.random_ids, size=int(to_random.sum()))
        return out, labels

    def _pick_spans(self, positions: np.ndarray, word_start: np.ndarray, n_pick: int,
                    rng: np.random.Generator) -> np.ndarray:
        # Units: whole words (a start and its continuations) or single tokens, among the candidates.
        if self.options.whole_word:
            cuts = np.flatnonzero(word_start[positions] | (np.diff(positions, prepend=-2) != 1))
        else:
            cuts = np.arange(len(positions))
        units = np.split(positions, cuts[1:])
        covered = np.zeros(len(units), dtype=bool)
        picked, count = [], 0
        for first in rng.permutation(len(units)):
            if count >= n_pick:
                break
            if covered[first]:
                continue
            n = rng.choice(len(self.ngram_p), p=self.ngram_p) + 1 if len(self.ngram_p) > 1 else 1
            # A span is n adjacent units that touch no special token; shorter where one would.
            last = first
            while last + 1 < min(first + n, len(units)) and not covered[last + 1] \
                    and units[last + 1][0] == units[last][-1] + 1:
                last += 1
            while last >= first and count + sum(len(units[u]) for u in range(first, last + 1)) > n_pick:
                last -= 1  # BERT: a word that would overshoot the budget is skipped
            if last < first:
                continue
            for u in range(first, last + 1):
                picked.append(units[u])
                count += len(units[u])
            covered[first:last + 1] = True
        return np.concatenate(picked) if picked else positions[:0]


# -- sequences ---------------------------------------------------------------------------------------


class Sequences:
    """The unmasked sequences of a corpus, addressed by index; `make(index, rng)` draws one."""

    def __init__(self, corpus: Corpus, seq_len: int, pairs: str | None, ids: dict, options: MaskedLMOptions,
                 seed: int, negative_prob: float = 0.5):
        self.corpus, self.seq_len, self.pairs, self.ids = corpus, seq_len, pairs, ids
        self.negative_prob = negative_prob
        if pairs:
            self.chunks = self._chunk_documents(seq_len - 3, options.short_seq_prob, seed)
        else:
            self.chunks = self._pack_full_sentences(seq_len - 2)
        if not self.chunks:
            raise DataError("the data holds no sentences; give text with one sentence per line")

    def __len__(self) -> int:
        return len(self.chunks)

    # Full sentences (RoBERTa §4.2): a flat stream of the sentences with a separator after each
    # document, cut into pieces of at most `room` tokens at sentence ends (a longer sentence is cut).
    def _pack_full_sentences(self, room: int) -> list[tuple[int, int]]:
        c, sep = self.corpus, self.ids["sep"]
        pieces, words = [], []
        for d in range(c.documents):
            first, last = c.doc_starts[d], c.doc_starts[d + 1]
            pieces.append(c.tokens[c.offsets[first]:c.offsets[last]])
            words.append(c.word_start[c.offsets[first]:c.offsets[last]])
            pieces.append(np.array([sep]))
            words.append(np.array([True]))
        self.stream = np.concatenate(pieces)
        self.stream_words = np.concatenate(words)
        # sentence ends in the stream: where a new sentence or separator starts
        ends, position = [], 0
        for d in range(c.documents):
            for s in range(c.doc_starts[d], c.doc_starts[d + 1]):
                position += c.offsets[s + 1] - c.offsets[s]
                ends.append(position)
            position += 1  # the separator
            ends.append(position)
        # Greedy: extend the current piece while the next sentence end still fits.
        chunks, start, current = [], 0, 0
        for end in ends:
            if end - start <= room:
                current = end
                continue
            if current > start:
                chunks.append((start, current))
                start = current
            while end - start > room:
                chunks.append((start, start + room))
                start += room
            current = end
        if current > start:
            chunks.append((start, current))
        return chunks

    # Pairs (BERT create_instances_from_document): sentences of one document gathered until they
    # reach the target length; A and B are split from each chunk when it is read.
    def _chunk_documents(self, room: int, short_seq_prob: float, seed: int) -> list[tuple[int, int]]:
        c = self.corpus
        rng = np.random.default_rng([seed, 7])
        chunks = []
        for d in range(c.documents):
            first, length = c.doc_starts[d], 0
            target = room if rng.random() >= short_seq_prob else int(rng.integers(2, room + 1))
            for s in range(c.doc_starts[d], c.doc_starts[d + 1]):
                length += c.offsets[s + 1] - c.offsets[s]
                if length >= target or s == c.doc_starts[d + 1] - 1:
                    chunks.append((first, s + 1))
                    first, length = s + 1, 0
                    target = room if rng.random() >= short_seq_prob else int(rng.integers(2, room + 1))
        return chunks

    def _document_of(self, sentence: int) -> int:
        return int(np.searchsorted(self.corpus.doc_starts, sentence, side="right") - 1)

    def make(self, index: int, rng: np.random.Generator):
        """(ids, token types, candidate mask, word starts, sentence label or -1) of sequence `index`."""
        if not self.pairs:
            start, end = self.chunks[index]
            body, words = self.stream[start:end], self.stream_words[start:end]
            ids = np.concatenate([[self.ids["cls"]], body, [self.ids["sep"]]])
            candidate = np.concatenate([[False], body != self.ids["sep"], [False]])
            word_start = np.concatenate([[True], words, [True]])
            return ids, np.zeros_like(ids), candidate, word_start, -1
        c = self.corpus
        first, last = self.chunks[index]
        room = self.seq_len - 3
        if last - first >= 2:
            a_end = int(rng.integers(first + 1, last))
            a = [c.sentence(s) for s in range(first, a_end)]
            b = [c.sentence(s) for s in range(a_end, last)]
            aw = [c.sentence_words(s) for s in range(first, a_end)]
            bw = [c.sentence_words(s) for s in range(a_end, last)]
        else:  # one sentence: split it at a random token
            tokens, words = c.sentence(first), c.sentence_words(first)
            cut = int(rng.integers(1, len(tokens))) if len(tokens) > 1 else len(tokens)
            a, b, aw, bw = [tokens[:cut]], [tokens[cut:]], [words[:cut]], [words[cut:]]
        a, aw = np.concatenate(a), np.concatenate(aw)
        b, bw = np.concatenate(b), np.concatenate(bw)
        label = int(rng.random() < self.negative_prob)
        if label and self.pairs == "sop":
            a, b, aw, bw = b, a, bw, aw  # ALBERT: the same two segments, swapped
        elif label:  # NSP: B from a random other document, from a random sentence on
            this = self._document_of(first)
            other = int(rng.integers(c.documents - 1)) if c.documents > 1 else this
            other += other >= this and c.documents > 1
            s = int(rng.integers(c.doc_starts[other], c.doc_starts[other + 1]))
            want, parts, words = max(room - len(a), 1), [], []
            while s < c.doc_starts[other + 1] and sum(map(len, parts)) < want:
                parts.append(c.sentence(s))
                words.append(c.sentence_words(s))
                s += 1
            b, bw = np.concatenate(parts), np.concatenate(words)
        # Truncate the longer side, from its front or back at random, until the pair fits (BERT).
        while len(a) + len(b) > room:
            if len(a) >= len(b):
                a, aw = (a[1:], aw[1:]) if rng.random() < 0.5 else (a[:-1], aw[:-1])
            else:
                b, bw = (b[1:], bw[1:]) if rng.random() < 0.5 else (b[:-1], bw[:-1])
        cls, sep = self.ids["cls"], self.ids["sep"]
        ids = np.concatenate([[cls], a, [sep], b, [sep]])
        types = np.concatenate([np.zeros(len(a) + 2, dtype=np.int64), np.ones(len(b) + 1, dtype=np.int64)])
        candidate = np.ones(len(ids), dtype=bool)
        candidate[[0, len(a) + 1, len(ids) - 1]] = False
        word_start = np.concatenate([[True], aw, [True], bw, [True]])
        word_start[len(a) + 2 if len(b) else 0] = True  # B starts a word
        return ids, types, candidate, word_start, label


# -- batches -----------------------------------------------------------------------------------------


class PretrainingBatches:
    """The trainer's Batches for masked LM (with NSP or SOP when the spec trains one)."""

    def __init__(self, context):
        args, model = context.args, context.model
        mlm = model.objectives["masked-lm"]
        self.options: MaskedLMOptions = mlm.options
        found = [PAIR_OBJECTIVES[name] for name in context.objectives if name in PAIR_OBJECTIVES]
        if len(found) > 1:
            raise TrainingError("next-sentence and sentence-order prediction read different pairs; train one of them")
        self.pairs = found[0] if found else None
        self.negative_prob = next((model.objectives[name].options.negative_prob for name in context.objectives
                                   if name in PAIR_OBJECTIVES), 0.5)
        limit = context.max_positions()
        if limit is not None and args.seq_len > limit:
            raise TrainingError(f"--seq-len {args.seq_len} is beyond the encoder's {limit} positions; "
                                f"use --seq-len {limit} or less")
        if args.seq_len < 8:
            raise TrainingError(f"--seq-len {args.seq_len} is too short for [CLS] A [SEP] B [SEP]; use 8 or more")
        tokenizer = context.tokenizer
        reason = missing_special_tokens(tokenizer)
        if reason:
            raise TrainingError(reason)
        self.ids = {role: getattr(tokenizer, f"{role}_id") for role in ROLES}
        encoder = model.encoder
        pad = getattr(encoder.config, "pad_token_id", None)
        if pad is not None and pad != self.ids["pad"]:
            raise TrainingError(f"the encoder numbers positions from pad_token_id={pad} but the tokenizer's pad "
                                f"token has id {self.ids['pad']}; compose with --set encoder.pad_token_id="
                                f"{self.ids['pad']}")
        special = sorted({v for v in self.ids.values()} | {tokenizer.token_to_id(t) for t in
                                                            tokenizer.special_tokens.values()})
        self.masker = Masker(self.options, self.ids["mask"], special, tokenizer.vocab_size)
        self.seq_len, self.batch_size, self.seed = args.seq_len, args.batch_size, args.seed
        self.eval_count = args.eval_batches * args.batch_size

        corpus = load_corpus(args.data, tokenizer, args.text_field)
        n = corpus.documents
        if args.val_data:
            self.train_corpus, self.val_corpus = corpus, load_corpus(args.val_data, tokenizer, args.text_field)
        else:  # the last val_fraction of the documents (at least one, when there are two or more)
            n_val = min(max(int(round(n * args.val_fraction)), 1 if args.val_fraction > 0 else 0), max(n - 1, 0))
            self.train_corpus = split_documents(corpus, 0, n - n_val)
            self.val_corpus = split_documents(corpus, n - n_val, n) if n_val else None
        if not self.train_corpus.documents:
            raise DataError("the training data holds no text; give files with one sentence per line")
        self.train_sequences = Sequences(self.train_corpus, self.seq_len, self.pairs, self.ids, self.options, self.seed,
                                         self.negative_prob)
        self.val_sequences = None
        if self.val_corpus is not None and self.val_corpus.documents:
            self.val_sequences = Sequences(self.val_corpus, self.seq_len, self.pairs, self.ids, self.options,
                                           self.seed, self.negative_prob)
        context.say(f"training data: {self.train_corpus.documents:,} documents, {len(self.train_corpus.tokens):,} "
                    f"tokens, {len(self.train_sequences):,} sequences"
                    f" ({'sentence pairs for ' + self.pairs.upper() if self.pairs else 'full sentences'})")
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.train_sequences))
        return self._orders[epoch]

    def sample(self, sequences: Sequences, index: int, epoch: int, stream: int):
        """One masked sample; every random choice comes from (seed, stream, epoch, index)."""
        epoch = epoch if self.options.dynamic else 0
        rng = np.random.default_rng([self.seed, stream, epoch, index])
        ids, types, candidate, word_start, label = sequences.make(index, rng)
        ids, labels = self.masker(ids, candidate, word_start, rng)
        return ids, types, labels, label

    def _collate(self, samples) -> dict[str, np.ndarray]:
        n = len(samples)
        batch = {"input_ids": np.full((n, self.seq_len), self.ids["pad"], dtype=np.int64),
                 "token_type_ids": np.zeros((n, self.seq_len), dtype=np.int64),
                 "attention_mask": np.zeros((n, self.seq_len), dtype=bool),
                 "labels": np.full((n, self.seq_len), IGNORE, dtype=np.int64)}
        for row, (ids, types, labels, _) in enumerate(samples):
            batch["input_ids"][row, :len(ids)] = ids
            batch["token_type_ids"][row, :len(ids)] = types
            batch["attention_mask"][row, :len(ids)] = True
            batch["labels"][row, :len(ids)] = labels
        if self.pairs:
            batch["sentence_label"] = np.array([label for *_, label in samples], dtype=np.int64)
        return batch

    def train(self, first: int, count: int) -> dict[str, np.ndarray]:
        n = len(self.train_sequences)
        samples = []
        for i in range(first, first + count):
            epoch, position = divmod(i, n)
            samples.append(self.sample(self.train_sequences, int(self.order(epoch)[position]), epoch, 0))
        return self._collate(samples)

    def validation(self) -> list[dict[str, np.ndarray]]:
        if self.val_sequences is None:
            return []
        n = len(self.val_sequences)
        samples = [self.sample(self.val_sequences, i % n, i // n, 1) for i in range(min(self.eval_count, n))]
        return [self._collate(samples[i:i + self.batch_size]) for i in range(0, len(samples), self.batch_size)]

    def tokens(self, batch) -> int:
        return int(batch["attention_mask"].sum())

    def describe(self) -> dict:
        return {"train_documents": self.train_corpus.documents, "train_tokens": len(self.train_corpus.tokens),
                "train_sequences": len(self.train_sequences),
                "val_sequences": 0 if self.val_sequences is None else len(self.val_sequences)}
