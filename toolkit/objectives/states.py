"""The stack's output for a batch, computed once for every objective that reads it.

Objectives trained on the same batch often need the same forward pass of the model's stack:
masked LM and next-sentence prediction, a task head and GPT's auxiliary LM loss. The first to ask
runs it and keeps the result in the batch, under a key that is not data; the trainer makes a new
batch dictionary for every forward pass, so nothing outlives its step.
"""
from __future__ import annotations

from torch import Tensor

from ..contract import EncoderOutput

STATES = "_stack_output"


def stack_output(model, batch: dict, recipe=None) -> EncoderOutput:
    """The output of the stack the task recipe reads (lmkit.contract.TaskRecipe.run; None: the encoder) for
    every sequence of the batch, input_ids (..., T) read as N = prod(...) rows; attention_mask and
    token_type_ids alike, and per-token inputs (..., T, ...) the batch has (lmkit.token_inputs), passed by name.
    """
    from ..token_inputs import NAMES
    if STATES not in batch:
        T = batch["input_ids"].size(-1)

        def rows(name: str):
            value = batch.get(name)
            return None if value is None else value.reshape(-1, T)

        lead = batch["input_ids"].dim()
        inputs = {name: batch[name].reshape(-1, T, *batch[name].shape[lead:]) for name in NAMES if name in batch}
        run = recipe.run if recipe is not None else _run_encoder
        batch[STATES] = run(model, rows("input_ids"), rows("attention_mask"), rows("token_type_ids"), **inputs)
    return batch[STATES]


def _run_encoder(model, input_ids, attention_mask, token_type_ids, **inputs) -> EncoderOutput:
    return model.encoder(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **inputs)


def decoder_states_if_computed(model, batch: dict) -> Tensor | None:
    """The decoder's states (N, T, D) of the batch when an objective already ran it (a decoder-only model), else None."""
    if model.encoder is not None or STATES not in batch:
        return None
    return batch[STATES].last_hidden_state
