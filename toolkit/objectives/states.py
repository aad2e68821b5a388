"""The hidden states of a batch, computed once for every objective that reads them.

Objectives trained on the same batch often need the same forward pass of the model's stack:
masked LM and next-sentence prediction, a task head and GPT's auxiliary LM loss. The first to ask
runs it and keeps the result in the batch, under a key that is not data; the trainer makes a new
batch dictionary for every forward pass, so nothing outlives its step.
"""
from __future__ import annotations

from torch import Tensor

STATES = "_stack_states"


def stack_states(model, batch: dict) -> Tensor:
    """(N, T, H): the final hidden states of the encoder (or else the decoder) for every sequence of the
    batch, input_ids (..., T) read as N = prod(...) rows; attention_mask and token_type_ids alike.
    """
    if STATES not in batch:
        T = batch["input_ids"].size(-1)

        def rows(name: str):
            value = batch.get(name)
            return None if value is None else value.reshape(-1, T)

        if model.encoder is not None:
            states = model.encoder(rows("input_ids"), attention_mask=rows("attention_mask"),
                                   token_type_ids=rows("token_type_ids"))
        else:  # right padding comes after every real token, which causal attention keeps it from seeing
            states = model.decoder.hidden_states(rows("input_ids"))
        batch[STATES] = states
    return batch[STATES]


def decoder_states_if_computed(model, batch: dict) -> Tensor | None:
    """The decoder's states of the batch when an objective already ran it (a decoder-only model), else None."""
    return batch.get(STATES) if model.encoder is None else None
