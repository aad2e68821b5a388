"""How an AWD-LSTM language model becomes ONNX: one graph, its recurrent state in and out.

    inputs   input_ids (batch, sequence) int64, state.h.{i} / state.c.{i} (batch, size of layer i)
    outputs  logits (batch, sequence, vocab), present.h.{i} / present.c.{i}: the state after the tokens

One graph serves the prompt and every step after it: the runtime (runtime.py, architecture
"recurrent-lm") feeds each present back as the next state, starting from zeros. The layers have
different widths (the last is the embedding's), so each has its own state tensors. Traced with the
legacy exporter, as lmkit's other LSTM graphs, so the time axis stays symbolic.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmkit.exports.graphs import BATCH, SEQUENCE, ExportPlan, Graph, ShapeSet, TensorInfo
from lmkit.nn.recurrent import RecurrentCache

from .runtime import ARCHITECTURE


class StepGraph(nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids, *states):
        cache = RecurrentCache(list(states))
        logits = self.decoder(input_ids, cache)
        return (logits, *cache.states)


def state_names(n_layers: int) -> list[str]:
    return [f"{kind}.{i}" for i in range(n_layers) for kind in ("h", "c")]


def export_plan(model) -> ExportPlan:
    decoder = model.decoder
    sizes, V = decoder.sizes, decoder.config.vocab_size
    names = state_names(len(sizes))
    widths = [size for size in sizes for _ in (0, 1)]
    rng = np.random.default_rng(0)

    def inputs(batch: int, tokens: int) -> dict:
        values = {"input_ids": rng.integers(0, V, size=(batch, tokens), dtype=np.int64)}
        values.update({f"state.{name}": rng.normal(0, 0.5, (batch, width)).astype(np.float32)
                       for name, width in zip(names, widths)})
        return values

    example = inputs(2, 3)
    graph = Graph(
        "model", StepGraph(decoder).eval(),
        [TensorInfo("input_ids", "int64", (BATCH, SEQUENCE)),
         *[TensorInfo(f"state.{name}", "float32", (BATCH, width)) for name, width in zip(names, widths)]],
        [TensorInfo("logits", "float32", (BATCH, SEQUENCE, V)),
         *[TensorInfo(f"present.{name}", "float32", (BATCH, width)) for name, width in zip(names, widths)]],
        example=tuple(torch.from_numpy(value) for value in example.values()),
        validation=[ShapeSet({"batch_size": b, "sequence_length": t}, inputs(b, t)) for b, t in ((1, 9), (3, 1), (4, 6))],
        cache=[(f"state.{name}", f"present.{name}") for name in names], exporter="legacy")
    return ExportPlan(ARCHITECTURE, [graph], {"vocab_size": V, "max_length": None, "n_layers": len(sizes),
                                               "state_sizes": list(sizes)})
