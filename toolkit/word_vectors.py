"""Word vectors in GloVe's text format ("word v_1 ... v_G" per line), as a table over a tokenizer's ids.

Downstream models of CoVe (McCann et al. 2017) read [GloVe(w); CoVe(w)]; any encoder whose
features put word vectors before its states can take such a table (see `lmkit embed --vectors`).
"""
from __future__ import annotations

import os

import numpy as np

from .errors import DataError


def token_words(tokenizer) -> list[str]:
    """The word each token id stands for: its string without subword markers (</w>, ##, Ġ, ▁)."""
    words = []
    for index in range(tokenizer.vocab_size):
        token = tokenizer.hf_tokenizer.id_to_token(index) or ""
        for marker in ("</w>",):
            token = token.removesuffix(marker)
        for marker in ("##", "\u0120", "\u2581"):
            token = token.removeprefix(marker)
        words.append(token)
    return words


def load_word_vectors(path: str, tokenizer) -> np.ndarray:
    """float32 (V, G): the GloVe vector of each token's word, zeros for words the file lacks."""
    if not os.path.isfile(path):
        raise DataError(f"{path} is not a file; give word vectors in GloVe's text format (word v1 ... vN per line)")
    wanted: dict[str, list[int]] = {}
    for index, word in enumerate(token_words(tokenizer)):
        wanted.setdefault(word, []).append(index)
        if word.lower() != word:  # a cased token also takes the vector of its lowercase word
            wanted.setdefault(word.lower(), []).append(index)
    matrix, dim = None, None
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.rstrip("\r\n").split(" ")
            if len(parts) < 2:
                raise DataError(f"{path} line {number} holds no vector; each line is a word and its numbers")
            if dim is None:
                dim = len(parts) - 1
                matrix = np.zeros((tokenizer.vocab_size, dim), dtype=np.float32)
            elif len(parts) - 1 != dim:
                raise DataError(f"{path} line {number} has {len(parts) - 1} numbers but line 1 has {dim}; every "
                                "vector must have the same dimension")
            rows = wanted.get(parts[0])
            if rows:
                try:
                    matrix[rows] = np.asarray(parts[1:], dtype=np.float32)
                except ValueError:
                    raise DataError(f"{path} line {number}: the vector of {parts[0]!r} is not all numbers") from None
    if matrix is None:
        raise DataError(f"{path} is empty; give word vectors in GloVe's text format")
    return matrix
