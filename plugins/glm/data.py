"""GLM's pre-training data: texts -> (Part A, Part B) samples, the same for the same seed (Du et al. 2022 §2.1).

A text of n tokens becomes one sample:

    input  : x0 x1 [M] x3 [M] | [S] x4 x5 | [S] x2        the reference fixture, spans [x2] and [x4 x5]
    pos1   :  0  1  2   3  4  |  4   4  4 |  2   2         shuffled to ([x4 x5], [x2])
    pos2   :  0  0  0   0  0  |  1   2  3 |  1   2
    target :  -  -  -   -  -  | x4  x5 [E]| x2  [E]       loss on Part B only

Three kinds of blank (§2.3, THUDM/GLM blocklm_utils.py), one kind per sample, drawn by weight:

    token     spans of Poisson(3) tokens (restricted to 1..39) until int(mask_ratio * n) are masked,
              placed at random without touching each other; each becomes one [MASK]
    sentence  whole sentences, in random order, until mask_ratio of the tokens are masked; [sMASK]
    document  one span, the last U(50%, 100%) of the text; [gMASK] (GLM as a prefix language model)

Data is documents of sentences (one sentence per line, a blank line between documents; the BERT
family's reader), each document cut into texts short enough that a sample fits --seq-len. Sample i
of the endless stream is text order(epoch)[i % n] with epoch = i // n, and every random choice for
it comes from a generator seeded by (seed, stream, epoch, text): a resumed run reads exactly the
samples the interrupted one would have, and each epoch draws new blanks (`dynamic`).

Nothing here imports torch: batches are numpy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmkit.errors import DataError
from lmkit.training.arguments import TrainingError

from .config import END, GENERATION_MASK, MASK, SENTENCE_MASK, START, BlankInfillingOptions

IGNORE = -100  # label of positions that are not predicted (PyTorch's cross-entropy ignore_index)
KINDS = ("token", "sentence", "document")


@dataclass
class Sample:
    """One GLM input: ids, positions (2, L) (pos1, pos2), targets (IGNORE in Part A) and sep = len(Part A)."""

    input_ids: np.ndarray  # (L,) int64
    position_ids: np.ndarray  # (2, L) int64
    labels: np.ndarray  # (L,) int64
    sep: int
    spans: list[tuple[int, int]]  # the blanks, as [start, end) in the text, in Part B's order

    def attention_mask(self) -> np.ndarray:
        """(L, L) bool: position i may attend to j when j < sep or j <= i (the reference's rule)."""
        L = len(self.input_ids)
        j = np.arange(L)
        return (j[None, :] < self.sep) | (j[None, :] <= j[:, None])


def span_length_distribution(poisson_lambda: float = 3.0, max_length: int = 39) -> np.ndarray:
    """p(length = 1..max_length): Poisson(lambda) restricted to 1..max_length and renormalised (index 0: length 1).

    Its mean is about 3.157 for lambda 3 (the zero that Poisson puts mass on is left out).
    """
    k = np.arange(1, max_length + 1)
    log_p = k * np.log(poisson_lambda) - poisson_lambda - np.cumsum(np.log(k))
    p = np.exp(log_p - log_p.max())
    return p / p.sum()


def span_lengths(n_tokens: int, options: BlankInfillingOptions, rng: np.random.Generator,
                 distribution: np.ndarray) -> list[int]:
    """Lengths drawn until int(mask_ratio * n) tokens are masked (blocklm_utils.py); spans must leave
    a token between each other, so draws that no longer fit are dropped."""
    budget = max(1, int(options.mask_ratio * n_tokens))  # a short text still gets one blank
    lengths: list[int] = []
    while sum(lengths) < budget:
        length = int(rng.choice(len(distribution), p=distribution)) + 1
        # n tokens hold spans of total s with gaps between them when s + (count - 1) <= n - 1 (one token stays).
        if sum(lengths) + length + len(lengths) > n_tokens - 1:
            break
        lengths.append(length)
    return lengths


def place_spans(lengths: list[int], n_tokens: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Random non-overlapping, non-adjacent [start, end) spans of the given lengths, in text order.

    blocklm_utils.py sample_spans: the n - sum(lengths) unmasked tokens leave m = n - sum - count + 1
    free slots; each span takes a sorted uniform place in 0..m, and one token of gap follows each.
    """
    lengths = list(lengths)
    rng.shuffle(lengths)
    free = n_tokens - sum(lengths) - len(lengths) + 1
    places = np.sort(rng.integers(0, free + 1, size=len(lengths)))
    spans, offset = [], 0
    for place, length in zip(places, lengths):
        start = offset + int(place)
        spans.append((start, start + length))
        offset += length + 1
    return spans


def sentence_spans(n_tokens: int, sentence_starts: np.ndarray, options: BlankInfillingOptions,
                   rng: np.random.Generator) -> list[tuple[int, int]]:
    """Whole sentences, picked in random order until mask_ratio of the tokens are masked (§2.3), in text order.

    Sentences next to each other are both kept (two [sMASK]s); one token of the text always stays.
    """
    bounds = np.append(sentence_starts, n_tokens)
    sentences = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    budget = max(1, int(np.ceil(options.mask_ratio * n_tokens)))
    picked, masked = [], 0
    for i in rng.permutation(len(sentences)):
        if masked >= budget:
            break
        a, b = sentences[i]
        if masked + (b - a) > n_tokens - 1:
            continue
        picked.append((a, b))
        masked += b - a
    if not picked:  # one sentence takes the whole text: a span of its own, leaving its first token
        picked = [(1, n_tokens)] if n_tokens > 1 else []
    return sorted(picked)


def document_span(n_tokens: int, options: BlankInfillingOptions, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The last U(document_min_ratio, document_max_ratio) of the text, at least one token (§2.3)."""
    ratio = rng.uniform(options.document_min_ratio, options.document_max_ratio)
    length = min(max(1, int(round(ratio * n_tokens))), n_tokens)
    return [(n_tokens - length, n_tokens)]


def build_sample(tokens: np.ndarray, spans: list[tuple[int, int]], mask_ids: list[int], start_id: int, end_id: int,
                 order: np.ndarray | None = None) -> Sample:
    """The GLM sample of `tokens` with `spans` ([start, end) in text order, each replaced by its mask id in
    mask_ids) blanked out; Part B holds the spans in `order` (indices into spans; None: text order)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    part_a, mask_at, cursor = [], [], 0
    for (start, end), mask_id in zip(spans, mask_ids):
        part_a.extend(tokens[cursor:start].tolist())
        mask_at.append(len(part_a))
        part_a.append(mask_id)
        cursor = end
    part_a.extend(tokens[cursor:].tolist())
    sep = len(part_a)
    ids, pos1, pos2 = list(part_a), list(range(sep)), [0] * sep
    labels = [IGNORE] * sep
    for k in (range(len(spans)) if order is None else order):
        start, end = spans[k]
        span = tokens[start:end].tolist()
        ids += [start_id, *span]
        labels += [*span, end_id]
        pos1 += [mask_at[k]] * (len(span) + 1)
        pos2 += list(range(1, len(span) + 2))
    ordered = [spans[k] for k in (range(len(spans)) if order is None else order)]
    return Sample(np.array(ids, dtype=np.int64), np.array([pos1, pos2], dtype=np.int64),
                  np.array(labels, dtype=np.int64), sep, ordered)


class Blanker:
    """Draws one sample from a text: the kind of blank, the spans, their order (all from `rng`)."""

    def __init__(self, options: BlankInfillingOptions, ids: dict[str, int]):
        self.options, self.ids = options, ids
        weights = np.array([options.token_weight, options.sentence_weight, options.document_weight], dtype=float)
        self.kind_p = weights / weights.sum()
        self.distribution = span_length_distribution(options.poisson_lambda, options.max_span_length)

    def __call__(self, tokens: np.ndarray, sentence_starts: np.ndarray, rng: np.random.Generator) -> Sample:
        n = len(tokens)
        kind = KINDS[int(rng.choice(3, p=self.kind_p))]
        if kind == "token":
            spans = place_spans(span_lengths(n, self.options, rng, self.distribution), n, rng)
            mask = self.ids[MASK]
        elif kind == "sentence":
            spans, mask = sentence_spans(n, sentence_starts, self.options, rng), self.ids[SENTENCE_MASK]
        else:
            spans, mask = document_span(n, self.options, rng), self.ids[GENERATION_MASK]
        order = rng.permutation(len(spans)) if self.options.shuffle_spans else None
        return build_sample(tokens, spans, [mask] * len(spans), self.ids[START], self.ids[END], order)


def text_length(seq_len: int, options: BlankInfillingOptions) -> int:
    """The longest text whose sample always fits seq_len: n + 2 x (number of spans) tokens.

    Token and sentence blanks cover at most about mask_ratio * n + one span's overshoot; each span
    adds a mask and an [S]. A document blank adds 2.
    """
    best = 1
    for n in range(1, seq_len + 1):
        spans = int(options.mask_ratio * n) + 1 if options.token_weight or options.sentence_weight else 1
        if n + 2 * spans <= seq_len:
            best = n
    return best


class Texts:
    """The texts of a corpus (lmkit.plugins.bert.data.Corpus): each document cut into pieces of at most
    `length` tokens at sentence ends where it can, with each piece's sentence starts."""

    def __init__(self, corpus, length: int):
        self.corpus, self.pieces = corpus, []
        c = corpus
        for d in range(c.documents):
            first, last = int(c.doc_starts[d]), int(c.doc_starts[d + 1])
            begin, current = int(c.offsets[first]), int(c.offsets[first])
            starts: list[int] = []
            for s in range(first, last):
                a, b = int(c.offsets[s]), int(c.offsets[s + 1])
                if b - begin > length and current > begin:  # close the piece before this sentence
                    self.pieces.append((begin, current, starts))
                    begin, starts = current, []
                while b - begin > length:  # a sentence longer than a piece is cut
                    self.pieces.append((begin, begin + length, starts or [begin]))
                    begin, starts = begin + length, []
                starts.append(max(a, begin))
                current = b
            if current > begin:
                self.pieces.append((begin, current, starts))
        self.pieces = [p for p in self.pieces if p[1] - p[0] >= 2]  # a blank needs a token that stays
        if not self.pieces:
            raise DataError("the data holds no text of two tokens or more; give text with one sentence per line")

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        begin, end, starts = self.pieces[index]
        return self.corpus.tokens[begin:end], np.asarray(starts, dtype=np.int64) - begin


def special_ids(tokenizer) -> dict[str, int]:
    """The ids of GLM's special tokens, or a one-line error naming those the tokenizer lacks."""
    from .config import SPECIAL_TOKENS

    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, value in ids.items() if value is None]
    if missing:
        raise TrainingError(f"GLM needs the special tokens {' '.join(SPECIAL_TOKENS)} in its tokenizer and this one "
                            f"lacks {' '.join(missing)}; compose the model again (lmkit compose adds them)")
    return ids


class InfillingBatches:
    """The trainer's Batches for blank infilling: right-padded samples of seq_len tokens."""

    def __init__(self, context):
        from lmkit.documents import load_corpus, split_documents

        args, model = context.args, context.model
        self.options: BlankInfillingOptions = model.objectives["blank-infilling"].options
        limit = context.max_positions()
        if limit is not None and args.seq_len > limit:
            raise TrainingError(f"--seq-len {args.seq_len} is beyond GLM's {limit} positions; use --seq-len {limit} "
                                "or less")
        if args.seq_len < 4:
            raise TrainingError(f"--seq-len {args.seq_len} is too short for a text and one blank; use 4 or more")
        tokenizer = context.tokenizer
        self.ids = special_ids(tokenizer)
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else self.ids[END]
        self.blanker = Blanker(self.options, self.ids)
        self.seq_len, self.batch_size, self.seed = args.seq_len, args.batch_size, args.seed
        self.eval_count = args.eval_batches * args.batch_size
        length = text_length(args.seq_len, self.options)

        corpus = load_corpus(args.data, tokenizer, args.text_field)
        n = corpus.documents
        if args.val_data:
            train, val = corpus, load_corpus(args.val_data, tokenizer, args.text_field)
        else:  # the last val_fraction of the documents (at least one, when there are two or more)
            n_val = min(max(int(round(n * args.val_fraction)), 1 if args.val_fraction > 0 else 0), max(n - 1, 0))
            train = split_documents(corpus, 0, n - n_val)
            val = split_documents(corpus, n - n_val, n) if n_val else None
        self.train_texts = Texts(train, length)
        self.val_texts = Texts(val, length) if val is not None and val.documents else None
        context.say(f"training data: {train.documents:,} documents, {len(train.tokens):,} tokens, "
                    f"{len(self.train_texts):,} texts of at most {length} tokens")
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.train_texts))
        return self._orders[epoch]

    def sample(self, texts: Texts, index: int, epoch: int, stream: int) -> Sample:
        """One sample; every random choice comes from (seed, stream, epoch, index)."""
        rng = np.random.default_rng([self.seed, stream, epoch if self.options.dynamic else 0, index])
        return self.blanker(*texts[index], rng)

    def collate(self, samples: list[Sample]) -> dict[str, np.ndarray]:
        n, T = len(samples), self.seq_len
        batch = {"input_ids": np.full((n, T), self.pad_id, dtype=np.int64),
                 "position_ids": np.zeros((n, 2, T), dtype=np.int64),
                 "attention_mask": np.zeros((n, T), dtype=bool),
                 "labels": np.full((n, T), IGNORE, dtype=np.int64)}
        for row, sample in enumerate(samples):
            L = len(sample.input_ids)
            batch["input_ids"][row, :L] = sample.input_ids
            batch["position_ids"][row, :, :L] = sample.position_ids
            batch["position_ids"][row, 1, L:] = 1  # padding is no Part A (masked out all the same)
            batch["attention_mask"][row, :L] = True
            batch["labels"][row, :L] = sample.labels
        return batch

    def train(self, first: int, count: int) -> dict[str, np.ndarray]:
        n = len(self.train_texts)
        samples = []
        for i in range(first, first + count):
            epoch, position = divmod(i, n)
            samples.append(self.sample(self.train_texts, int(self.order(epoch)[position]), epoch, 0))
        return self.collate(samples)

    def validation(self) -> list[dict[str, np.ndarray]]:
        if self.val_texts is None:
            return []
        n = len(self.val_texts)
        samples = [self.sample(self.val_texts, i % n, i // n, 1) for i in range(min(self.eval_count, n))]
        return [self.collate(samples[i:i + self.batch_size]) for i in range(0, len(samples), self.batch_size)]

    def tokens(self, batch) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def describe(self) -> dict:
        return {"train_texts": len(self.train_texts), "train_tokens": len(self.train_texts.corpus.tokens),
                "val_texts": 0 if self.val_texts is None else len(self.val_texts)}
