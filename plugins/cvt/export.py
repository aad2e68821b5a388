"""CVT's export: the encoder graph (the primary module's hidden layer), to which an export of a fine-tuned
tagger adds the token head's linear layer (lmkit.exports.heads): the primary module alone, no auxiliary one.

    input_ids (B, T), attention_mask (B, T) -> last_hidden_state (B, T, d_projection), pooler_output (B, d_projection)

The LSTMs become ONNX LSTM ops; layer 2 reads a padded batch through lmkit.nn.lstm's unpacked path.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmkit.exports.graphs import (
    BATCH,
    ENCODER,
    SEQUENCE,
    ExportPlan,
    Graph,
    ShapeSet,
    TensorInfo,
    right_padded_shape_set,
)

ARCHITECTURE = ENCODER  # served by the core encoder-only runtime


class CVTGraph(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        output = self.encoder(input_ids, attention_mask.bool())
        return output.last_hidden_state, output.pooler_output


def export_plan(model) -> ExportPlan:
    encoder = model.encoder
    D, vocab = encoder.d_model, encoder.config.vocab_size
    rng = np.random.default_rng(0)

    def shape_set(batch: int, tokens: int) -> ShapeSet:
        return right_padded_shape_set(rng, vocab, batch, tokens)

    example = shape_set(2, 7)
    graph = Graph(
        "model", CVTGraph(encoder).eval(),
        [TensorInfo("input_ids", "int64", (BATCH, SEQUENCE)), TensorInfo("attention_mask", "int64", (BATCH, SEQUENCE))],
        [TensorInfo("last_hidden_state", "float32", (BATCH, SEQUENCE, D)), TensorInfo("pooler_output", "float32", (BATCH, D))],
        example=tuple(torch.from_numpy(example.inputs[name]) for name in ("input_ids", "attention_mask")),
        validation=[shape_set(b, t) for b, t in ((1, 9), (3, 11), (4, 5), (1, 1))],
        scores=None, exporter="legacy")
    return ExportPlan(ARCHITECTURE, [graph], dimensions={"max_length": None, "d_model": D, "vocab_size": vocab,
                                                        "type_vocab_size": 0,
                                                        "pooled": "mean of the primary hidden layer over real tokens"})
