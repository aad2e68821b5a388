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

from lmkit.exports.graphs import (
    BATCH,
    SEQUENCE,
    ExportPlan,
    Graph,
    ShapeSet,
    TensorInfo,
    right_padded_shape_set,
)
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


class ClassifierGraph(nn.Module):
    """forward(input_ids, attention_mask) -> (last_hidden_state, pooler_output) of a fine-tuned classifier:
    the LM's states over the right-padded batch in one pass (what BPT3C's chunks with the state carried
    compute), and the recipe's concat pooling through the head's pooler (batch norm, linear, ReLU,
    batch norm): what the head's last linear layer reads, which the export runtime applies in numpy."""

    def __init__(self, model, recipe, head):
        super().__init__()
        self.decoder, self.recipe, self.pooler = model.decoder, recipe, head.pooler if head is not None else None

    def forward(self, input_ids, attention_mask):
        from lmkit.contract import EncoderOutput

        mask = attention_mask.bool()
        states = self.decoder.hidden_states(input_ids)  # (B, T, E); padding is read after every real token
        last = mask.long().sum(1) - 1  # the ulmfit inputs read features at the last real token
        features = self.recipe.features(EncoderOutput(states, mask), last)  # (B, 3E)
        pooled = self.pooler(features) if self.pooler is not None else features
        return states * mask[..., None].to(states.dtype), pooled


# In fp16, the embedding lookup and the output projection (the vocabulary-wide product) run in half
# precision; these stay fp32:
#   LSTM       the recurrence carries its cell state across the whole sequence inside one op: kept fp32, it
#              runs as validated on every provider (onnxruntime's CPU provider has no fp16 LSTM and would
#              run it in fp32 anyway, so an fp16 LSTM validated there would not be what a GPU runs);
#   Transpose  the time-major <-> batch-major transposes around the LSTMs: in fp16 (whether the LSTM is fp16
#              or not) onnxruntime 1.32's level-3 CPU layout optimizer (NchwcTransformer, on by default:
#              ORT_ENABLE_ALL) crashes the process with a segfault while creating the session.
FP32_OPS = ("LSTM", "Transpose")


def state_names(n_layers: int) -> list[str]:
    return [f"{kind}.{i}" for i in range(n_layers) for kind in ("h", "c")]


def export_plan(model) -> ExportPlan:
    """The language model's recurrent-lm graph; for a model fine-tuned with a task head, the
    classifier's encoder-only graph instead (classifier_plan)."""
    if any(name in model.objectives for name in ("sequence-head", "token-head", "span-head")):
        return classifier_plan(model)
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
        cache=[(f"state.{name}", f"present.{name}") for name in names], exporter="legacy", fp32_ops=FP32_OPS)
    return ExportPlan(ARCHITECTURE, [graph], {"vocab_size": V, "max_length": None, "n_layers": len(sizes),
                                               "state_sizes": list(sizes)})


def classifier_plan(model) -> ExportPlan:
    """A fine-tuned model as an encoder-only export: input_ids and attention_mask (batch, sequence) in,
    last_hidden_state (batch, sequence, E) and pooler_output (batch, head width) out, so lmkit predict
    runs it with the head's linear layer beside the graph as for a BERT export."""
    from lmkit.exports.graphs import ENCODER
    from lmkit.registry import get_host

    head = model.objectives["sequence-head"] if "sequence-head" in model.objectives else None
    part = next(o for o in model.spec.objectives if o.type in ("sequence-head", "token-head", "span-head"))
    recipe = get_host().instantiate("task-recipe", model.objectives[part.type].options.recipe)
    module = ClassifierGraph(model, recipe, head).eval()
    E, V = model.decoder.d_model, model.decoder.config.vocab_size
    width = head.score.in_features if head is not None else 3 * E
    rng = np.random.default_rng(0)

    def shape_set(batch: int, tokens: int) -> ShapeSet:
        return right_padded_shape_set(rng, V, batch, tokens)

    example = shape_set(2, 7)
    graph = Graph(
        "model", module,
        [TensorInfo("input_ids", "int64", (BATCH, SEQUENCE)), TensorInfo("attention_mask", "int64", (BATCH, SEQUENCE))],
        [TensorInfo("last_hidden_state", "float32", (BATCH, SEQUENCE, E)),
         TensorInfo("pooler_output", "float32", (BATCH, width))],
        example=tuple(torch.from_numpy(example.inputs[name]) for name in ("input_ids", "attention_mask")),
        validation=[shape_set(b, t) for b, t in ((1, 9), (3, 11), (4, 5))], scores=None, exporter="legacy",
        fp32_ops=FP32_OPS)
    return ExportPlan(ENCODER, [graph], dimensions={"max_length": None, "d_model": E, "vocab_size": V,
                                                   "type_vocab_size": 0, "pooled": f"{recipe.name} head's pooler"})
