"""The Backend protocol: what a decoding strategy needs from a model.

This is the contract between the strategies (greedy, beam search, sampling) and whatever runs the
model: `TorchBackend` over a PyTorch decoder, and the onnxruntime session of an export. Everything
crosses it as numpy arrays on the host, and nothing but next-token logits comes back, so a backend
keeps its key/value cache (and attention mask) on its device and moves only the logits per step.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """A model that extends a batch of sequences one token at a time, keeping its own cache.

    max_length: the most positions the model reads (its context), padding included; None when it
        has no limit (recurrent decoders).

    prefill(input_ids, attention_mask, position_ids=None, position_step=None) -> logits
        input_ids: int64 (B, T), prompts left-padded to a common length T.
        attention_mask: bool (B, T), False at padding. Rows start at position 0 at their first real
            token, whatever the padding before it.
        position_ids: int64 (B, T) or (B, K, T), positions the model supplies (lmkit.decoding.common.
            Positions: GLM's pos1 and pos2), in place of those counted from the mask; each new token
            then sits at the previous token's position plus position_step, int64 (K,) (default 1).
        Starts a new cache for the B rows and returns float32 (B, V): the next-token logits at the
        last position of every row.

    step(tokens, rows=None) -> logits
        tokens: int64 (B',), one new token per output row.
        rows: int64 (B',) or None. Output row i continues what was row rows[i] before this call:
            the backend first reorders its cache and attention mask by `rows` (beam search keeping
            its best beams, B prompts expanding into B * num_beams beams, finished rows dropped),
            then feeds `tokens`. None keeps the rows as they are.
        Returns float32 (B', V): the next-token logits after each row's new token.
        Rows get their own room (strategies' new_token_rooms): a short prompt batched with a long one
        may run on after the long one ended, until its own tokens fill the context though the padded
        width would not fit. A backend with a max_length then drops the leading columns that are
        padding in every row left (it recomputes its cache over the rest), so it never reads more
        than max_length positions, and each row's positions stay those it has alone.

    merge(input_ids, attention_mask) -> logits
        input_ids: int64 (B', T'), new prompts left-padded to a common length T'; attention_mask: bool
            (B', T'), False at padding.
        Adds B' rows after the B running ones without computing those again: the new prompts are
        prefilled in a cache of their own, which then joins the running cache (lmkit.contract.Cache.
        merge), each row's positions ending in the same last column. Returns float32 (B', V), the
        next-token logits of the new rows; the next step() takes B + B' tokens, the new rows last.
        The rows' tokens are those each would have alone, as with a prefill of all of them together.
        Without running rows it is a prefill. It is how a server's continuous batch takes requests
        that arrive while others are decoding (lmkit.serving.engine); the decoding strategies never
        call it. Raises ValueError for a batch prefilled with the model's own position_ids. Decoder-only
        backends have it; an encoder-decoder's (whose rows carry their sources) has not.

    All three return arrays of their own, which the strategies may change in place.
    """

    max_length: int | None

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray | None = None,
                position_step: np.ndarray | None = None) -> np.ndarray: ...

    def step(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray: ...

    def merge(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...
