"""Documents of sentences, tokenized once and cached: what sentence-aware pre-training data reads.

Text has one sentence per line and a blank line between documents (BERT's create_pretraining_data.py
input); a text file's end also ends a document, and each record of a .jsonl file is one document whose
lines are its sentences. The BERT family's pair and full-sentence sequences and GLM's blank infilling
are both made from a `Corpus`. Nothing here imports torch.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np


def read_documents(paths, text_field: str = "text") -> list[list[str]]:
    """Documents as lists of sentences: one sentence per line, documents apart at blank lines and file ends."""
    from .data import find_data_files, read_texts

    documents, current = [], []
    for text, ends_document in read_texts(find_data_files(paths), text_field):
        for line in text.split("\n"):
            if line.strip():
                current.append(line.strip())
            elif current:
                documents.append(current)
                current = []
        if ends_document and current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    return documents


@dataclass
class Corpus:
    """Tokenized documents: sentence s is tokens[offsets[s]:offsets[s + 1]], document d is sentences
    doc_starts[d] to doc_starts[d + 1] - 1; word_start marks the first token of each word."""

    tokens: np.ndarray  # (n_tokens,) int64
    word_start: np.ndarray  # (n_tokens,) bool
    offsets: np.ndarray  # (n_sentences + 1,)
    doc_starts: np.ndarray  # (n_documents + 1,)

    @property
    def documents(self) -> int:
        return len(self.doc_starts) - 1

    def sentence(self, s: int) -> np.ndarray:
        return self.tokens[self.offsets[s]:self.offsets[s + 1]]

    def sentence_words(self, s: int) -> np.ndarray:
        return self.word_start[self.offsets[s]:self.offsets[s + 1]]


def continuation_tokens(tokenizer) -> np.ndarray:
    """(vocab,) bool: whether each token continues a word (WordPiece `##x`; byte-level BPE and unigram
    pieces without a leading space marker `Ġ` / `▁`); what whole-word masking keeps together."""
    vocab = tokenizer.vocab_size
    continues = np.zeros(vocab, dtype=bool)
    marker = {"wordpiece": None, "bytelevel-bpe": "Ġ", "unigram": "▁"}
    if tokenizer.kind not in marker:
        return continues  # every token is a word of its own
    for token_id in range(vocab):
        token = tokenizer.id_to_token(token_id) or ""
        if tokenizer.kind == "wordpiece":
            continues[token_id] = token.startswith("##")
        else:
            continues[token_id] = not token.startswith(marker[tokenizer.kind])
    return continues


CACHE_FORMAT = "lmkit-sentences/1"  # bump when the way documents become a Corpus changes


def load_corpus(paths, tokenizer, text_field: str = "text") -> Corpus:
    """The tokenized documents of `paths`, from the cache beside the data when one matches.

    The cache (`.lmkit-cache/<key>.sentences.npz`, plain arrays, read without pickle) is keyed by
    the files' bytes and the tokenizer, as lmkit.data keys its token streams.
    """
    from .artifacts import atomic_write
    from .data import (
        _cache_directory,
        _content_key,
        find_data_files,
        removed_if_left_empty,
        tokenizer_fingerprint,
    )

    paths = [paths] if isinstance(paths, str) else list(paths)
    files = find_data_files(paths)
    key = _content_key(files, text_field, f"{tokenizer_fingerprint(tokenizer)}\0{CACHE_FORMAT}")
    path = os.path.join(_cache_directory(paths[0]), f"{key}.sentences.npz")
    try:
        with np.load(path, allow_pickle=False) as cached:
            return Corpus(**{name: cached[name] for name in ("tokens", "word_start", "offsets", "doc_starts")})
    except (OSError, ValueError, KeyError):
        pass  # none yet, or cut short: tokenize again
    with removed_if_left_empty(os.path.dirname(path)):
        corpus = tokenize_documents(read_documents(paths, text_field), tokenizer)
        with atomic_write(path, "wb") as out:
            np.savez(out, **dataclasses.asdict(corpus))
    return corpus


def split_documents(corpus: Corpus, first: int, last: int) -> Corpus:
    """Documents first, ..., last - 1 of a corpus, as a corpus of their own."""
    s0, s1 = corpus.doc_starts[first], corpus.doc_starts[last]
    t0, t1 = corpus.offsets[s0], corpus.offsets[s1]
    return Corpus(corpus.tokens[t0:t1], corpus.word_start[t0:t1], corpus.offsets[s0:s1 + 1] - t0,
                  corpus.doc_starts[first:last + 1] - s0)


def tokenize_documents(documents: list[list[str]], tokenizer) -> Corpus:
    sentences = [sentence for document in documents for sentence in document]
    encoded = tokenizer.encode_batch(sentences) if sentences else []
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    tokens = np.fromiter((t for ids in encoded for t in ids), dtype=np.int64, count=int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    word_start = ~continuation_tokens(tokenizer)[tokens]
    word_start[offsets[:-1][lengths > 0]] = True  # a sentence starts a word
    doc_starts = np.concatenate([[0], np.cumsum([len(document) for document in documents], dtype=np.int64)])
    return Corpus(tokens, word_start, offsets, doc_starts)
