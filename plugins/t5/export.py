"""How T5 becomes ONNX: an encoder graph that also computes every layer's cross-attention keys and values
once per source, and a decoder-step graph with the self-attention cache in and out.

encoder.onnx   input_ids, attention_mask (batch, source_length) -> cross_k, cross_v
               (layers, batch, heads, source_length, d_kv)
decoder.onnx   input_ids (batch, 1), self_k / self_v (layers, batch, heads, past_sequence_length, d_kv),
               cross_k, cross_v, encoder_mask (batch, source_length) bool
               -> logits (batch, vocab), present_k / present_v (layers, batch, heads, past + 1, d_kv)

The plan's EncoderDecoderLayout wires them for lmkit's generic encoder-decoder runtime: self_k/self_v
start empty (zeros with no past positions) and are fed back from present_k/present_v, cross_k/cross_v come
from the encoder once, encoder_mask from the sources; a prefix (lmkit.prefix) is self_k/self_v's first
value. The decoder graph reads the cache's length from self_k's past axis, so the relative position bias of each new token is offset by it, as in PyTorch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmkit.contract import EncoderOutput
from lmkit.exports.fused_attention import (
    OP,
    BufferSlot,
    FusedMultiHeadAttention,
    legacy_symbolics,
    sequence_lengths,
    with_fused_attention,
)
from lmkit.exports.graphs import (
    BATCH,
    CAPACITY,
    ENCODER_DECODER,
    PAST,
    SOURCE,
    EncoderDecoderLayout,
    ExportPlan,
    Feed,
    Graph,
    ShapeSet,
    TensorInfo,
)
from lmkit.nn.encoder_decoder import additive_mask, exporting

PRESENT = f"{PAST} + 1"
# The TorchScript tracer: both graphs have only fixed-rank tensors and no data-dependent control flow, and
# it exports them in a quarter of dynamo's time (10 s against 42 s for t5-tiny on 2 busy cores).
EXPORTER = "legacy"


class EncoderGraph(nn.Module):
    """-> cross_k, cross_v of every layer stacked (concat layout), or each layer's (buffer layout: per_layer)."""

    def __init__(self, encoder, decoder, per_layer: bool = False):
        super().__init__()
        self.encoder, self.decoder, self.per_layer = encoder, decoder, per_layer

    def forward(self, input_ids, attention_mask):
        state = self.decoder.start(self.encoder(input_ids, attention_mask.bool()))
        if self.per_layer:  # cross_k.0, cross_v.0, cross_k.1, ...: once per source, so the stacking costs nothing
            return tuple(t for k, v in zip(state["cross_k"], state["cross_v"]) for t in (k, v))
        return state["cross_k"], state["cross_v"]


class DecoderStep(nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder
        self.embedding = decoder.token_embedding()  # registered here, so the exporter sees it as a weight

    def forward(self, input_ids, self_k, self_v, cross_k, cross_v, encoder_mask):
        state = {"self_k": self_k, "self_v": self_v, "cross_k": cross_k, "cross_v": cross_v,
                 "encoder_mask": encoder_mask}
        logits, state = self.decoder(input_ids, state)
        return logits[:, -1], state["self_k"], state["self_v"]


class DecoderStepBuffers(nn.Module):
    """The buffer layout's decoder step: forward(input_ids, decoder_attention_mask, self_k.0, self_v.0, ...,
    cross_k.0, cross_v.0, ..., encoder_mask) -> (logits, present_k.0, present_v.0, ...).

    Exported, each block's self-attention is the fused operator over its buffers (FusedMultiHeadAttention),
    and the rest of the block is the model's own. Run eagerly, as validation's reference, it is the model
    itself over the filled part of the buffers, its new keys/values written into copies of them: what
    onnxruntime must reproduce is T5Decoder.forward.
    """

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder
        self.embedding = decoder.token_embedding()  # registered here, so the exporter sees it as a weight
        self.n_layers = len(decoder.block)
        # Not registered children: their parameters are the decoder's, and are named so.
        fused = [with_fused_attention(block, lambda m, attn=block.attn: FusedMultiHeadAttention(m) if m is attn
                                      else None) for block in decoder.block]
        object.__setattr__(self, "fused_blocks", fused)

    def forward(self, input_ids, decoder_attention_mask, *tensors):
        L = self.n_layers
        buffers, cross, encoder_mask = tensors[:2 * L], tensors[2 * L:4 * L], tensors[4 * L]
        T = input_ids.shape[1]
        past = decoder_attention_mask.shape[1] - T
        if not exporting():
            return self._reference(input_ids, past, buffers, cross, encoder_mask, decoder_attention_mask)
        seqlens_k, total_length = sequence_lengths(decoder_attention_mask)
        decoder = self.decoder
        x = decoder.drop(self.embedding(input_ids))
        # (B, nh, T, past + T): the relative bias, and the rows' left padding (rows that joined a running batch,
        # EncoderDecoderLayout.target_padding); the operator adds causality.
        self_bias = decoder.relative_bias(T, past + T, past) + additive_mask(
            decoder_attention_mask[:, None, None, :].bool(), torch.float32)
        cross_bias = additive_mask(encoder_mask[:, None, None, :], torch.float32)
        presents = []
        for layer, block in enumerate(self.fused_blocks):
            slot = BufferSlot(buffers[2 * layer], buffers[2 * layer + 1], seqlens_k, total_length)
            x, present = block(x, self_bias, cross_bias, slot, (cross[2 * layer], cross[2 * layer + 1]))
            presents.extend(present)
        logits = decoder.logits(decoder.drop(decoder.final_layer_norm(x)))
        return (logits[:, -1], *presents)

    def _reference(self, input_ids, past, buffers, cross, encoder_mask, decoder_attention_mask):
        state = {"self_k": torch.stack([k[:, :, :past] for k in buffers[0::2]]),
                 "self_v": torch.stack([v[:, :, :past] for v in buffers[1::2]]),
                 "cross_k": torch.stack(cross[0::2]), "cross_v": torch.stack(cross[1::2]), "encoder_mask": encoder_mask,
                 "target_mask": decoder_attention_mask[:, :past].bool()}
        logits, state = self.decoder(input_ids, state)
        filled = state["self_k"].shape[3]
        presents = []
        for layer in range(self.n_layers):
            for part, name in enumerate(("self_k", "self_v")):
                buffer = buffers[2 * layer + part].clone()
                buffer[:, :, :filled] = state[name][layer]
                presents.append(buffer)
        return (logits[:, -1], *presents)


def export_plan(model, cache_layout: str = "buffer") -> ExportPlan:
    """cache_layout: "buffer" (the fast layout above, where d_kv is a multiple of 8, which onnxruntime's fused
    attention needs; else the concat layout) or "concat"."""
    samples = _Samples(model.encoder.eval(), model.decoder.eval())
    if cache_layout == "buffer" and model.decoder.config.d_kv % 8 == 0:
        return _buffer_plan(samples)
    return _concat_plan(samples)


class _Samples:
    """What validation runs the graphs on: random sources (a right-padded row in a batch), and the decoder's
    state after target tokens decoded by the model itself, so the caches hold real keys and values."""

    def __init__(self, encoder, decoder):
        self.encoder, self.decoder = encoder, decoder
        self.limit = encoder.config.max_positions
        self.rng = np.random.default_rng(0)

    def sources(self, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self.rng.integers(0, self.encoder.config.vocab_size, size=(batch, length)).astype(np.int64)
        mask = np.ones((batch, length), dtype=np.int64)
        if batch > 1:
            mask[0, length - min(2, length - 1):] = 0  # a right-padded row
        return ids, mask

    def encoder_set(self, batch: int, length: int) -> ShapeSet:
        ids, mask = self.sources(batch, length)
        return ShapeSet({"batch_size": batch, "source_length": length}, {"input_ids": ids, "attention_mask": mask},
                        scored=None)

    @torch.no_grad()
    def decoded(self, batch: int, length: int, past: int) -> tuple[dict, np.ndarray, dict]:
        """(label, the next token ids (batch, 1), the state after `past` tokens, its encoder_mask numpy)."""
        ids, mask = self.sources(batch, min(length, self.limit))
        encoded = self.encoder(torch.from_numpy(ids), torch.from_numpy(mask).bool())
        state = self.decoder.start(EncoderOutput(encoded.last_hidden_state, encoded.attention_mask))
        targets = torch.from_numpy(self.rng.integers(0, self.decoder.config.vocab_size, size=(batch, past + 1)))
        if past:
            _, state = self.decoder(targets[:, :past], state)
        state = {name: value.numpy() for name, value in state.items()}
        label = {"batch_size": batch, "source_length": ids.shape[1], "past_tokens": past}
        return label, targets[:, past:].numpy(), state

    def encoder_graph(self, module: nn.Module, outputs: list[TensorInfo]) -> Graph:
        example = self.encoder_set(3, 7)
        return Graph(
            "encoder", module,
            [TensorInfo("input_ids", "int64", (BATCH, SOURCE)), TensorInfo("attention_mask", "int64", (BATCH, SOURCE))],
            outputs, example=tuple(torch.from_numpy(example.inputs[name]) for name in ("input_ids", "attention_mask")),
            validation=[self.encoder_set(b, min(s, self.limit)) for b, s in ((1, 1), (1, 11), (4, 9))], scores=None,
            exporter=EXPORTER)


# (batch, source length, past tokens) of the decoder graphs' validation.
STEP_SHAPES = ((1, 1, 0), (1, 11, 9), (4, 6, 3), (2, 9, 0))


def _dimensions(config) -> dict:
    return {"vocab_size": config.vocab_size, "n_layers": config.n_layers, "n_heads": config.n_heads,
            "d_kv": config.d_kv, "feed_forward": config.feed_forward}


def _buffer_plan(samples: _Samples) -> ExportPlan:
    encoder, decoder = samples.encoder, samples.decoder
    c = decoder.config
    L, nh, hs = c.n_layers, c.n_heads, c.d_kv
    self_names = [f"self_{part}.{i}" for i in range(L) for part in "kv"]
    present_names = [f"present_{part}.{i}" for i in range(L) for part in "kv"]
    cross_names = [f"cross_{part}.{i}" for i in range(L) for part in "kv"]

    def step_set(batch: int, length: int, past: int, room: int = 3) -> ShapeSet:
        """One new token after `past`, in buffers with `room` positions to spare (random numbers there: the graph
        must not read them; ShapeSet.filled)."""
        label, next_ids, state = samples.decoded(batch, length, past)
        inputs = {"input_ids": next_ids, "decoder_attention_mask": np.ones((batch, past + 1), np.int64)}
        if batch > 1 and past > 1:
            inputs["decoder_attention_mask"][-1, :2] = 0  # a row that joined later: its first positions padding
        for layer in range(L):
            for part in "kv":
                buffer = samples.rng.standard_normal((batch, nh, past + 1 + room, hs)).astype(np.float32)
                buffer[:, :, :past] = state[f"self_{part}"][layer]
                inputs[f"self_{part}.{layer}"] = buffer
        for layer in range(L):
            for part in "kv":
                inputs[f"cross_{part}.{layer}"] = state[f"cross_{part}"][layer]
        inputs["encoder_mask"] = state["encoder_mask"]
        return ShapeSet(label, inputs, filled=dict.fromkeys(present_names, past + 1))

    cross = (BATCH, nh, SOURCE, hs)
    buffer = (BATCH, nh, CAPACITY, hs)
    encoder_graph = samples.encoder_graph(EncoderGraph(encoder, decoder, per_layer=True).eval(),
                                          [TensorInfo(name, "float32", cross) for name in cross_names])
    inputs = [TensorInfo("input_ids", "int64", (BATCH, 1)), TensorInfo("decoder_attention_mask", "int64", (BATCH, PRESENT)),
              *(TensorInfo(name, "float32", buffer) for name in self_names),
              *(TensorInfo(name, "float32", cross) for name in cross_names),
              TensorInfo("encoder_mask", "bool", (BATCH, SOURCE))]
    example = step_set(3, 7, 5, room=4)  # distinct sizes: batch 3, source 7, past + 1 = 6, capacity 10
    decoder_graph = Graph(
        "decoder", DecoderStepBuffers(decoder).eval(), inputs,
        [TensorInfo("logits", "float32", (BATCH, c.vocab_size)),
         *(TensorInfo(name, "float32", buffer) for name in present_names)],
        example=tuple(torch.from_numpy(example.inputs[t.name]) for t in inputs),
        validation=[step_set(*shape) for shape in STEP_SHAPES],
        cache=list(zip(self_names, present_names)), exporter=EXPORTER,
        # fp16: the operator's bias holds float32's lowest value; it computes in fp32 between casts.
        translations=legacy_symbolics(), shared_cache=True, fp32_ops=(OP,))
    layout = EncoderDecoderLayout(
        [Feed("decoder_attention_mask", "target_mask"), *(Feed(name, "zeros") for name in self_names),
         *(Feed(name, "encoder", name) for name in cross_names), Feed("encoder_mask", "source_mask")],
        batching="padded", encoder_mask="attention_mask", prefix_cache=("self_k.0", "self_v.0"),
        cache_layout="buffer", target_padding=True)
    return ExportPlan(ENCODER_DECODER, [encoder_graph, decoder_graph], layout=layout,
                      dimensions={**_dimensions(c), "max_positions": samples.limit, "cache_layout": "buffer"})


def _concat_plan(samples: _Samples) -> ExportPlan:
    encoder, decoder = samples.encoder, samples.decoder
    c = decoder.config
    L, nh, hs = c.n_layers, c.n_heads, c.d_kv
    names = ("input_ids", "self_k", "self_v", "cross_k", "cross_v", "encoder_mask")

    def step_set(batch: int, length: int, past: int) -> ShapeSet:
        label, next_ids, state = samples.decoded(batch, length, past)
        return ShapeSet(label, {"input_ids": next_ids, **{name: state[name] for name in names[1:]}})

    cross = (L, BATCH, nh, SOURCE, hs)
    encoder_graph = samples.encoder_graph(EncoderGraph(encoder, decoder).eval(),
                                          [TensorInfo("cross_k", "float32", cross), TensorInfo("cross_v", "float32", cross)])
    example = step_set(3, 7, 5)
    decoder_graph = Graph(
        "decoder", DecoderStep(decoder).eval(),
        [TensorInfo("input_ids", "int64", (BATCH, 1)),
         TensorInfo("self_k", "float32", (L, BATCH, nh, PAST, hs)),
         TensorInfo("self_v", "float32", (L, BATCH, nh, PAST, hs)),
         TensorInfo("cross_k", "float32", cross), TensorInfo("cross_v", "float32", cross),
         TensorInfo("encoder_mask", "bool", (BATCH, SOURCE))],
        [TensorInfo("logits", "float32", (BATCH, c.vocab_size)),
         TensorInfo("present_k", "float32", (L, BATCH, nh, PRESENT, hs)),
         TensorInfo("present_v", "float32", (L, BATCH, nh, PRESENT, hs))],
        example=tuple(torch.from_numpy(example.inputs[name]) for name in names),
        validation=[step_set(*shape) for shape in STEP_SHAPES],
        cache=[("self_k", "present_k"), ("self_v", "present_v")], exporter=EXPORTER)
    layout = EncoderDecoderLayout(
        [Feed("self_k", "zeros"), Feed("self_v", "zeros"), Feed("cross_k", "encoder", "cross_k"),
         Feed("cross_v", "encoder", "cross_v"), Feed("encoder_mask", "source_mask")],
        batching="padded", encoder_mask="attention_mask", prefix_cache=("self_k", "self_v"))
    return ExportPlan(ENCODER_DECODER, [encoder_graph, decoder_graph], layout=layout,
                      dimensions={**_dimensions(c), "max_positions": samples.limit})
