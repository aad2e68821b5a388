"""A learned scalar mix of a stack's layers (Peters et al. 2018 eq. 1; allennlp modules/scalar_mix.py).

    mix = gamma * sum_j softmax(w)_j * h_j      (optionally each h_j layer-normalised over its real tokens)

w = 0 and gamma = 1 at initialisation: the plain average of the layers.
"""
from __future__ import annotations

import torch
from torch import nn


class ScalarMix(nn.Module):
    """layers: n tensors (B, T, D) -> (B, T, D). mask (B, T), 1 at real tokens, for the layer norm's statistics."""

    def __init__(self, n_layers: int, layer_norm: bool = False):
        super().__init__()
        self.n_layers, self.layer_norm = n_layers, layer_norm
        self.scalar_parameters = nn.Parameter(torch.zeros(n_layers))
        self.gamma = nn.Parameter(torch.ones(1))

    def weights(self) -> torch.Tensor:
        """softmax(w), (n_layers,)."""
        return torch.softmax(self.scalar_parameters, dim=0)

    def forward(self, layers, mask: torch.Tensor | None = None) -> torch.Tensor:
        if len(layers) != self.n_layers:
            raise ValueError(f"the mix was built for {self.n_layers} layers, got {len(layers)}")
        weights = self.weights()
        if self.layer_norm:
            layers = [_masked_layer_norm(h, mask) for h in layers]
        return self.gamma * sum(w * h for w, h in zip(weights, layers))


def _masked_layer_norm(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """h normalised by the mean and variance of all its real-token entries (allennlp's _do_layer_norm)."""
    if mask is None:
        mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
    m = mask[..., None].to(h.dtype)
    count = m.sum() * h.shape[-1]
    mean = (h * m).sum() / count
    variance = (((h - mean) * m) ** 2).sum() / count
    return (h - mean) / torch.sqrt(variance + 1e-12)
