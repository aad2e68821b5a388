"""ELMo's export: one encoder graph over right-padded batches, every layer and the scalar mix as outputs.

    input_ids (B, T), attention_mask (B, T)
      -> last_hidden_state (B, T, 2P)   the scalar mix (what lmkit embed gives by default)
         pooler_output (B, 2P)          the mix averaged over real tokens, what a sequence task head reads
         layers (B, L + 1, T, 2P)       [x; x], then [fwd_k; bwd_k] (lmkit embed --layers)

The projected LSTMs' time loop is TorchScript (lmkit.nn.projected_lstm), so the legacy exporter
keeps it an ONNX Loop over T; nn.LSTM(proj_size) has no clipping and does not export either
(pytorch#22740). The char table is a constant of the graph: the runtime passes token ids only.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmkit.exports.graphs import (
    BATCH,
    SEQUENCE,
    ExportPlan,
    Graph,
    ShapeSet,
    TensorInfo,
    right_padded_shape_set,
)

ARCHITECTURE = "elmo-bilm"


class ELMoGraph(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        output = self.encoder(input_ids, attention_mask.bool())
        return output.last_hidden_state, output.pooler_output, torch.stack(output.hidden_states, dim=1)


def export_plan(model) -> ExportPlan:
    encoder = model.encoder
    D, L = encoder.d_model, encoder.n_layers
    vocab = encoder.config.vocab_size
    rng = np.random.default_rng(0)

    def shape_set(batch: int, tokens: int) -> ShapeSet:
        return right_padded_shape_set(rng, vocab, batch, tokens)

    example = shape_set(2, 7)
    graph = Graph(
        "model", ELMoGraph(encoder).eval(),
        [TensorInfo("input_ids", "int64", (BATCH, SEQUENCE)), TensorInfo("attention_mask", "int64", (BATCH, SEQUENCE))],
        [TensorInfo("last_hidden_state", "float32", (BATCH, SEQUENCE, D)),
         TensorInfo("pooler_output", "float32", (BATCH, D)),
         TensorInfo("layers", "float32", (BATCH, L, SEQUENCE, D))],
        example=tuple(torch.from_numpy(example.inputs[name]) for name in ("input_ids", "attention_mask")),
        validation=[shape_set(b, t) for b, t in ((1, 9), (3, 11), (4, 5), (1, 1))],
        scores=None, exporter="legacy")
    return ExportPlan(ARCHITECTURE, [graph], dimensions={"max_length": None, "d_model": D, "vocab_size": vocab,
                                                        "type_vocab_size": 0, "pooled": "mean of the mix over real tokens",
                                                        "n_layers": L},
                      # onnxruntime refuses int8 on the stacked directions' weights (MatMulInteger zero points) and
                      # fp16 inside the time Loop: fp32 only (benchmarks/bench_elmo.py measures a per-tensor int8).
                      precisions=("fp32",))
