"""Pre-norm transformer blocks for encoder-decoder stacks: attention with separate projections that
also serves as cross-attention, the feed-forward variants, and encoder and decoder blocks.

The decoder block has three sub-layers (causal self-attention, cross-attention over the encoder's
states, feed-forward), each x + dropout(f(norm(x))) (Vaswani et al. 2017 §3.1, pre-norm as in T5).
Attention biases are additive float tensors broadcastable to (B, nh, T, S): a relative position
bias plus the masks (a large negative number where a query may not look), so one tensor says
everything and SDPA runs with it. The scale is an option: T5 folds 1/sqrt(d_kv) into its
initialisation and attends unscaled (scale=1.0).

Names follow transformers' T5 (q, k, v, o, wi, wo) so checkpoints map one to one.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import Dropout
from .norms import RMSNorm

FeedForwardKind = Literal["relu", "gated-gelu"]
FEED_FORWARDS = ("relu", "gated-gelu")


def clamp_half(x: Tensor) -> Tensor:
    """In float16, keep x inside the range so that a norm after it does not turn inf into NaN.

    T5 was trained in bf16; in fp16 its feed-forward outputs overflow (transformers#4287, #9295). This is
    transformers' T5Block clamp: to the largest finite value, less 1000 once something overflowed.
    Other dtypes pass unchanged.
    """
    if x.dtype != torch.float16:
        return x
    big = torch.finfo(torch.float16).max
    limit = torch.where(torch.isinf(x).any(), big - 1000, big)
    return torch.clamp(x, min=-limit, max=limit)


def exporting() -> bool:
    """True while torch.onnx or torch.export traces the model: paths that write in place step aside."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """0 where `allowed` (bool), the dtype's most negative number elsewhere (not -inf: a row with no key
    allowed then stays finite, as transformers' masks do)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q, k, v, o projections; self- or cross-attention.

    d_kv: the width of each head (T5: 64 at every size, so n_heads x d_kv need not equal d_model).
    d_memory: the width of what keys and values are read from (the encoder's states for
    cross-attention); default d_model. scale: multiplies q.k (None: 1/sqrt(d_kv); T5: 1.0).
    """

    def __init__(self, d_model: int, n_heads: int, d_kv: int, *, d_memory: int | None = None, bias: bool = False,
                 scale: float | None = None, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.d_kv, self.scale, self.dropout = n_heads, d_kv, scale, dropout
        inner = n_heads * d_kv
        self.q = nn.Linear(d_model, inner, bias=bias)
        self.k = nn.Linear(d_memory or d_model, inner, bias=bias)
        self.v = nn.Linear(d_memory or d_model, inner, bias=bias)
        self.o = nn.Linear(inner, d_model, bias=bias)

    def split(self, x: Tensor) -> Tensor:
        """(B, T, nh * hs) -> (B, nh, T, hs)."""
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_kv).transpose(1, 2)

    def key_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of memory (B, S, d_memory), split into heads: 2 x (B, nh, S, hs). Cross-attention
        computes them once per source and passes them to every step."""
        return self.split(self.k(memory)), self.split(self.v(memory))

    def forward(self, x: Tensor, bias: Tensor | None = None, past: tuple[Tensor, Tensor] | None = None,
                key_values: tuple[Tensor, Tensor] | None = None,
                cache_position: int | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, d_model) -> (output (B, T, d_model), (keys, values) (B, nh, S, hs)).

        bias: additive, broadcastable to (B, nh, T, S). past: self-attention's cached keys and values,
        (B, nh, P, hs) each, to which x's are appended (S = P + T); the returned pair is the cache after
        x. With cache_position=P, past is instead (B, nh, P + T, hs) each, its first P positions filled
        (lmkit.nn.cache.grow), and x's are written at P.. in place. key_values: cross-attention's, from
        `key_values(memory)`; x's are not used.
        """
        q = self.split(self.q(x))
        if key_values is not None:
            k, v = key_values
        else:
            k, v = self.key_values(x)
            if past is not None and cache_position is not None:
                past[0][:, :, cache_position:] = k
                past[1][:, :, cache_position:] = v
                k, v = past
            elif past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        bias = None if bias is None else bias.to(q.dtype)
        if exporting():
            # Written out for the exporter: its decomposition of SDPA with a float mask gives the output strides
            # that a later view cannot read under symbolic shapes (torch 2.13). Same numbers.
            scale = self.d_kv ** -0.5 if self.scale is None else self.scale
            scores = (q @ k.transpose(-1, -2)) * scale + (0 if bias is None else bias)
            y = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0,
                                               scale=self.scale)  # (B, nh, T, hs)
        B, _, T, _ = y.shape
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_heads * self.d_kv)), (k, v)


class FeedForward(nn.Module):
    """relu: wo(dropout(relu(wi x))) (T5 v1.0, Vaswani et al.); gated-gelu: wo(dropout(gelu(wi_0 x) * wi_1 x))
    (T5 v1.1, Shazeer 2020's GEGLU, with the tanh approximation of GELU). No biases.

    wo's input is cast to wo's dtype, so wo may be kept in float32 inside a half-precision model (where
    T5's feed-forward output overflows in fp16).
    """

    def __init__(self, d_model: int, d_ff: int, kind: FeedForwardKind = "relu", dropout: float = 0.0):
        super().__init__()
        if kind not in FEED_FORWARDS:
            raise ValueError(f"feed_forward must be one of {', '.join(FEED_FORWARDS)}, got {kind!r}")
        self.gated = kind == "gated-gelu"
        if self.gated:
            self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
            self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        else:
            self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = Dropout(dropout)

    def _apply(self, fn, recurse=True):
        # model.half() leaves wo in float32 (transformers' _keep_in_fp32_modules = ["wo"]): its products overflow
        # fp16 (inf - inf = NaN inside the sum, which no clamp after it can undo). Its output is float32, and
        # the residual stream stays so; the next RMS norm hands half precision to the next layer again.
        before = self.wo.weight.data
        super()._apply(fn, recurse)
        if self.wo.weight.dtype == torch.float16:  # from the weights before: fp16 may have made them inf
            self.wo.weight.data = before.to(device=self.wo.weight.device, dtype=torch.float32)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        else:
            h = F.relu(self.wi(x))
        h = self.dropout(h)
        return self.wo(h.to(self.wo.weight.dtype))


class EncoderBlock(nn.Module):
    """Bidirectional self-attention and feed-forward, each pre-norm with a residual: (B, T, D) -> (B, T, D)."""

    def __init__(self, d_model: int, n_heads: int, d_kv: int, d_ff: int, *, feed_forward: FeedForwardKind = "relu",
                 dropout: float = 0.0, eps: float = 1e-6, scale: float | None = None):
        super().__init__()
        self.ln_1 = RMSNorm(d_model, eps)
        self.attn = MultiHeadAttention(d_model, n_heads, d_kv, scale=scale, dropout=dropout)
        self.ln_2 = RMSNorm(d_model, eps)
        self.mlp = FeedForward(d_model, d_ff, feed_forward, dropout)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        x = clamp_half(x + self.dropout(self.attn(self.ln_1(x), bias)[0]))
        return clamp_half(x + self.dropout(self.mlp(self.ln_2(x))))


class DecoderBlock(nn.Module):
    """Causal self-attention over a cache, cross-attention over the encoder's keys/values, feed-forward.

    forward(x (B, T, D), self_bias, cross_bias, past, cross, cache_position) -> (x, (keys, values) of
    self-attention after x). self_bias must hold the causal mask; cross has the keys/values of
    `cross_key_values`; past and cache_position are MultiHeadAttention's.
    """

    def __init__(self, d_model: int, n_heads: int, d_kv: int, d_ff: int, *, d_memory: int | None = None,
                 feed_forward: FeedForwardKind = "relu", dropout: float = 0.0, eps: float = 1e-6,
                 scale: float | None = None):
        super().__init__()
        self.ln_1 = RMSNorm(d_model, eps)
        self.attn = MultiHeadAttention(d_model, n_heads, d_kv, scale=scale, dropout=dropout)
        self.ln_2 = RMSNorm(d_model, eps)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, d_kv, d_memory=d_memory, scale=scale, dropout=dropout)
        self.ln_3 = RMSNorm(d_model, eps)
        self.mlp = FeedForward(d_model, d_ff, feed_forward, dropout)
        self.dropout = Dropout(dropout)

    def cross_key_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """The cross-attention keys and values of the encoder's states (B, S, d_memory), once per source."""
        return self.cross_attn.key_values(memory)

    def forward(self, x: Tensor, self_bias: Tensor | None, cross_bias: Tensor | None,
                past: tuple[Tensor, Tensor] | None, cross: tuple[Tensor, Tensor],
                cache_position: int | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, present = self.attn(self.ln_1(x), self_bias, past=past, cache_position=cache_position)
        x = clamp_half(x + self.dropout(h))
        x = clamp_half(x + self.dropout(self.cross_attn(self.ln_2(x), cross_bias, key_values=cross)[0]))
        return clamp_half(x + self.dropout(self.mlp(self.ln_3(x)))), present
