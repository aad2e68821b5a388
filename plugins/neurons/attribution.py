"""Knowledge neurons (Dai et al. 2022, arXiv 2104.08696): which FFN units of a transformer hold a fact.

A "neuron" is one unit of a feed-forward layer's intermediate activation (after the activation
function: d_ff per layer) at the position where the answer is read: the blank of a cloze prompt for
a masked LM (BERT, ALBERT, RoBERTa), the last prompt token for a causal LM (GPT), whose next token is
the answer. Its attribution is integrated gradients (Sundararajan et al. 2017) of the answer's
probability with respect to that activation, baseline 0, one layer at a time (the other layers keep
their real activations), as the reference code computes it (Hunter-DDM/knowledge-neurons,
1_analyze_mlm.py): a left Riemann sum over a = k/m, k = 0..m-1,

    Attr(w_i) = w_i / m · Σ_k ∂P(answer | w ← a_k·w) / ∂w_i .

Any stack built from lmkit.nn.MLP blocks has neurons; layers are numbered in the order the forward
pass runs them, so a stack that shares one block across layers (ALBERT) has one neuron layer per
application.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from lmkit.errors import LmkitError
from lmkit.nn.blocks import MLP


@dataclass(frozen=True)
class Query:
    """One prompt, ready for the model: input_ids (1, T), the position the answer is read at, its id."""

    input_ids: Tensor
    position: int
    answer_id: int


class NeuronAccess:
    """Read and overwrite the FFN activations of a model's feature stack during a forward pass.

    `edits` maps a layer index to a function (activation (B, T, d_ff)) -> activation; a forward pass
    with no edits records each layer's activation in `seen`.
    """

    def __init__(self, model):
        self.model = model
        self.stack = model.encoder if model.encoder is not None else model.decoder
        self.acts = [module.act for module in self.stack.modules() if isinstance(module, MLP)]
        if not self.acts:
            raise LmkitError(f"{type(self.stack).__name__} has no feed-forward (lmkit.nn.MLP) layers: knowledge neurons "
                             "are units of a transformer's FFN; use a BERT- or GPT-family model")
        self.edits: dict[int, callable] = {}
        self.seen: list[Tensor] = []
        self._calls = 0

    @contextmanager
    def attached(self) -> Iterator[NeuronAccess]:
        handles = [act.register_forward_hook(self._hook) for act in dict.fromkeys(self.acts)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, module, inputs, output: Tensor) -> Tensor | None:
        layer, self._calls = self._calls, self._calls + 1
        self.seen.append(output.detach())
        edit = self.edits.get(layer)
        return None if edit is None else edit(output)

    def answer_probability(self, input_ids: Tensor, position: int, answer_id: int) -> Tensor:
        """P(answer) at `position` for each row of input_ids (B, T): (B,). Resets the layer count."""
        self._calls, self.seen = 0, []
        model = self.model
        if model.encoder is not None:
            states = model.encoder(input_ids, torch.ones_like(input_ids)).last_hidden_state  # (B, T, H)
            logits = model.objectives["masked-lm"].logits(model, states[:, position])  # (B, V)
        else:
            logits = model.decoder(input_ids)[:, position]  # (B, V)
        return logits.float().softmax(-1)[:, answer_id]

    @property
    def n_layers(self) -> int:
        return self._calls


def layer_attribution(access: NeuronAccess, query: Query, layer: int, steps: int = 20) -> Tensor:
    """Integrated gradients of P(answer) for every neuron of one layer at the query's position: (d_ff,).

    The `steps` scaled copies a_k·w (a_k = k/steps) run as one batch; the gradient of each copy's
    probability with respect to its own scaled activation is summed and multiplied by w / steps.
    """
    with torch.no_grad():
        access.answer_probability(query.input_ids, query.position, query.answer_id)
    activation = access.seen[layer][0, query.position].float()  # (d_ff,)
    alphas = torch.arange(steps, dtype=torch.float32) / steps  # riemann_left: 0, 1/m, ..., (m-1)/m
    scaled = (alphas[:, None] * activation).requires_grad_()  # (m, d_ff)

    def replace(output: Tensor) -> Tensor:
        output = output.clone()
        output[:, query.position] = scaled.to(output.dtype)
        return output

    access.edits = {layer: replace}
    try:
        probability = access.answer_probability(query.input_ids.expand(steps, -1), query.position, query.answer_id)
        (gradient,) = torch.autograd.grad(probability.sum(), scaled)
    finally:
        access.edits = {}
    return activation * gradient.sum(0) / steps


def attributions(model, query: Query, steps: int = 20) -> Tensor:
    """Every layer's attributions for one query: (n_layers, d_ff), layers in forward order."""
    model.eval()
    access = NeuronAccess(model)
    with access.attached():
        with torch.no_grad():
            access.answer_probability(query.input_ids, query.position, query.answer_id)
        layers = access.n_layers
        return torch.stack([layer_attribution(access, query, layer, steps) for layer in range(layers)])


def shared_neurons(per_prompt: list[Tensor], threshold: float = 0.2, share: float = 0.7,
                   tries: int = 6, step: float = 0.05) -> tuple[list[tuple[int, int]], float]:
    """The knowledge neurons of one fact from its prompts' attributions (each (n_layers, d_ff)).

    Per prompt, the neurons whose attribution is at least `threshold` times that prompt's largest; then
    the neurons that at least `share` of the prompts keep. As the reference (2_get_kn.py) does, the
    share moves by `step` (up when more than 5 neurons remain, down when fewer than 2), at most `tries`
    times. Returns the neurons as (layer, index), sorted, and the share that chose them.
    """
    if not 0 < threshold <= 1 or not 0 < share <= 1:
        raise LmkitError(f"--threshold and --share must lie in (0, 1], got {threshold} and {share}")
    kept = [set(map(tuple, (a >= threshold * a.max()).nonzero().tolist())) for a in per_prompt]
    counts: dict[tuple[int, int], int] = {}
    for neurons in kept:
        for neuron in neurons:
            counts[neuron] = counts.get(neuron, 0) + 1

    def chosen(p: float) -> list[tuple[int, int]]:
        return sorted(n for n, c in counts.items() if c >= p * len(per_prompt) - 1e-9)

    neurons = chosen(share)
    for _ in range(tries if len(per_prompt) > 1 else 0):
        if len(neurons) > 5 and share + step <= 1 + 1e-9:
            share += step
        elif len(neurons) < 2 and share - step > 0:
            share -= step
        else:
            break
        neurons = chosen(share)
    return neurons, round(share, 4)


def probability_with(model, query: Query, neurons: list[tuple[int, int]], factor: float) -> float:
    """P(answer) with the given neurons' activations at the query's position multiplied by `factor`
    (0: suppressed, 2: amplified, as the paper edits them)."""
    model.eval()
    access = NeuronAccess(model)
    by_layer: dict[int, list[int]] = {}
    for layer, index in neurons:
        by_layer.setdefault(layer, []).append(index)

    def scale(indices: list[int]):
        def edit(output: Tensor) -> Tensor:
            output = output.clone()
            output[:, query.position, indices] *= factor
            return output
        return edit

    access.edits = {layer: scale(indices) for layer, indices in by_layer.items()}
    with access.attached(), torch.no_grad():
        return access.answer_probability(query.input_ids, query.position, query.answer_id).item()
