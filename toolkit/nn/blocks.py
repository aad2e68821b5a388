"""The feed-forward network and the transformer block shared by the GPT, BERT and T5 families."""
from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from .attention import SelfAttention
from .cache import KVCache
from .dropout import Dropout

Activation = Literal["gelu-tanh", "gelu", "relu"]


def activation_module(name: Activation) -> nn.Module:
    """gelu-tanh: GPT-2's approximation (HF `gelu_new`); gelu: exact (BERT); relu: T5."""
    if name == "gelu-tanh":
        return nn.GELU(approximate="tanh")
    if name == "gelu":
        return nn.GELU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; allowed: 'gelu-tanh', 'gelu', 'relu'")


class MLP(nn.Module):
    """Position-wise feed-forward network: widen to d_ff, activation, project back."""

    def __init__(self, d_model: int, d_ff: int, *, activation: Activation = "gelu-tanh", bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.c_fc = nn.Linear(d_model, d_ff, bias=bias)
        self.act = activation_module(activation)
        self.c_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Self-attention and MLP, each with a residual connection and a LayerNorm.

    pre_ln=True (GPT-2): x + f(LN(x)), which keeps an unnormalised residual path through the stack
    and so needs a final LayerNorm after the last block. pre_ln=False (GPT, BERT): LN(x + f(x)).
    """

    def __init__(self, d_model: int, n_heads: int, *, causal: bool, pre_ln: bool = True,
                 d_ff: int | None = None, activation: Activation = "gelu-tanh", bias: bool = True,
                 dropout: float = 0.0, layer_norm_eps: float = 1e-5, attention: nn.Module | None = None):
        super().__init__()
        self.pre_ln = pre_ln
        self.ln_1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        # `attention` replaces the dense self-attention, e.g. with the banded one of GPT-3's sparse
        # layers; it takes the same (x, mask, cache, layer) arguments.
        self.attn = attention or SelfAttention(d_model, n_heads, causal=causal, bias=bias, dropout=dropout)
        self.ln_2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.mlp = MLP(d_model, d_ff or 4 * d_model, activation=activation, bias=bias, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> Tensor:
        """x: (B, T, C) -> (B, T, C); mask, cache and layer are passed on to the attention."""
        if self.pre_ln:
            x = x + self.attn(self.ln_1(x), mask, cache, layer)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, mask, cache, layer))
        return self.ln_2(x + self.mlp(x))
