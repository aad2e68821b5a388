"""How a GLM decoder becomes ONNX: lmkit's decoder-only graph, its position_ids GLM's two rows.

    inputs   input_ids (B, T), attention_mask (B, past + T) int64 (0 at padding),
             position_ids (B, 2, T): pos1 and pos2 of the new tokens, past_key_values.{i}.key / .value
    outputs  logits (B, T, vocab), present.{i}.key / .value

The Part A / Part B mask is computed inside the graph from pos2 (Part A: 0) and attention_mask, as the
PyTorch model does, so the one graph serves a prefill of Part A and [S] and every step of a span
after it. It is served by the decoder-only runtime, whose backend feeds the positions GLM's blank
filling supplies (lmkit.decoding.common.Positions), so the same generator runs on both backends.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from lmkit.exports.decoder_only import EXAMPLE_SHAPE, PADDING, VALIDATION_SHAPES, DecoderWithPast, _fit
from lmkit.exports.graphs import (
    BATCH,
    DECODER_ONLY,
    PAST,
    SEQUENCE,
    TOTAL,
    ExportPlan,
    Graph,
    ShapeSet,
    TensorInfo,
)


def export_plan(model) -> ExportPlan:
    decoder = model.decoder
    c = decoder.config
    head_dim = c.d_model // c.n_heads
    module = DecoderWithPast(decoder, c.n_layers).eval()
    cache_names = [(f"past_key_values.{i}.{part}", f"present.{i}.{part}")
                   for i in range(c.n_layers) for part in ("key", "value")]
    inputs = [
        TensorInfo("input_ids", "int64", (BATCH, SEQUENCE)),
        TensorInfo("attention_mask", "int64", (BATCH, TOTAL)),
        TensorInfo("position_ids", "int64", (BATCH, 2, SEQUENCE)),
        *(TensorInfo(past, "float32", (BATCH, c.n_heads, PAST, head_dim)) for past, _ in cache_names),
    ]
    outputs = [
        TensorInfo("logits", "float32", (BATCH, SEQUENCE, c.vocab_size)),
        *(TensorInfo(present, "float32", (BATCH, c.n_heads, TOTAL, head_dim)) for _, present in cache_names),
    ]
    rng = np.random.default_rng(0)
    shape_set = functools.partial(_inputs, module, rng, vocab_size=c.vocab_size, cache=(c.n_heads, head_dim),
                                  past_names=[past for past, _ in cache_names])
    example = shape_set(*EXAMPLE_SHAPE)
    graph = Graph(
        name="model", module=module, inputs=inputs, outputs=outputs,
        example=tuple(torch.from_numpy(example.inputs[t.name]) for t in inputs),
        validation=[shape_set(*shape) for shape in _fit(VALIDATION_SHAPES, c.max_positions)],
        cache=cache_names,
    )
    dimensions = {"n_layers": c.n_layers, "n_heads": c.n_heads, "head_dim": head_dim, "vocab_size": c.vocab_size,
                  "max_length": c.max_positions, "position_components": 2}
    return ExportPlan(DECODER_ONLY, [graph], dimensions)


@torch.no_grad()
def _inputs(module: DecoderWithPast, rng: np.random.Generator, batch: int, new: int, past: int, *, vocab_size: int,
            cache: tuple[int, int], past_names: list[str]) -> ShapeSet:
    """GLM inputs of `batch` rows: Part A (bidirectional), then one span of Part B; the past, when there is one,
    computed by the model itself and holding all of Part A. The first row of a batch starts with padding."""
    total = past + new
    ids = rng.integers(0, vocab_size, size=(batch, total), dtype=np.int64)
    mask = np.ones((batch, total), dtype=np.int64)
    if batch > 1:
        mask[0, :min(PADDING, total - 1)] = 0
    # Part A ends at sep: within the past when there is one (a new token after Part B must not be Part A).
    sep = max(1, past // 2) if past else max(1, total // 2)
    real = np.maximum(np.cumsum(mask, axis=1) - 1, 0)  # each row's own count from its first real token
    pos1 = np.where(np.arange(total) < sep, real, real[:, sep - 1:sep])
    pos2 = np.broadcast_to(np.where(np.arange(total) < sep, 0, np.arange(total) - sep + 1), (batch, total))
    positions = np.stack([pos1, pos2], axis=1)  # (B, 2, total)
    past_values = [torch.zeros(batch, cache[0], 0, cache[1]) for _ in past_names]
    if past:
        past_values = module(torch.from_numpy(ids[:, :past]), torch.from_numpy(mask[:, :past]),
                             torch.from_numpy(positions[:, :, :past]), *past_values)[1:]
    inputs = {"input_ids": ids[:, past:], "attention_mask": mask, "position_ids": positions[:, :, past:]}
    inputs.update((name, value.numpy()) for name, value in zip(past_names, past_values))
    return ShapeSet(label={"batch_size": batch, "new_tokens": new, "past_tokens": past}, inputs=inputs,
                    scored=mask[:, past:].astype(bool))
