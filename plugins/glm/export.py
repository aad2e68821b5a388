"""How a GLM decoder becomes ONNX: lmkit's decoder-only graph with GLM's cache geometry."""
from __future__ import annotations

from lmkit.exports.decoder_only import decoder_only_plan
from lmkit.exports.graphs import ExportPlan


def export_plan(model) -> ExportPlan:
    config = model.decoder.config
    return decoder_only_plan(model, n_layers=config.n_layers, n_heads=config.n_heads,
                             head_dim=config.d_model // config.n_heads, vocab_size=config.vocab_size,
                             max_length=config.max_positions)
