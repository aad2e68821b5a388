"""ELMo's export: one encoder graph over right-padded batches, every layer and the scalar mix as outputs.

    char_ids (B, T, C), attention_mask (B, T)
      -> last_hidden_state (B, T, 2P)   the scalar mix (what lmkit embed gives by default)
         pooler_output (B, 2P)          the mix averaged over real tokens, what a sequence task head reads
         layers (B, L + 1, T, 2P)       [x; x], then [fwd_k; bwd_k] (lmkit embed --layers)

The projected LSTMs' time loop is TorchScript (lmkit.nn.projected_lstm), so the legacy exporter
keeps it an ONNX Loop over T; nn.LSTM(proj_size) has no clipping and does not export either
(pytorch#22740). The graph reads characters, not token ids: the runtime spells every token, a word
outside the vocabulary by its own characters (lmkit.token_inputs, named in the manifest's dimensions).
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
from lmkit.nn.char_ids import word_char_ids

ARCHITECTURE = "elmo-bilm"


class ELMoGraph(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, char_ids, attention_mask):
        # The ids only give the shape once char_ids are given: the mask stands in for them.
        output = self.encoder(attention_mask, attention_mask.bool(), char_ids=char_ids)
        return output.last_hidden_state, output.pooler_output, torch.stack(output.hidden_states, dim=1)


def export_plan(model) -> ExportPlan:
    encoder = model.encoder
    D, L, C = encoder.d_model, encoder.n_layers, encoder.config.max_characters_per_token
    vocab = encoder.config.vocab_size
    rng = np.random.default_rng(0)
    table = encoder.char_table.cpu().numpy()

    def shape_set(batch: int, tokens: int) -> ShapeSet:
        """The vocabulary's spelling of random ids, a third of the tokens respelled as random words of
        random bytes (words outside any vocabulary)."""
        shapes = right_padded_shape_set(rng, vocab, batch, tokens)
        chars = table[shapes.inputs.pop("input_ids")]
        for b, t in zip(*np.nonzero(rng.random((batch, tokens)) < 1 / 3)):
            word = bytes(rng.integers(33, 256, size=rng.integers(1, C)).tolist()).decode("latin-1")
            chars[b, t] = word_char_ids(word, C)
        shapes.inputs = {"char_ids": chars, **shapes.inputs}
        return shapes

    example = shape_set(2, 7)
    graph = Graph(
        "model", ELMoGraph(encoder).eval(),
        [TensorInfo("char_ids", "int64", (BATCH, SEQUENCE, C)),
         TensorInfo("attention_mask", "int64", (BATCH, SEQUENCE))],
        [TensorInfo("last_hidden_state", "float32", (BATCH, SEQUENCE, D)),
         TensorInfo("pooler_output", "float32", (BATCH, D)),
         TensorInfo("layers", "float32", (BATCH, L, SEQUENCE, D))],
        example=tuple(torch.from_numpy(example.inputs[name]) for name in ("char_ids", "attention_mask")),
        validation=[shape_set(b, t) for b, t in ((1, 9), (3, 11), (4, 5), (1, 1))],
        scores=None, exporter="legacy")
    return ExportPlan(ARCHITECTURE, [graph], dimensions={"max_length": None, "d_model": D, "vocab_size": vocab,
                                                        "type_vocab_size": 0, "pooled": "mean of the mix over real tokens",
                                                        "n_layers": L},
                      # fp16 runs once the time Loop's carried cell and projection lose the one symbolic shape
                      # the exporter gave both (lmkit.exports.precision.loose_loop_state_shapes); int8 quantizes
                      # the stacked directions' weights per tensor (lmkit.exports.precision.to_int8).
                      precisions=("fp32", "fp16", "int8"))
