"""The bigram as an ONNX graph of its own architecture, "last-token": input_ids (B, T) -> logits (B, T, V).

A bigram reads only the current token, so its graph needs no cache, mask or positions; the plugin
brings the runtime that serves such graphs (runtime.py) through the register_export_runtimes hook.
"""
import numpy as np
import torch
from torch import nn

from lmkit.exports.graphs import BATCH, SEQUENCE, ExportPlan, Graph, ShapeSet, TensorInfo

ARCHITECTURE = "last-token"


class Logits(nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids):
        return self.decoder(input_ids)


def export_plan(model) -> ExportPlan:
    V = model.decoder.config.vocab_size
    rng = np.random.default_rng(0)

    def shape_set(batch: int, tokens: int) -> ShapeSet:
        ids = rng.integers(0, V, size=(batch, tokens), dtype=np.int64)
        return ShapeSet(label={"batch_size": batch, "tokens": tokens}, inputs={"input_ids": ids})

    graph = Graph(name="model", module=Logits(model.decoder).eval(),
                  inputs=[TensorInfo("input_ids", "int64", (BATCH, SEQUENCE))],
                  outputs=[TensorInfo("logits", "float32", (BATCH, SEQUENCE, V))],
                  example=(torch.from_numpy(shape_set(2, 3).inputs["input_ids"]),),
                  validation=[shape_set(1, 5), shape_set(3, 1), shape_set(2, 7)])
    return ExportPlan(ARCHITECTURE, [graph], {"vocab_size": V, "max_length": None})
