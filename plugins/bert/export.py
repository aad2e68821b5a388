"""How a BERT-family encoder becomes ONNX: one graph from token ids to hidden states, pooled output
and the pre-training heads' logits (what `lmkit embed` and the heads read from an export).

    inputs   input_ids (B, T) int64, attention_mask (B, T) int64 (1 real, 0 padding),
             token_type_ids (B, T) int64
    outputs  last_hidden_state (B, T, H), pooler_output (B, H),
             logits (B, T, vocab) with masked-lm, sentence_logits (B, 2) with next-sentence / sentence-order

The names are optimum's for BERT-style feature extraction (last_hidden_state, pooler_output).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from lmkit.exports.graphs import BATCH, ENCODER, SEQUENCE, ExportPlan, Graph, ShapeSet, TensorInfo

# (batch, tokens) validation runs at; the first row of a batch > 1 is right-padded.
VALIDATION_SHAPES = ((1, 17), (3, 17), (2, 5))
EXAMPLE_SHAPE = (2, 7)  # distinct sizes >= 2, so no symbolic axis is specialised
PADDING = 3
SENTENCE_OBJECTIVES = ("next-sentence", "sentence-order")


class EncoderGraph(nn.Module):
    """forward(input_ids, attention_mask, token_type_ids) -> (last_hidden_state, pooler_output, *head logits)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.mlm = "masked-lm" in model.objectives
        self.sentence = next((name for name in SENTENCE_OBJECTIVES if name in model.objectives), None)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor):
        model = self.model
        encoded = model.encoder(input_ids, attention_mask.bool(), token_type_ids)
        states = encoded.last_hidden_state  # (B, T, H)
        outputs = [states, encoded.pooler_output]
        if self.mlm:
            outputs.append(model.objectives["masked-lm"].logits(model, states))  # (B, T, V)
        if self.sentence:
            outputs.append(model.objectives[self.sentence].logits(model, encoded))  # (B, 2)
        return tuple(outputs)


def export_plan(model) -> ExportPlan:
    encoder = model.encoder
    config = encoder.config
    module = EncoderGraph(model).eval()
    inputs = [TensorInfo(name, "int64", (BATCH, SEQUENCE)) for name in ("input_ids", "attention_mask",
                                                                         "token_type_ids")]
    outputs = [TensorInfo("last_hidden_state", "float32", (BATCH, SEQUENCE, config.d_model)),
               TensorInfo("pooler_output", "float32", (BATCH, config.d_model))]
    if module.mlm:
        outputs.append(TensorInfo("logits", "float32", (BATCH, SEQUENCE, config.vocab_size)))
    if module.sentence:
        outputs.append(TensorInfo("sentence_logits", "float32", (BATCH, 2)))
    rng = np.random.default_rng(0)
    types = max(1, config.type_vocab_size)

    def shape_set(batch: int, tokens: int) -> ShapeSet:
        ids = rng.integers(0, config.vocab_size, size=(batch, tokens), dtype=np.int64)
        mask = np.ones((batch, tokens), dtype=np.int64)
        if batch > 1:
            mask[0, tokens - min(PADDING, tokens - 1):] = 0
        token_types = np.zeros((batch, tokens), dtype=np.int64)
        token_types[:, tokens // 2:] = types - 1  # a second segment where the model has one
        return ShapeSet(label={"batch_size": batch, "tokens": tokens},
                        inputs={"input_ids": ids, "attention_mask": mask, "token_type_ids": token_types},
                        scored=mask.astype(bool) if module.mlm else None)

    example = shape_set(*EXAMPLE_SHAPE)
    limit = encoder.max_positions
    graph = Graph(
        name="model", module=module, inputs=inputs, outputs=outputs,
        example=tuple(torch.from_numpy(example.inputs[t.name]) for t in inputs),
        validation=[shape_set(batch, min(tokens, limit)) for batch, tokens in VALIDATION_SHAPES],
        scores="logits" if module.mlm else None,
    )
    dimensions = {"max_length": limit, "d_model": config.d_model, "vocab_size": config.vocab_size,
                  "type_vocab_size": config.type_vocab_size, "pooled": "pooler" if config.pooler else "first token"}
    return ExportPlan(ENCODER, [graph], dimensions)
