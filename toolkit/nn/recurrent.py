"""Pieces of recurrent language models that carry a state (AWD-LSTM; any LSTM LM that generates).

`RecurrentCache` is the cache (lmkit.contract.Cache) of a recurrent decoder: the state tensors
themselves, each with the batch on axis 0, so beam search reorders it by rows and a stateful
decoder's training carries it from one BPTT window to the next (lmkit.objectives.causal_lm).
`lstm_layer` runs one LSTM layer on weights given as arguments (what functional weight drop needs),
and `masked_steps` runs a stack over left-padded columns so that padding never moves the state.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class RecurrentCache:
    """A recurrent decoder's state: `states`, a list of tensors (B, ...), and the positions read so far."""

    def __init__(self, states: list[Tensor]):
        self.states = states
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.states[0].size(0)

    def reorder(self, rows: Tensor) -> None:
        """Keep rows `rows` (B',), in that order (beam search; any B')."""
        rows = rows.to(self.states[0].device)
        self.states = [state.index_select(0, rows) for state in self.states]

    def merge(self, other: RecurrentCache, max_len: int | None = None) -> RecurrentCache:
        """This cache's rows, then `other`'s (lmkit.contract.Cache.merge): a state has no positions to align."""
        merged = RecurrentCache([torch.cat([a, b], dim=0) for a, b in zip(self.states, other.states)])
        merged.length = max(self.length, other.length)
        return merged


def lstm_layer(x: Tensor, state: tuple[Tensor, Tensor] | None, weights: list[Tensor]
               ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One unidirectional LSTM layer over x (B, T, I) with the weights [w_ih, w_hh, b_ih, b_hh] given.

    state: (h, c) each (B, H), or None for zeros. Returns outputs (B, T, H) and the final (h, c), (B, H).
    It is nn.LSTM's own kernel (cuDNN on a GPU, the ONNX LSTM op in an export), called with the
    weights as arguments: that is what lets lmkit.nn.dropout.weight_drop pass a dropped matrix
    without rewriting the module's parameters.
    """
    B, H = x.size(0), weights[1].size(1)
    if state is None:
        h0 = c0 = x.new_zeros(1, B, H)
    else:
        h0, c0 = state[0][None], state[1][None]
    # has_biases, num_layers, dropout, train, bidirectional, batch_first
    out, h, c = torch.lstm(x, (h0, c0), weights, True, 1, 0.0, False, False, True)
    return out, (h[0], c[0])


def masked_steps(run: Callable[[Tensor, list[Tensor]], tuple[Tensor, list[Tensor]]], x: Tensor,
                 states: list[Tensor], mask: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Run a recurrent stack over x (B, T, ...) where mask (B, T) is False at padding: a row's state
    stays as it was over its padded positions, so a left-padded prompt reads as the prompt alone.

    run(x, states) -> (outputs, states) runs the stack over some columns. The columns up to the last
    one with any padding go one at a time, the rest in one call. Outputs at padding are zeros.
    """
    padded = (~mask.bool()).any(0).nonzero()
    split = int(padded[-1]) + 1 if len(padded) else 0
    outputs = []
    for t in range(split):
        out, new = run(x[:, t:t + 1], states)
        keep = mask[:, t].bool()
        states = [torch.where(keep.view(-1, *[1] * (n.dim() - 1)), n, s) for n, s in zip(new, states)]
        outputs.append(out * keep.view(-1, 1, *[1] * (out.dim() - 2)).to(out.dtype))
    if split < x.size(1):
        out, states = run(x[:, split:], states)
        outputs.append(out)
    return torch.cat(outputs, dim=1), states
