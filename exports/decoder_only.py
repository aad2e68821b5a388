"""The export plan of a decoder-only transformer with a key/value cache, for the families to reuse.

Any decoder with lmkit's calling convention fits: `forward(input_ids, cache, attention_mask,
position_ids) -> logits`, whose attention layers call `cache.update(layer, k, v)` and read
`cache.length`. The graph gets the past keys/values as inputs and returns the full ones (past + new)
as outputs, so one graph serves the prefill (fed a zero-length past) and every step after it:

    inputs   input_ids (B, T) int64, attention_mask (B, past + T) int64, position_ids (B, T) int64,
             past_key_values.{i}.key / .value (B, heads, past, head_dim)
    outputs  logits (B, T, vocab), present.{i}.key / .value (B, heads, past + T, head_dim)

These are optimum's names, so tools written for its exports (onnxruntime-genai, Triton clients) read ours.

That is the "concat" cache layout, which copies the whole past in every layer at every step. The
"buffer" layout (`lmkit export --layout fast`, for decoders whose attention layers are plain causal
lmkit.nn.SelfAttention) has the same names, but every cache input and output is a buffer of the
model's whole context, (B, heads, max_length, head_dim), of which the first past + T positions are
filled; the attention is onnxruntime's fused GroupQueryAttention (lmkit.exports.fused_attention),
which writes the new positions in place when the runtime binds one buffer as both input and output.
The manifest's dimensions say `cache_layout: buffer`; an export without the key has the concat one.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor, nn

from lmkit.errors import LmkitError

from .graphs import BATCH, DECODER_ONLY, PAST, SEQUENCE, TOTAL, ExportPlan, Graph, ShapeSet, TensorInfo

# The shapes validation runs at: (batch, new tokens, past tokens), with padding on the first row
# when batch > 1. Prefill and decoding step, batch 1 and 3, past 0 and 9, one and many new tokens.
VALIDATION_SHAPES = ((1, 17, 0), (3, 17, 0), (3, 1, 9), (1, 17, 9))
PADDING = 2  # left-padding positions on the first row of a batch
EXAMPLE_SHAPE = (2, 3, 5)  # distinct sizes >= 2, so no symbolic axis is specialised or confused


class ConcatCache:
    """A stand-in for the decoder's KVCache during export: the past comes in, the presents go out.

    `update` concatenates the new keys/values to the past ones given as graph inputs (instead of
    writing into a preallocated buffer, which would bake its size into the graph) and records the
    result as the layer's present.

    length: the past's length (symbolic while tracing). windows: {layer: w} for layers that keep
    only their last w positions (GPT-3's banded layers, see lmkit.nn.banded.BandedKVCache). Their past is always w positions (zeros before the first
    token), `update` returns the window followed by the new positions, and the present is the last w.
    prefix_length: how many of the past positions are a trained prefix (lmkit.prefix), where the past is one
    (training prefixes: lmkit.plugins.prefixes); 0 in an export's graph.
    """

    def __init__(self, past: list[tuple[Tensor, Tensor]], length: int, windows: dict[int, int] | None = None,
                 prefix_length: int = 0):
        self.past = past
        self.presents: list[tuple[Tensor, Tensor] | None] = [None] * len(past)
        self.length = length
        self.windows = windows or {}
        self.prefix_length = prefix_length  # how many past positions are a prefix (lmkit.contract.Cache)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        past_k, past_v = self.past[layer]
        keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        # A window layer's present is the last w of its w + T positions: from the T-th on.
        new = k.size(2)
        self.presents[layer] = (keys, values) if layer not in self.windows else (keys[:, :, new:], values[:, :, new:])
        return keys, values

    def advance(self, n: int) -> None:
        """The length is the past's, known from the inputs; nothing to count."""


class DecoderWithPast(nn.Module):
    """forward(input_ids, attention_mask, position_ids, *past) -> (logits, *presents)."""

    def __init__(self, decoder: nn.Module, n_layers: int, windows: dict[int, int] | None = None):
        super().__init__()
        self.decoder = decoder
        self.n_layers = n_layers
        self.windows = windows or {}

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *past: Tensor):
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.n_layers)]
        full = [layer for layer in range(self.n_layers) if layer not in self.windows]
        # The past length: a full layer's cache length, or with none, what the mask covers before the new tokens.
        length = pairs[full[0]][0].shape[2] if full else attention_mask.shape[1] - input_ids.shape[1]
        cache = ConcatCache(pairs, length, self.windows)
        # int64 in the graph, as optimum and onnxruntime-genai feed it; the decoder wants bool.
        logits = self.decoder(input_ids, cache, attention_mask.bool(), position_ids)
        return (logits, *(tensor for present in cache.presents for tensor in present))


class DecoderWithBuffers(nn.Module):
    """forward(input_ids, attention_mask, position_ids, *buffers) -> (logits, *presents), the buffer layout.

    buffers: per layer, keys and values (B, nh, capacity, hs) whose first attention_mask.shape[1] - T
    positions are the past. Exported (torch.compiler.is_exporting), the attention layers are the
    fused operator's (lmkit.exports.fused_attention); run eagerly, as validation's reference, the
    decoder is the model's own, over the filled part of the buffers, and its presents are written
    into copies of them: what onnxruntime must reproduce is the model itself.
    """

    def __init__(self, decoder: nn.Module, n_layers: int):
        super().__init__()
        from .fused_attention import with_fused_attention

        self.decoder = decoder
        # Not a registered child: its parameters are the decoder's, and are named so (decoder.wte.weight, ...).
        object.__setattr__(self, "fused", with_fused_attention(decoder))
        self.n_layers = n_layers

    def train(self, mode: bool = True):
        self.fused.train(mode)
        return super().train(mode)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *buffers: Tensor):
        from .fused_attention import BufferCache

        pairs = [(buffers[2 * i], buffers[2 * i + 1]) for i in range(self.n_layers)]
        new = input_ids.shape[1]
        length = attention_mask.shape[1] - new
        if torch.compiler.is_exporting():
            cache = BufferCache(pairs, attention_mask, length)
            logits = self.fused(input_ids, cache, attention_mask.bool(), position_ids)
            return (logits, *(tensor for present in cache.presents for tensor in present))
        cache = ConcatCache([(k[:, :, :length], v[:, :, :length]) for k, v in pairs], length)
        logits = self.decoder(input_ids, cache, attention_mask.bool(), position_ids)
        presents = []
        for present, pair in zip(cache.presents, pairs):
            for filled, buffer in zip(present, pair):
                buffer = buffer.clone()
                buffer[:, :, :length + new] = filled
                presents.append(buffer)
        return (logits, *presents)


CACHE_LAYOUTS = ("concat", "buffer")


def buffer_layout_applies(decoder: nn.Module, *, n_layers: int, head_dim: int, max_length: int | None,
                          windows: dict[int, int] | None = None) -> str | None:
    """None when the buffer layout fits this decoder, else why not (one line)."""
    from .fused_attention import fusable

    if windows:
        return "some layers keep a window of their last positions (GPT-3's banded layers)"
    if max_length is None:
        return "the model reads any number of positions, and a buffer needs a capacity"
    if head_dim % 8:
        return f"onnxruntime's fused attention needs a head size that is a multiple of 8, and it is {head_dim}"
    if not fusable(decoder, n_layers):
        return "its attention layers are not all plain causal self-attention (lmkit.nn.SelfAttention)"
    return None


def decoder_only_plan(model: nn.Module, *, n_layers: int, n_heads: int, head_dim: int, vocab_size: int,
                      max_length: int | None, windows: dict[int, int] | None = None,
                      cache_layout: str = "concat") -> ExportPlan:
    """The plan for `model.decoder`, whose cache has n_layers layers of (B, n_heads, length, head_dim).

    windows: {layer: w} for layers whose cache is a window of their last w positions (a fixed axis of
    size w in and out, which the runtime starts as zeros); see ConcatCache.
    cache_layout: "concat" or "buffer" (see the module's docstring); "buffer" where it does not
    apply (buffer_layout_applies) gives the concat layout, and the dimensions say which one it is.
    """
    windows = windows or {}
    if cache_layout not in CACHE_LAYOUTS:
        raise LmkitError(f"unknown cache layout '{cache_layout}'; choose one of {', '.join(CACHE_LAYOUTS)}")
    if model.kind != "decoder":
        raise LmkitError("this exporter writes decoder-only models, but the composition also has an "
                         "encoder; an encoder-decoder export needs an exporter of its own")
    decoder = model.decoder
    buffered = cache_layout == "buffer" and buffer_layout_applies(
        decoder, n_layers=n_layers, head_dim=head_dim, max_length=max_length, windows=windows) is None
    if buffered:  # every cache tensor is a buffer of the whole context
        windows = {layer: max_length for layer in range(n_layers)}
        module = DecoderWithBuffers(decoder, n_layers).eval()
    else:
        module = DecoderWithPast(decoder, n_layers, windows).eval()
    layers = [layer for layer in range(n_layers) for _ in ("key", "value")]
    cache_names = [(f"past_key_values.{i}.{part}", f"present.{i}.{part}")
                   for i in range(n_layers) for part in ("key", "value")]
    inputs = [
        TensorInfo("input_ids", "int64", (BATCH, SEQUENCE)),
        TensorInfo("attention_mask", "int64", (BATCH, TOTAL)),
        TensorInfo("position_ids", "int64", (BATCH, SEQUENCE)),
        *(TensorInfo(past, "float32", (BATCH, n_heads, windows.get(layer, PAST), head_dim))
          for layer, (past, _) in zip(layers, cache_names)),
    ]
    outputs = [
        TensorInfo("logits", "float32", (BATCH, SEQUENCE, vocab_size)),
        *(TensorInfo(present, "float32", (BATCH, n_heads, windows.get(layer, TOTAL), head_dim))
          for layer, (_, present) in zip(layers, cache_names)),
    ]
    fused = {}
    if buffered:
        from .fused_attention import OP, translation_table

        # fp16: the operator's bias holds float32's lowest value; it computes in fp32 between casts.
        fused = {"translations": translation_table(), "shared_cache": True, "fp32_ops": (OP,)}
    rng = np.random.default_rng(0)
    shape_set = functools.partial(_inputs, module, rng, vocab_size=vocab_size, cache=(n_heads, head_dim),
                                  past_names=[past for past, _ in cache_names],
                                  past_lengths=[windows.get(layer, 0) for layer in layers])
    example = shape_set(*EXAMPLE_SHAPE)
    graph = Graph(
        name="model", module=module, inputs=inputs, outputs=outputs,
        example=tuple(torch.from_numpy(example.inputs[t.name]) for t in inputs),
        validation=[shape_set(*shape) for shape in _fit(VALIDATION_SHAPES, max_length)],
        cache=cache_names,
        **fused,
    )
    dimensions = {"n_layers": n_layers, "n_heads": n_heads, "head_dim": head_dim, "vocab_size": vocab_size,
                  "max_length": max_length}
    if buffered:
        dimensions["cache_layout"] = "buffer"
    elif windows:  # which layers' cache is a window, and its size
        dimensions["windows"] = {str(layer): w for layer, w in windows.items()}
    return ExportPlan(DECODER_ONLY, [graph], dimensions)


def _fit(shapes, max_length: int | None):
    """The validation shapes, shortened where a model reads fewer positions than they need."""
    for batch, new, past in shapes:
        if max_length is not None and past + new > max_length:
            new = min(new, max_length)
            past = min(past, max_length - new)
        yield batch, new, past


@torch.no_grad()
def _inputs(module: DecoderWithPast, rng: np.random.Generator, batch: int, new: int, past: int, *,
            vocab_size: int, cache: tuple[int, int], past_names: list[str],
            past_lengths: list[int] | None = None) -> ShapeSet:
    """Random tokens after a past computed by the model itself, so the cache holds real keys/values.

    cache: (heads, head_dim) of every layer's keys and values. past_lengths: each cache input's
    length before the first token (0, or a window's fixed size). The first row of a batch starts
    with padding, as a left-padded prompt does.
    """
    total = past + new
    ids = rng.integers(0, vocab_size, size=(batch, total), dtype=np.int64)
    mask = np.ones((batch, total), dtype=np.int64)
    if batch > 1:
        mask[0, :min(PADDING, total - 1)] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    past_values = [torch.zeros(batch, cache[0], length, cache[1]) for length in past_lengths or [0] * len(past_names)]
    if past:
        prefix = (torch.from_numpy(a[:, :past]) for a in (ids, mask, positions))
        past_values = module(*prefix, *past_values)[1:]
    inputs = {"input_ids": ids[:, past:], "attention_mask": mask, "position_ids": positions[:, past:]}
    inputs.update((name, value.numpy()) for name, value in zip(past_names, past_values))
    return ShapeSet(label={"batch_size": batch, "new_tokens": new, "past_tokens": past}, inputs=inputs,
                    scored=mask[:, past:].astype(bool))
