"""The options of the AWD-LSTM decoder and its language-model objective (torch-free: specs are checked first).

Defaults are fastai's AWD-LSTM language model (fastai text/models/awdlstm.py, awd_lstm_lm_config),
the model ULMFiT (Howard and Ruder 2018) pretrains on WikiText-103: 3 layers, 1152 units, 400-d
embeddings, the last layer as wide as the embedding so the decoder is tied to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DROPOUTS = ("embed_dropout", "input_dropout", "hidden_dropout", "weight_dropout", "output_dropout")


@dataclass(frozen=True)
class AWDLSTMConfig:
    vocab_size: int = 60000  # fastai's WikiText-103 vocabulary
    d_embed: int = 400
    hidden_size: int = 1152  # the paper's 1150, rounded to a multiple of 8 by fastai
    n_layers: int = 3
    # The five dropouts of Merity et al. 2018, at fastai's language-model values (ULMFiT §4 fine-tunes its
    # classifier with 0.05 / 0.4 / 0.3 / 0.5 / 0.4: set them with --set decoder.<name>=...).
    embed_dropout: float = field(default=0.02, metadata={"help": "whole embedding rows (words) dropped"})
    input_dropout: float = field(default=0.25, metadata={"help": "locked dropout on the embedded input"})
    hidden_dropout: float = field(default=0.15, metadata={"help": "locked dropout between LSTM layers"})
    weight_dropout: float = field(default=0.2, metadata={"help": "DropConnect on the hidden-to-hidden weights"})
    output_dropout: float = field(default=0.1, metadata={"help": "locked dropout on the last layer's output"})
    tie_weights: bool = True  # the output layer is the embedding matrix (Inan et al. 2017; Press and Wolf 2017)
    init_range: float = 0.1  # the embedding from U(-0.1, 0.1) (fastai's initrange); LSTMs keep torch's init

    def __post_init__(self):
        for name in ("vocab_size", "d_embed", "hidden_size", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in DROPOUTS:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.init_range > 0:
            raise ValueError(f"init_range must be positive, got {self.init_range}")


@dataclass(frozen=True)
class AWDLanguageModelOptions:
    """Next-token cross-entropy plus activation regularisation (Merity et al. 2018 §4.6), in training only."""

    ar_alpha: float = field(default=2.0, metadata={"help": "AR: alpha * mean(dropped last-layer output^2)"})
    tar_beta: float = field(default=1.0, metadata={"help": "TAR: beta * mean((h_t - h_{t-1})^2), raw output"})
    label_smoothing: float = 0.0

    def __post_init__(self):
        for name in ("ar_alpha", "tar_beta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
