"""Multi-head self-attention over torch's fused scaled_dot_product_attention (SDPA).

Masks are boolean, True where a query may attend a key, broadcastable to (B, nh, T, S) with S
the number of keys (cached + new). The mask is built once per forward pass by `self_attention_mask`
and shared by every layer; when it would say nothing SDPA cannot say itself it is None, which
lets SDPA pick its fastest (flash) kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import KVCache
from .dropout import Dropout


def self_attention_mask(padding: Tensor | None, T: int, past: int, *, causal: bool,
                        device: torch.device | None = None) -> Tensor | None:
    """The mask for T new queries after `past` cached positions, or None when SDPA needs none.

    padding: (B, past + T) bool, True for real tokens and False for padding, or None.
    None is returned without padding when the queries see every key (bidirectional, or a single
    new token), or when SDPA's own is_causal is right (no past: its diagonal is top-left aligned,
    so with past > 0 and T > 1 the mask has to be explicit: query i sees keys <= past + i).
    """
    if padding is None and (not causal or past == 0 or T == 1):
        return None
    S = past + T
    if padding is not None and padding.size(1) != S:
        raise ValueError(f"attention_mask covers {padding.size(1)} positions but there are {S} "
                         f"({past} cached + {T} new); pass the mask of the whole sequence so far")
    if padding is not None:
        device = padding.device
    keep = None if padding is None else padding[:, None, None, :].bool()  # (B, 1, 1, S)
    if not causal:
        return keep
    query = torch.arange(past, S, device=device)[:, None]  # (T, 1) absolute positions
    key = torch.arange(S, device=device)  # (S,)
    allowed = key <= query  # (T, S)
    if keep is not None:
        # A left-padded query would see no key at all, and SDPA returns NaN for such a row, which
        # then spreads through the values of later layers. Letting every query see itself keeps
        # the padded rows finite; real tokens still never see padding.
        allowed = (allowed & keep) | (key == query)  # (B, 1, T, S)
    return allowed


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection (GPT-2 names: c_attn, c_proj)."""

    def __init__(self, d_model: int, n_heads: int, *, causal: bool, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.d_model = d_model
        self.causal = causal
        self.dropout = dropout
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_dropout = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> Tensor:
        """x: (B, T, C); mask from `self_attention_mask`; `layer` is this layer's slot in `cache`."""
        T = x.size(1)
        q, k, v = self.heads(x)  # 3 x (B, nh, T, hs)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)  # (B, nh, past + T, hs)
        if mask is None and self.causal and past > 0 and T > 1:
            mask = self_attention_mask(None, T, past, causal=True, device=x.device)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and mask is None and T > 1,
        )  # (B, nh, T, hs)
        return self.output(y)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of x (B, T, C), split into heads: 3 x (B, nh, T, hs)."""
        B, T, C = x.shape
        # One view and one permute for all three (3 ops where split, views and transposes took 7: a
        # decoding step is short enough for that to show).
        qkv = self.c_attn(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)  # (3, B, nh, T, hs) -> 3 x (B, nh, T, hs)

    def output(self, y: Tensor) -> Tensor:
        """The heads' outputs (B, nh, T, hs) side by side again, projected back: (B, T, C)."""
        B, nh, T, hs = y.shape
        y = y.transpose(1, 2).reshape(B, T, nh * hs)
        return self.resid_dropout(self.c_proj(y))
