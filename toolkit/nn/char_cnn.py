"""The character-CNN token encoder of ELMo (Peters et al. 2018 §3.1; bilm-tf bilm/model.py, _build_word_char_embeddings).

Per token: a character embedding of its char ids (lmkit.nn.char_ids), one convolution per filter
width, max over positions then the activation, highway layers, and a linear projection. CVT's
token encoder (Clark et al. 2018) is the same CNN without highways and projection.

Equations as bilm-tf writes them (x @ W, TF layout):

    conv_k = max_t (conv1d(E[chars], W_cnn_k) + b_cnn_k)      # (N, n_k), then relu
    g = sigmoid(x @ W_carry + b_carry); y = g * relu(x @ W_transform + b_transform) + (1 - g) * x
    out = y @ W_proj + b_proj
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Highway(nn.Module):
    """Highway layers (Srivastava et al. 2015) in bilm-tf's form: the gate multiplies the transform.

    x (..., D) -> (..., D). `carry[k]` holds W_carry, b_carry and `transform[k]` W_transform, b_transform
    as nn.Linear (weight = W^T).
    """

    def __init__(self, size: int, n_layers: int):
        super().__init__()
        self.carry = nn.ModuleList(nn.Linear(size, size) for _ in range(n_layers))
        self.transform = nn.ModuleList(nn.Linear(size, size) for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for carry, transform in zip(self.carry, self.transform):
            gate = torch.sigmoid(carry(x))
            x = gate * F.relu(transform(x)) + (1 - gate) * x
        return x


class CharCNN(nn.Module):
    """Char ids (B, T, C) -> token vectors (B, T, d_out); a token of all-zero ids is padding (its vector is
    defined and meaningless).

    filters: ((width, channels), ...), bilm-tf's `char_cnn.filters`; activation relu or tanh
    (`char_cnn.activation`); n_highway 0 and d_out None leave those parts out.
    """

    def __init__(self, n_characters: int, d_char: int, filters: tuple[tuple[int, int], ...], n_highway: int,
                 d_out: int | None, activation: str = "relu"):
        super().__init__()
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be relu or tanh, got {activation!r}")
        self.activation = activation
        # Row 0 is a padding character: bilm-tf's table has no row for it, so it is zero and not learned.
        self.char_embedding = nn.Embedding(n_characters, d_char, padding_idx=0)
        self.convolutions = nn.ModuleList(nn.Conv1d(d_char, channels, width) for width, channels in filters)
        self.n_filters = sum(channels for _, channels in filters)
        self.highway = Highway(self.n_filters, n_highway)
        self.projection = nn.Linear(self.n_filters, d_out) if d_out is not None else None
        self.d_out = d_out if d_out is not None else self.n_filters

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        B, T, C = char_ids.shape
        x = self.char_embedding(char_ids.reshape(B * T, C)).transpose(1, 2)  # (BT, d_char, C)
        act = torch.relu if self.activation == "relu" else torch.tanh
        # Max over positions, then the activation (bilm-tf: reduce_max, then relu).
        pooled = [act(conv(x).max(dim=-1).values) for conv in self.convolutions]  # each (BT, n_k)
        tokens = self.highway(torch.cat(pooled, dim=-1))
        if self.projection is not None:
            tokens = self.projection(tokens)
        return tokens.view(B, T, self.d_out)
