"""How a GPT-2 or GPT-3 decoder becomes ONNX: lmkit's decoder-only graph, with their cache geometry."""
from __future__ import annotations

from lmkit.exports.decoder_only import decoder_only_plan
from lmkit.exports.graphs import ExportPlan


def export_plan(model, cache_layout: str = "concat") -> ExportPlan:
    """cache_layout: "buffer" (onnxruntime's fused attention over buffers written in place) or "concat"."""
    config = model.decoder.config
    return decoder_only_plan(model, n_layers=config.n_layers, n_heads=config.n_heads,
                             head_dim=config.d_model // config.n_heads, vocab_size=config.vocab_size,
                             max_length=config.max_positions, cache_layout=cache_layout)


def gpt3_export_plan(model) -> ExportPlan:
    """GPT-2's graph, where each banded layer's cache is a window of its last band_width positions.

    The graph computes a banded layer on the window and the new tokens, (T, w + T) scores: O(w) per
    generated token, while a prompt of T tokens costs O(T * (w + T)) (the blocked O(T * w) form
    needs a branch on T, which a traced graph cannot take).
    """
    decoder = model.decoder
    config = decoder.config
    windows = {layer: config.band_width for layer, banded in enumerate(decoder.banded) if banded}
    return decoder_only_plan(model, n_layers=config.n_layers, n_heads=config.n_heads,
                             head_dim=config.d_model // config.n_heads, vocab_size=config.vocab_size,
                             max_length=config.max_positions, windows=windows)
