"""How an LSTM encoder-decoder becomes ONNX: an encoder graph and a decoder-step graph.

encoder.onnx   input_ids (batch, source_length) -> the decoder's starting state: state.h / state.c
               (layers, batch, hidden), and with attention encoder_states / encoder_keys
               (batch, source_length, D / K). It reads unpadded sources: the layout says "one-by-one",
               so the runtime runs it once per sentence (the ONNX LSTM op would read padding), then
               pads the states along source_length and builds the mask.
decoder.onnx   input_ids (batch, 1), state.h, state.c, [state.feed (batch, hidden)], [encoder_states,
               encoder_keys, encoder_mask (batch, source_length)] -> logits (batch, vocab) and
               present.h / present.c / [present.feed]: the recurrent state out, fed back at the next step.

The plan's EncoderDecoderLayout tells lmkit's generic encoder-decoder runtime how these connect:
state.h / state.c start from the encoder's outputs of those names (batch on axis 1), state.feed
from zeros, encoder_states / encoder_keys from the encoder once, encoder_mask from the sources.

Both are traced with the legacy exporter (dynamo=False): dynamo fixes a bidirectional LSTM's time
axis to the example's length (pytorch/pytorch#191855). Beam search stays outside the graphs.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmkit.exports.graphs import (
    BATCH,
    ENCODER_DECODER,
    SOURCE,
    EncoderDecoderLayout,
    ExportPlan,
    Feed,
    Graph,
    ShapeSet,
    TensorInfo,
)


class EncoderGraph(nn.Module):
    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, input_ids):
        state = self.decoder.start(self.encoder(input_ids))
        outputs = [state["h"], state["c"]]
        if self.decoder.attending:
            outputs += [state["memory"], state["keys"]]
        return tuple(outputs)


class DecoderStep(nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids, h, c, *rest):
        rest = list(rest)
        state = {"h": h, "c": c}
        if self.decoder.config.input_feeding:
            state["feed"] = rest.pop(0)
        if self.decoder.attending:
            state["memory"], state["keys"], state["mask"] = rest
        logits, state = self.decoder(input_ids, state)
        outputs = [logits[:, -1], state["h"], state["c"]]
        if self.decoder.config.input_feeding:
            outputs.append(state["feed"])
        return tuple(outputs)


def export_plan(model) -> ExportPlan:
    encoder, decoder = model.encoder, model.decoder
    config = decoder.config
    L, H, V = config.n_layers, config.hidden_size, config.vocab_size
    D = encoder.d_model
    K = H if config.attention == "additive" else D
    attending, feeding = decoder.attending, config.input_feeding

    encoder_outputs = [TensorInfo("state.h", "float32", (L, BATCH, H)), TensorInfo("state.c", "float32", (L, BATCH, H))]
    if attending:
        encoder_outputs += [TensorInfo("encoder_states", "float32", (BATCH, SOURCE, D)),
                            TensorInfo("encoder_keys", "float32", (BATCH, SOURCE, K))]
    rng = np.random.default_rng(0)
    vocab = encoder.config.vocab_size

    def ids(batch, length):
        return rng.integers(0, vocab, size=(batch, length)).astype(np.int64)

    encoder_graph = Graph(
        "encoder", EncoderGraph(encoder, decoder).eval(), [TensorInfo("input_ids", "int64", (BATCH, SOURCE))],
        encoder_outputs, example=(torch.from_numpy(ids(2, 7)),),
        validation=[ShapeSet({"batch_size": b, "source_length": s}, {"input_ids": ids(b, s)})
                    for b, s in ((1, 1), (1, 11), (3, 4))],
        scores=None, exporter="legacy")

    inputs = [TensorInfo("input_ids", "int64", (BATCH, 1)), TensorInfo("state.h", "float32", (L, BATCH, H)),
              TensorInfo("state.c", "float32", (L, BATCH, H))]
    outputs = [TensorInfo("logits", "float32", (BATCH, V)), TensorInfo("present.h", "float32", (L, BATCH, H)),
               TensorInfo("present.c", "float32", (L, BATCH, H))]
    cache = [("state.h", "present.h"), ("state.c", "present.c")]
    if feeding:
        inputs.append(TensorInfo("state.feed", "float32", (BATCH, H)))
        outputs.append(TensorInfo("present.feed", "float32", (BATCH, H)))
        cache.append(("state.feed", "present.feed"))
    if attending:
        inputs += [TensorInfo("encoder_states", "float32", (BATCH, SOURCE, D)),
                   TensorInfo("encoder_keys", "float32", (BATCH, SOURCE, K)),
                   TensorInfo("encoder_mask", "bool", (BATCH, SOURCE))]

    def step_inputs(batch, source):
        values = {"input_ids": ids(batch, 1),
                  "state.h": rng.normal(0, 0.5, (L, batch, H)).astype(np.float32),
                  "state.c": rng.normal(0, 0.5, (L, batch, H)).astype(np.float32)}
        if feeding:
            values["state.feed"] = rng.normal(0, 0.5, (batch, H)).astype(np.float32)
        if attending:
            values["encoder_states"] = rng.normal(0, 0.5, (batch, source, D)).astype(np.float32)
            values["encoder_keys"] = rng.normal(0, 0.5, (batch, source, K)).astype(np.float32)
            mask = np.ones((batch, source), dtype=np.bool_)
            mask[0, source // 2 + 1:] = False  # a padded row
            values["encoder_mask"] = mask
        return values

    example = tuple(torch.from_numpy(v) for v in step_inputs(2, 7).values())
    decoder_graph = Graph(
        "decoder", DecoderStep(decoder).eval(), inputs, outputs, example=example,
        validation=[ShapeSet({"batch_size": b, "source_length": s}, step_inputs(b, s))
                    for b, s in ((1, 1), (1, 11), (5, 4))],
        cache=cache, exporter="legacy")
    feeds = [Feed("state.h", "encoder", "state.h"), Feed("state.c", "encoder", "state.c")]
    if feeding:
        feeds.append(Feed("state.feed", "zeros"))
    if attending:
        feeds += [Feed("encoder_states", "encoder", "encoder_states"), Feed("encoder_keys", "encoder", "encoder_keys"),
                  Feed("encoder_mask", "source_mask")]
    layout = EncoderDecoderLayout(feeds, batching="one-by-one", encoder_mask=None)
    return ExportPlan(ENCODER_DECODER, [encoder_graph, decoder_graph], layout=layout,
                      dimensions={"vocab_size": V, "max_positions": encoder.config.max_positions,
                                  "n_layers": L, "hidden_size": H, "attention": config.attention,
                                  "input_feeding": feeding})


# -- CoVe: the frozen MT-LSTM as an encoder-only export ------------------------------------------------


class CoVeGraph(nn.Module):
    """forward(input_ids, attention_mask) -> (last_hidden_state, pooler_output): the `cove` encoder's
    features, [word vector; MT-LSTM state] per token, and the first position's, which is what a task
    head on a stack without a pooler reads (lmkit.tasks.recipes.EncoderRecipe)."""

    def __init__(self, cove):
        super().__init__()
        self.cove = cove

    def forward(self, input_ids, attention_mask):
        states = self.cove(input_ids, attention_mask.bool()).last_hidden_state  # (B, S, G + D)
        return states, states[:, 0]


def cove_export_plan(model) -> ExportPlan:
    """One encoder graph over right-padded batches, like a BERT encoder's, so lmkit embed, predict
    and a task head run on it as on theirs.

    Unlike the NMT encoder graph above (one unpadded sentence per run), this one reads padded
    batches: traced with a padded batch, lmkit.nn.lstm.LSTMStack runs each direction as a
    left-to-right LSTM over the rows reversed in place (`LSTMStack.unpacked`), so no real token's
    state reads padding. Validation checks it on batches with padded rows. The word vectors (the
    NMT embedding, or a GloVe file given as `vectors`) are constants of the graph.
    """
    from lmkit.exports.graphs import ENCODER, SEQUENCE, right_padded_shape_set

    cove = model.encoder
    D = cove.d_model
    vocab = cove.mt_lstm.config.vocab_size
    limit = cove.max_positions
    rng = np.random.default_rng(0)

    def shape_set(batch: int, tokens: int) -> ShapeSet:
        return right_padded_shape_set(rng, vocab, batch, tokens)

    example = shape_set(2, 7)
    graph = Graph(
        "model", CoVeGraph(cove).eval(),
        [TensorInfo("input_ids", "int64", (BATCH, SEQUENCE)), TensorInfo("attention_mask", "int64", (BATCH, SEQUENCE))],
        [TensorInfo("last_hidden_state", "float32", (BATCH, SEQUENCE, D)),
         TensorInfo("pooler_output", "float32", (BATCH, D))],
        example=tuple(torch.from_numpy(example.inputs[name]) for name in ("input_ids", "attention_mask")),
        validation=[shape_set(b, min(t, limit)) for b, t in ((1, 9), (3, 11), (4, 5))],
        scores=None, exporter="legacy")
    return ExportPlan(ENCODER, [graph], dimensions={"max_length": limit, "d_model": D, "vocab_size": vocab,
                                                   "type_vocab_size": 0, "pooled": "first token"})
