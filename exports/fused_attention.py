"""onnxruntime's fused GroupQueryAttention in an exported decoder graph, over a cache written in place.

The "buffer" cache layout (lmkit.exports.decoder_only) gives each layer's keys and values as
fixed-capacity buffers (B, heads, capacity, head_dim). onnxruntime's com.microsoft
GroupQueryAttention writes the new positions into the buffer at their offset and attends over the
filled part without copying it, and when the runtime binds the same memory as the buffer input and
its present output (past_present_share_buffer, as onnxruntime-genai does), nothing of the past is
copied at a step: the concat layout copies all of it, in every layer, at every token.

torch.onnx has no way to write a contrib operator from an ordinary module, so the export traces
`group_query_attention`, a torch custom op, which its translation below turns into the node; the
operator's schema is registered with onnx once, since torch.onnx builds nodes from schemas.

Semantics (onnxruntime's contrib_ops/cpu/bert/group_query_attention*.h, ORT 1.32): causal attention
of the T new queries over `total_length` positions, the new keys/values written at total - T;
`attention_bias` (B, 1, T, total) is added to the scaled scores (lmkit puts 0 where a query may
look and float32's lowest where not: padding; T5 adds its relative position bias, (1, heads, T, total)).
`scale` multiplies q.k, 0 meaning 1/sqrt(head_dim) (T5 attends unscaled: 1). head_dim must be a multiple
of 8, and T > 1 after a non-empty past (a prefill after a prefix) takes a batch of 1.

Two exporters turn the op into the node: torch.onnx's dynamo exporter through `translation_table`, and
the TorchScript tracer (T5's graphs, exported in a quarter of dynamo's time) through `legacy_symbolics`.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lmkit.nn.attention import SelfAttention

DOMAIN = "com.microsoft"
OP = "GroupQueryAttention"


@torch.library.custom_op("lmkit::group_query_attention", mutates_args=())
def group_query_attention(query: Tensor, key: Tensor, value: Tensor, past_key: Tensor, past_value: Tensor,
                          seqlens_k: Tensor, total_length: Tensor, attention_bias: Tensor,
                          num_heads: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(output (B, T, C), present_key, present_value (B, nh, capacity, hs)), as onnxruntime computes them.

    query/key/value: (B, T, C), C = num_heads * hs. past_key/past_value: (B, nh, capacity, hs), the
    first total - T positions filled. seqlens_k: int32 (B,), total - 1 in every row. total_length:
    int32 scalar. attention_bias: (B or 1, 1 or nh, T, total), added to the scores before the causal mask.
    scale: multiplies q.k; 0 means 1/sqrt(hs), as onnxruntime's attribute does.
    """
    B, T, C = query.shape
    hs = C // num_heads
    total = int(total_length)
    past = total - T

    def split(x: Tensor) -> Tensor:
        return x.reshape(B, T, num_heads, hs).transpose(1, 2)

    present_key, present_value = past_key.clone(), past_value.clone()
    present_key[:, :, past:total] = split(key)
    present_value[:, :, past:total] = split(value)
    causal = torch.arange(total, device=query.device) <= torch.arange(past, total, device=query.device)[:, None]
    bias = attention_bias.masked_fill(~causal, torch.finfo(attention_bias.dtype).min)
    output = torch.nn.functional.scaled_dot_product_attention(
        split(query), present_key[:, :, :total], present_value[:, :, :total], attn_mask=bias, scale=scale or None)
    return output.transpose(1, 2).reshape(B, T, C), present_key, present_value


@group_query_attention.register_fake
def _(query, key, value, past_key, past_value, seqlens_k, total_length, attention_bias, num_heads, scale):
    return torch.empty_like(query), torch.empty_like(past_key), torch.empty_like(past_value)


def _register_schema() -> None:
    """onnxruntime's schema of the operator, as far as the exporter needs it (onnx does not know contrib ops)."""
    from onnx import defs

    if defs.has(OP, DOMAIN):
        return
    parameter, optional = defs.OpSchema.FormalParameter, defs.OpSchema.FormalParameterOption.Optional
    inputs = [parameter("query", "T"), *(parameter(name, "T", param_option=optional)
                                         for name in ("key", "value", "past_key", "past_value")),
              parameter("seqlens_k", "M"), parameter("total_sequence_length", "M"),
              *(parameter(name, "T", param_option=optional) for name in ("cos_cache", "sin_cache")),
              parameter("position_ids", "P", param_option=optional),
              parameter("attention_bias", "T", param_option=optional)]
    outputs = [parameter(name, "T") for name in ("output", "present_key", "present_value")]
    attribute = defs.OpSchema.Attribute
    defs.register_schema(defs.OpSchema(
        OP, DOMAIN, 1, inputs=inputs, outputs=outputs,
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], ""),
                          ("P", ["tensor(int64)"], "")],
        attributes=[attribute("num_heads", defs.OpSchema.AttrType.INT, ""),
                    attribute("kv_num_heads", defs.OpSchema.AttrType.INT, ""),
                    attribute("scale", defs.OpSchema.AttrType.FLOAT, "")]))


def translation_table() -> dict:
    """torch.onnx's custom_translation_table entry: the custom op as onnxruntime's node."""
    from onnxscript.values import Opset

    _register_schema()
    microsoft = Opset(DOMAIN, 1)

    def to_onnx(query, key, value, past_key, past_value, seqlens_k, total_length, attention_bias, num_heads: int,
                scale: float):
        return microsoft.GroupQueryAttention(query, key, value, past_key, past_value, seqlens_k, total_length,
                                             None, None, None, attention_bias,
                                             num_heads=num_heads, kv_num_heads=num_heads, scale=scale)

    return {torch.ops.lmkit.group_query_attention.default: to_onnx}


def legacy_symbolics() -> dict:
    """The TorchScript tracer's symbolic function of the custom op (torch.onnx.register_custom_op_symbolic)."""
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "v", "v", "v", "v", "v", "v", "v", "i", "f")
    def to_onnx(g, query, key, value, past_key, past_value, seqlens_k, total_length, attention_bias, num_heads,
                scale):
        absent = [symbolic_helper._optional_input_placeholder_tensor(g) for _ in range(3)]  # no rotary, no position_ids
        outputs = g.op(f"{DOMAIN}::{OP}", query, key, value, past_key, past_value, seqlens_k, total_length, *absent,
                       attention_bias, num_heads_i=num_heads, kv_num_heads_i=num_heads, scale_f=scale, outputs=3)
        for output, like in zip(outputs, (query, past_key, past_value)):  # the tracer cannot infer a contrib op's
            output.setType(like.type())
        return outputs

    return {"lmkit::group_query_attention": to_onnx}


def sequence_lengths(attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """The operator's seqlens_k (B,) int32, total - 1 in every row, and total_length, an int32 scalar, of an
    attention mask (B, total) over every position so far (past and new)."""
    seqlens_k = torch.ones_like(attention_mask).sum(1, dtype=torch.int32) - 1
    return seqlens_k, seqlens_k.max() + 1


class BufferCache:
    """The cache a fused graph's attention layers see: per layer, a buffer in and its present out.

    attend(layer, q, k, v) takes the layer's heads (B, nh, T, hs) and returns its attention output
    (B, nh, T, hs), recording the layer's present buffers. length: the past's (symbolic) length.
    """

    def __init__(self, buffers: list[tuple[Tensor, Tensor]], attention_mask: Tensor, length):
        self.buffers = buffers
        self.presents: list[tuple[Tensor, Tensor] | None] = [None] * len(buffers)
        self.length = length
        B, total = attention_mask.shape
        T = total - length
        self.seqlens_k, self.total_length = sequence_lengths(attention_mask)
        # 0 where a query may look, the lowest float32 where not: padding, except the query's own
        # position, which a padded query sees (as lmkit.nn.attention.self_attention_mask lets it:
        # it keeps that query's values, unused but cached, equal to PyTorch's). Causality is the op's.
        keys = torch.arange(total, device=attention_mask.device)
        own = keys == (torch.arange(T, device=attention_mask.device) + length)[:, None]  # (T, total)
        allowed = attention_mask.bool()[:, None, None, :] | own  # (B, 1, T, total)
        zero = torch.zeros((), dtype=torch.float32, device=attention_mask.device)
        self.attention_bias = torch.where(allowed, zero, torch.finfo(torch.float32).min)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, nh, T, hs = q.shape
        past_key, past_value = self.buffers[layer]

        def merge(x: Tensor) -> Tensor:
            return x.transpose(1, 2).reshape(B, T, nh * hs)

        y, present_key, present_value = torch.ops.lmkit.group_query_attention(
            merge(q), merge(k), merge(v), past_key, past_value, self.seqlens_k, self.total_length,
            self.attention_bias.to(q.dtype), nh, 0.0)
        self.presents[layer] = (present_key, present_value)
        return y.reshape(B, T, nh, hs).transpose(1, 2)

    def advance(self, n: int) -> None:
        """The length is the past's, known from the inputs; nothing to count."""


class FusedSelfAttention(nn.Module):
    """A causal lmkit.nn.SelfAttention whose attention is the cache's `attend` (the fused operator).

    Same parameters (the wrapped module's), same projections (its heads and output).
    """

    def __init__(self, attention: SelfAttention):
        super().__init__()
        self.attention = attention

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: BufferCache | None = None,
                layer: int = 0) -> Tensor:
        q, k, v = self.attention.heads(x)  # 3 x (B, nh, T, hs)
        return self.attention.output(cache.attend(layer, q, k, v))


class BufferSlot(NamedTuple):
    """One layer's self-attention cache in the buffer layout, as a FusedMultiHeadAttention reads it: the key and
    value buffers (B, nh, capacity, hs) and the operator's sequence_lengths."""

    key: Tensor
    value: Tensor
    seqlens_k: Tensor
    total_length: Tensor


class FusedMultiHeadAttention(nn.Module):
    """lmkit.nn.encoder_decoder.MultiHeadAttention as causal self-attention over a BufferSlot, by the fused operator.

    Same parameters (the wrapped module's), same call: forward(x, bias, past) with past a BufferSlot and bias
    (1 or B, nh, T, total), the relative position bias and padding without the causal mask (the operator's),
    -> (output (B, T, d_model), the present key and value buffers).
    """

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention

    def forward(self, x: Tensor, bias: Tensor, past: BufferSlot, key_values=None,
                cache_position=None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        a = self.attention
        y, present_key, present_value = torch.ops.lmkit.group_query_attention(
            a.q(x), a.k(x), a.v(x), past.key, past.value, past.seqlens_k, past.total_length, bias.to(x.dtype),
            a.n_heads, 0.0 if a.scale is None else float(a.scale))
        return a.o(y), (present_key, present_value)


def fusable(decoder: nn.Module, n_layers: int) -> bool:
    """Whether every attention layer of `decoder` is a plain causal SelfAttention, one per cache layer."""
    attentions = [m for m in decoder.modules() if isinstance(m, SelfAttention)]
    return (len({id(m) for m in attentions}) == n_layers
            and all(type(m) is SelfAttention and m.causal for m in attentions))


def _fused_self_attention(module: nn.Module) -> nn.Module | None:
    return FusedSelfAttention(module) if type(module) is SelfAttention else None


def with_fused_attention(module: nn.Module, wrap: Callable[[nn.Module], nn.Module | None] = _fused_self_attention
                         ) -> nn.Module:
    """A copy of `module` in which every submodule that `wrap` replaces (it returns the replacement, or None to
    look inside) is replaced, sharing every parameter; by default SelfAttention by FusedSelfAttention.

    Only the modules on the way to a replaced one are copied (shallowly, with their own table of children),
    so the original model is left as it is.
    """
    replacement = wrap(module)
    if replacement is not None:
        return replacement
    children = {name: with_fused_attention(child, wrap) if child is not None else None
                for name, child in module._modules.items()}
    if all(children[name] is module._modules[name] for name in children):
        return module
    clone = copy.copy(module)
    clone._modules = children
    return clone
