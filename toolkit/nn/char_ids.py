"""Character ids of words as bilm-tf defines them (allenai/bilm-tf bilm/data.py, UnicodeCharsVocabulary).

Torch-free (numpy only): an export's runtime and a data pipeline use it without PyTorch.

Each word becomes `max_characters_per_token` ids: begin-of-word, the word's UTF-8 bytes (cut to
max_characters_per_token - 2, as the reference cuts them: not an error), end-of-word, then padding;
then +1 on every id, so 0 is left for a padded token (all zeros, the row char CNNs skip). The
sentence boundaries <S> and </S> are words of one special character each.
"""
from __future__ import annotations

import numpy as np

# bilm-tf's special characters, before the +1 shift: bytes are 0-255.
BOS_CHAR, EOS_CHAR, BOW_CHAR, EOW_CHAR, PAD_CHAR = 256, 257, 258, 259, 260
# Ids after the shift: 0 (padded token) .. 261; bilm-tf trained with 261 characters and its released
# options.json says 262 (the +1 shift), which is the embedding's row count either way here.
N_CHARACTERS = 262
MAX_CHARACTERS_PER_TOKEN = 50


def word_char_ids(word: str, max_characters_per_token: int = MAX_CHARACTERS_PER_TOKEN) -> np.ndarray:
    """(max_characters_per_token,) int64: the shifted char ids of one word (bilm-tf `_convert_word_to_char_ids`)."""
    if max_characters_per_token < 3:
        raise ValueError(f"max_characters_per_token must be at least 3 (begin, a byte, end), got "
                         f"{max_characters_per_token}")
    ids = np.full(max_characters_per_token, PAD_CHAR, dtype=np.int64)
    body = list(word.encode("utf-8", "ignore")[:max_characters_per_token - 2])
    ids[0] = BOW_CHAR
    ids[1:1 + len(body)] = body
    ids[1 + len(body)] = EOW_CHAR
    return ids + 1


def boundary_char_ids(char: int, max_characters_per_token: int = MAX_CHARACTERS_PER_TOKEN) -> np.ndarray:
    """The shifted char ids of <S> (char=BOS_CHAR) or </S> (EOS_CHAR): [begin-of-word, char, end-of-word, pad...]."""
    ids = np.full(max_characters_per_token, PAD_CHAR, dtype=np.int64)
    ids[:3] = (BOW_CHAR, char, EOW_CHAR)
    return ids + 1


def vocabulary_char_ids(tokens: list[str | None], max_characters_per_token: int = MAX_CHARACTERS_PER_TOKEN, *,
                        bos: str | None = None, eos: str | None = None, pad: str | None = None) -> np.ndarray:
    """(V, max_characters_per_token) int64: row i the char ids of token i of a vocabulary.

    The tokens named bos and eos get bilm-tf's <S> and </S> characters; pad (and a missing token,
    None) gets zeros, a padded token. Every other token is spelled by its bytes, "<unk>" included.
    """
    table = np.zeros((len(tokens), max_characters_per_token), dtype=np.int64)
    for i, token in enumerate(tokens):
        if token is None or token == pad:
            continue
        if token == bos:
            table[i] = boundary_char_ids(BOS_CHAR, max_characters_per_token)
        elif token == eos:
            table[i] = boundary_char_ids(EOS_CHAR, max_characters_per_token)
        else:
            table[i] = word_char_ids(token, max_characters_per_token)
    return table
