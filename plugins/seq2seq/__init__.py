"""Seq2Seq (Sutskever et al. 2014), attentional NMT (Bahdanau et al. 2015, Luong et al. 2015) and CoVe
(McCann et al. 2017): LSTM encoders and decoders, Sutskever et al.'s SGD and halving schedule, and the
presets; they train with the core's `seq2seq` objective.

Only registration lives here, so loading the plugin does not import torch; the modules are in
model.py, the LSTM stacks they share with other recurrent families in lmkit.nn.lstm.
"""
from lmkit.hookspecs import hookimpl


@hookimpl
def register_encoders(register):
    register("seq2seq-lstm", "lmkit.plugins.seq2seq.model:LSTMEncoder",
             options="lmkit.plugins.seq2seq.config:LSTMEncoderConfig",
             summary="multi-layer LSTM encoder reading the source reversed (Sutskever et al. 2014)")
    register("nmt-bilstm", "lmkit.plugins.seq2seq.model:LSTMEncoder",
             options="lmkit.plugins.seq2seq.config:NMTEncoderConfig",
             summary="2-layer bidirectional LSTM encoder, CoVe's MT-LSTM (McCann et al. 2017)")
    register("cove", "lmkit.plugins.seq2seq.cove:CoVeEncoder", options="lmkit.plugins.seq2seq.config:CoVeConfig",
             summary="a trained NMT encoder, frozen: [embedding or GloVe; MT-LSTM state] per token (CoVe)")


@hookimpl
def register_decoders(register):
    register("seq2seq-lstm", "lmkit.plugins.seq2seq.model:LSTMDecoder",
             options="lmkit.plugins.seq2seq.config:LSTMDecoderConfig",
             summary="multi-layer LSTM decoder started from the encoder's final state (Sutskever et al. 2014)")
    register("nmt-attention", "lmkit.plugins.seq2seq.model:LSTMDecoder",
             options="lmkit.plugins.seq2seq.config:NMTDecoderConfig",
             summary="LSTM decoder with attention (additive/general/dot) and input feeding (Bahdanau, Luong)")


@hookimpl
def register_exporters(register):
    register("decoder.seq2seq-lstm", "lmkit.plugins.seq2seq.export:export_plan",
             summary="an encoder graph and a decoder-step graph, LSTM state in and out")
    register("decoder.nmt-attention", "lmkit.plugins.seq2seq.export:export_plan",
             summary="an encoder graph and a decoder-step graph, LSTM state and encoder states in and out")
    register("encoder.cove", "lmkit.plugins.seq2seq.export:cove_export_plan",
             summary="one encoder graph over padded batches: [word vector; MT-LSTM state] per token, first position pooled")


@hookimpl
def register_optimizers(register):
    register("sgd", "lmkit.plugins.seq2seq.training:SGD", options="lmkit.plugins.seq2seq.training:SGDOptions",
             summary="plain SGD, no weight decay (Sutskever et al. 2014: lr 0.7)")


@hookimpl
def register_schedules(register):
    register("halving", "lmkit.plugins.seq2seq.training:Halving",
             options="lmkit.plugins.seq2seq.training:HalvingOptions",
             summary="constant, then halved every half epoch after 5 of 7.5 epochs (Sutskever et al. 2014)")


def _preset(summary: str, encoder: dict, decoder: dict, tokenizer: str = "bpe", num_beams: int = 12
            ) -> tuple[dict, str]:
    spec = {
        "tokenizer": {"type": tokenizer},
        "encoder": encoder,
        "decoder": decoder,
        "objectives": [{"type": "seq2seq", "weight": 1.0}],
        "decoding": {"strategy": "beam", "num_beams": num_beams, "max_new_tokens": 100},
    }
    return spec, summary


PRESETS = {
    "seq2seq-wmt14": _preset(
        "Sutskever et al. 2014: 4 layers x 1000 LSTM encoder (reversed source) and decoder, 160k/80k vocab",
        {"type": "seq2seq-lstm"}, {"type": "seq2seq-lstm"}),
    "seq2seq-tiny": _preset(
        "a Seq2Seq for tests: 2 layers x 64, vocab 512",
        {"type": "seq2seq-lstm", "vocab_size": 512, "d_embed": 32, "hidden_size": 64, "n_layers": 2, "init_range": 0.3},
        {"type": "seq2seq-lstm", "vocab_size": 512, "d_embed": 32, "hidden_size": 64, "n_layers": 2,
         "d_encoder": 64, "init_range": 0.3}, num_beams=4),
    "nmt-cove": _preset(
        "attentional NMT with CoVe's MT-LSTM: 2-layer BiLSTM 300 encoder, 2-layer LSTM 600 decoder, "
        "general attention, input feeding",
        {"type": "nmt-bilstm"}, {"type": "nmt-attention"}),
    "nmt-tiny": _preset(
        "an attentional NMT for tests: BiLSTM 2 x 32 encoder, LSTM 2 x 64 decoder, vocab 512",
        {"type": "nmt-bilstm", "vocab_size": 512, "d_embed": 32, "hidden_size": 32, "dropout": 0.0, "init_range": 0.3},
        {"type": "nmt-attention", "vocab_size": 512, "d_embed": 32, "hidden_size": 64, "d_encoder": 64,
         "dropout": 0.0, "init_range": 0.3}, num_beams=4),
}


# CoVe wraps a trained NMT model: compose it with --set encoder.model=RUNS/NMT (and that model's tokenizer).
COVE_PRESETS = {
    "cove-tiny": ({"tokenizer": {"type": "bpe"}, "encoder": {"type": "cove", "model": ""}},
                  "CoVe features of an NMT model for tests: give --set encoder.model=DIR (an nmt-tiny model)"),
}


@hookimpl
def register_presets(register):
    for name, (spec, summary) in {**PRESETS, **COVE_PRESETS}.items():
        register(name, spec, summary=summary)
