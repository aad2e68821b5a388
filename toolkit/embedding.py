"""Sentence and token vectors from any model, on either backend: token ids, batches, pooling, in numpy.

Written once over a features function (lmkit.opening.OpenedModel.features: the PyTorch feature
stack, or an export's encoder graph), so a model directory and its export embed the same way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .errors import LmkitError

POOLINGS = ("mean", "cls", "last", "none")


def token_ids(tokenizer, texts: Sequence[str], max_length: int | None = None, spellings: list | None = None
              ) -> list[list[int]]:
    """Each text's token ids with the tokenizer's special tokens, cut to max_length.

    A cut text keeps its closing separator ([SEP], </s>), as the encoder saw in training.
    spellings: a list to fill with each text's tokens as lmkit.token_inputs.spell gives them, cut alike.
    """
    encodings = [tokenizer.hf_tokenizer.encode(text, add_special_tokens=True) for text in texts]
    ids = [list(encoding.ids) for encoding in encodings]
    if spellings is not None:
        from .token_inputs import spell

        spellings.extend(spell(tokenizer, encoding, [text]) for encoding, text in zip(encodings, texts))
    if max_length is None:
        return ids
    sep = tokenizer.sep_id
    keep = [len(row) if len(row) <= max_length else -1 if sep is not None and row[-1] == sep else max_length
            for row in ids]  # -1: the first max_length - 1 tokens, then the separator
    cut = lambda row, n: row if n == len(row) else row[:max_length - 1] + row[-1:] if n < 0 else row[:n]  # noqa: E731
    if spellings is not None:
        spellings[-len(ids):] = [cut(row, n) for row, n in zip(spellings[-len(ids):], keep)]
    return [cut(row, n) for row, n in zip(ids, keep)]


def pool(states: np.ndarray, mask: np.ndarray, how: str, pooled: np.ndarray | None = None) -> np.ndarray | None:
    """One vector per row, (B, D), from token states (B, T, D) and their mask (B, T), 1 at real tokens.

    mean: the average over real tokens (sentence vectors of encoders and decoders alike);
    cls: the stack's own pooled output (BERT's pooler), else the first token's state;
    last: the last real token's state, the one that has read the whole text in a left-to-right model.
    """
    if how == "none":
        return None
    if how == "mean":
        weights = mask.astype(states.dtype)[:, :, None]
        return (states * weights).sum(1) / np.maximum(weights.sum(1), 1)
    if how == "cls":
        return pooled if pooled is not None else states[:, 0]
    if how == "last":
        return states[np.arange(len(states)), mask.sum(1) - 1]  # right padding: the last real token
    raise LmkitError(f"unknown pooling {how!r}; allowed: {', '.join(POOLINGS)}")


def embed_texts(features: Callable[..., dict], tokenizer, texts: Sequence[str], *, pooling: str = "mean",
                batch_size: int = 32, max_length: int | None = None, progress: bool = False,
                options: dict | None = None, token_inputs: dict | None = None):
    """(pooled (N, D) or None, token states per text: a list of (T_i, D) arrays, token ids per text).

    features: (input_ids int64 (B, T), attention_mask bool (B, T), **options) -> {"last_hidden_state",
    "pooler_output"}, numpy, as lmkit.opening.OpenedModel.features gives. options: the stack's
    features() options (CoVe: word_vectors). token_inputs: the stack's per-token inputs
    (lmkit.token_inputs), computed from each token's spelling and passed to features() by name.
    """
    from tqdm import tqdm

    from .token_inputs import batch_inputs

    if pooling not in POOLINGS:
        raise LmkitError(f"unknown pooling {pooling!r}; allowed: {', '.join(POOLINGS)}")
    spellings = [] if token_inputs is not None else None
    ids = token_ids(tokenizer, texts, max_length, spellings)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    pooled, token_states = [], []
    for start in tqdm(range(0, len(ids), batch_size), desc="embed", unit="batch", disable=not progress or None):
        rows = ids[start:start + batch_size]
        width = max(len(row) for row in rows)
        input_ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.bool_)
        for i, row in enumerate(rows):
            input_ids[i, :len(row)] = row
            mask[i, :len(row)] = True
        extra = batch_inputs(token_inputs, spellings[start:start + batch_size], width) if spellings else {}
        outputs = features(input_ids, mask, **(options or {}), **extra)
        states = np.asarray(outputs["last_hidden_state"], dtype=np.float32)
        vectors = pool(states, mask, pooling, outputs.get("pooler_output"))
        if vectors is not None:
            pooled.append(np.asarray(vectors, dtype=np.float32))
        token_states.extend(states[i, :len(row)] for i, row in enumerate(rows))
    return (np.concatenate(pooled) if pooled else None), token_states, ids
