"""The options of the recurrent encoders and decoders (torch-free: specs are checked against them first).

One encoder class and one decoder class serve both papers; the registered names differ in their
defaults: `seq2seq-lstm` is Sutskever et al. 2014 (4 x 1000, reversed source, decoder started from
the encoder's final state, no attention), `nmt-bilstm` / `nmt-attention` the attentional model of
Bahdanau et al. 2015 / Luong et al. 2015 with CoVe's MT-LSTM sizes (2-layer BiLSTM, 300 units).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ATTENTION = ("none", "additive", "general", "dot")


def _check(config, positive: tuple[str, ...]) -> None:
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(config, name)}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
    if not config.init_range > 0:
        raise ValueError(f"init_range must be positive, got {config.init_range}")


@dataclass(frozen=True)
class LSTMEncoderConfig:
    # Sutskever et al. §3.1: 160k source words, 1000-d embeddings, 4 layers of 1000 cells.
    vocab_size: int = 160000
    d_embed: int = 1000
    hidden_size: int = 1000  # per direction
    n_layers: int = 4
    bidirectional: bool = False
    # Reversing the source (not the target) took BLEU from 25.9 to 30.6 (§3.3): the first target
    # words start next to the source words they translate.
    reverse_source: bool = True
    dropout: float = 0.0  # between layers and on the embeddings
    init_range: float = 0.08  # every parameter from U(-0.08, 0.08) (§3.4)
    max_positions: int = 256  # longest source sentence, in tokens, that translate accepts

    def __post_init__(self):
        _check(self, ("vocab_size", "d_embed", "hidden_size", "n_layers", "max_positions"))


@dataclass(frozen=True)
class NMTEncoderConfig(LSTMEncoderConfig):
    # CoVe's MT-LSTM: LSTM(300, 300, num_layers=2, bidirectional=True) (salesforce/cove encoder.py).
    vocab_size: int = 32000
    d_embed: int = 300
    hidden_size: int = 300
    n_layers: int = 2
    bidirectional: bool = True
    reverse_source: bool = False  # a bidirectional encoder reads both ways anyway
    dropout: float = 0.2


@dataclass(frozen=True)
class LSTMDecoderConfig:
    vocab_size: int = 80000  # Sutskever et al.: 80k target words
    d_embed: int = 1000
    hidden_size: int = 1000
    n_layers: int = 4
    d_encoder: int = 1000  # size of the encoder's states: hidden_size x its directions
    # none: the decoder sees the source only through its initial state (Sutskever et al.);
    # additive: v^T tanh(W q + U h_j) (Bahdanau et al.); general: q^T W h_j; dot: q^T h_j (Luong et al.).
    attention: Literal["none", "additive", "general", "dot"] = "none"
    # Luong et al.: feed the last attentional vector h~_{t-1} with the next input word ([z; h~], as CoVe's decoder).
    input_feeding: bool = False
    # encoder: start from the encoder's final (h, c) per layer, through a linear bridge when the sizes
    # differ; zeros: start from zeros (attention has to carry the source).
    init_state: Literal["encoder", "zeros"] = "encoder"
    dropout: float = 0.0
    init_range: float = 0.08

    def __post_init__(self):
        _check(self, ("vocab_size", "d_embed", "hidden_size", "n_layers", "d_encoder"))
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {self.attention!r}")
        if self.input_feeding and self.attention == "none":
            raise ValueError("input_feeding feeds the attentional vector back; it needs attention other than none")
        if self.attention == "dot" and self.hidden_size != self.d_encoder:
            raise ValueError(f"dot attention needs hidden_size ({self.hidden_size}) equal to d_encoder "
                             f"({self.d_encoder}); use attention = \"general\"")


@dataclass(frozen=True)
class NMTDecoderConfig(LSTMDecoderConfig):
    # CoVe's MT decoder: 2-layer LSTM, input [z_{t-1}; h~_{t-1}], general attention,
    # h~_t = tanh(W2 [H^T a_t; h_t] + b2) (McCann et al. 2017 §3).
    vocab_size: int = 32000
    d_embed: int = 300
    hidden_size: int = 600
    n_layers: int = 2
    d_encoder: int = 600
    attention: Literal["none", "additive", "general", "dot"] = "general"
    input_feeding: bool = True
    dropout: float = 0.2
    init_range: float = 0.1


@dataclass(frozen=True)
class CoVeConfig:
    model: str = ""  # the NMT model directory whose encoder gives the features
    vectors: str = ""  # a GloVe-format text file of word vectors; empty: the encoder's own embeddings

    def __post_init__(self):
        if not isinstance(self.model, str) or not isinstance(self.vectors, str):
            raise ValueError("model and vectors are paths")
