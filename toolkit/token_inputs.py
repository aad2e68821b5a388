"""Per-token inputs computed from what each token spells: open vocabulary on a stack's input side.

A word-level tokenizer turns every word outside its vocabulary into the unknown token, and token
ids are all the rest of lmkit passes between its parts. A stack that reads characters (ELMo's char
CNN, Peters et al. 2018 §3) should see the characters of the word itself, not those of `<unk>`.
Such a stack says so with `token_inputs(tokenizer)` (lmkit.nn.stack): a small table, e.g.

    {"type": "char-ids", "max_characters_per_token": 50, "bos": "<s>", "eos": "</s>", "pad": "<pad>"}

and every place that turns text into a batch (lmkit embed, lmkit finetune and predict, on a model
directory or an export, whose manifest keeps the table under dimensions.token_inputs) spells each
token (`spell`) and adds the arrays `batch_inputs` makes beside input_ids, under the names the
kind gives (char-ids: "char_ids", (B, T, max_characters_per_token) int64). The stack reads them as
keyword arguments of forward()/features(); without them it falls back to what its ids give.
Training and `lmkit eval --data` read windows of the cached token stream, whose unknown tokens
keep what they spell beside it (lmkit.data.Spellings); `window_inputs` gives their arrays.

Torch-free (numpy): an export's runtime computes the same arrays from text.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import ArtifactError


def _char_ids(config: dict, rows: Sequence[Sequence[str | None]], width: int) -> dict[str, np.ndarray]:
    from .nn.char_ids import vocabulary_char_ids

    size = int(config["max_characters_per_token"])
    out = np.zeros((len(rows), width, size), dtype=np.int64)
    for b, row in enumerate(rows):
        if row:
            out[b, :len(row)] = vocabulary_char_ids(list(row), size, bos=config.get("bos"), eos=config.get("eos"),
                                                    pad=config.get("pad"))
    return {"char_ids": out}


# The kinds of per-token inputs, each a function (config, spelled rows, width) -> arrays by name. They are
# shared blocks of the core (a new kind goes here): a manifest names one, and no manifest names code to run.
KINDS = {"char-ids": _char_ids}
NAMES = ("char_ids",)  # every name a kind gives: the batch keys that travel beside input_ids


def check(config: dict | None, where: str) -> dict | None:
    """config, or ArtifactError when it names a kind this lmkit does not have."""
    if config is not None and config.get("type") not in KINDS:
        raise ArtifactError(f"{where} asks for per-token inputs of kind {config.get('type')!r}, which this lmkit does "
                            f"not compute (it has: {', '.join(KINDS)}); upgrade lmkit")
    return config


def spell(tokenizer, encoding, segments: Sequence[str], *, pretokenized: bool = False) -> list[str]:
    """Each token of a Hugging Face `encoding` as the text it stands for: its own string, except the unknown
    token, which becomes the (normalised) piece of text it replaced.

    segments: what was encoded, indexed as the encoding indexes it: the text (one, or a pair: by
    sequence id), or with pretokenized=True the words (by word id). Special tokens a template adds
    keep their strings.
    """
    unk = tokenizer.special_tokens.get("unk")
    tokens = list(encoding.tokens)
    if unk is None or unk not in tokens:
        return tokens
    normalizer = tokenizer.hf_tokenizer.normalizer
    # Each of an Encoding's attributes builds a new list when read: read them once, not per token (a training
    # file's segment has tens of thousands).
    special, offsets = encoding.special_tokens_mask, encoding.offsets
    indices = encoding.word_ids if pretokenized else encoding.sequence_ids
    for i, token in enumerate(tokens):
        if token != unk or special[i]:
            continue
        index = indices[i]
        start, end = offsets[i]
        piece = segments[index][start:end]
        tokens[i] = normalizer.normalize_str(piece) if normalizer is not None and piece else piece or unk
    return tokens


def batch_inputs(config: dict | None, rows: Sequence[Sequence[str | None]], width: int) -> dict[str, np.ndarray]:
    """The per-token arrays of right-padded rows of spellings (one list per row, padded to `width` with
    nothing); {} when config is None (the stack reads ids alone)."""
    if config is None:
        return {}
    return KINDS[config["type"]](config, rows, width)


def window_inputs(config: dict | None, tokenizer, tokens: np.ndarray, spellings, starts: np.ndarray,
                  width: int) -> dict[str, np.ndarray]:
    """The per-token arrays (len(starts), width, ...) of the windows tokens[start:start + width] of a token
    stream: each token spelled as its vocabulary string, an unknown one as the text it replaced
    (spellings: lmkit.data.Spellings of the same stream; None: as <unk>). {} when config is None.

    Each distinct spelling of the batch is computed once, then gathered: the cost is per batch, not per
    token of the data.
    """
    if config is None:
        return {}
    starts = np.asarray(starts, dtype=np.int64)
    codes = np.asarray(tokens[starts[:, None] + np.arange(width)], dtype=np.int64)
    vocab = tokenizer.vocab_size
    if spellings is not None and len(spellings.positions):
        # An unknown token's code is vocab + its word in the table, so the unique codes are the unique spellings.
        lo, hi = np.searchsorted(spellings.positions, starts), np.searchsorted(spellings.positions, starts + width)
        for row in np.flatnonzero(hi > lo):
            codes[row, spellings.positions[lo[row]:hi[row]] - starts[row]] = vocab + spellings.words[lo[row]:hi[row]]
    unique, inverse = np.unique(codes, return_inverse=True)
    words = [tokenizer.id_to_token(int(code)) if code < vocab else spellings.table[code - vocab] for code in unique]
    arrays = batch_inputs(config, [words], len(words))
    return {name: value[0][inverse.reshape(codes.shape)] for name, value in arrays.items()}
