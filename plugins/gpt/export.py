"""How a GPT-2 decoder becomes ONNX: lmkit's decoder-only graph, with GPT-2's cache geometry."""
from __future__ import annotations

from lmkit.exports.decoder_only import decoder_only_plan
from lmkit.exports.graphs import ExportPlan


def export_plan(model) -> ExportPlan:
    config = model.decoder.config
    return decoder_only_plan(model, n_layer=config.n_layer, n_head=config.n_head,
                             head_dim=config.n_embd // config.n_head, vocab_size=config.vocab_size,
                             max_length=config.n_positions)
