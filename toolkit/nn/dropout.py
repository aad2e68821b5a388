"""The dropouts of regularised recurrent language models (Merity et al. 2018, AWD-LSTM; Gal and
Ghahramani 2016), as functions on tensors, so no module's attributes are ever rewritten.

    embedding_dropout   drops whole rows of the embedding matrix (words), scaled by 1/(1-p)
    locked_dropout      one mask per sequence, the same at every time step: (B, 1, D)
    weight_drop         DropConnect on a weight matrix (AWD-LSTM: the hidden-to-hidden ones)

The reference implementations of weight drop (salesforce/awd-lstm-lm's WeightDrop, fastai's
WeightDropout) delete a registered parameter of nn.LSTM and set a plain tensor in its place before
each call; that breaks across PyTorch releases (pytorch#32346, salesforce/awd-lstm-lm#120) and
warns about non-contiguous cuDNN weights. Here the dropped matrix is computed and passed to the
LSTM kernel as an argument (lmkit.nn.recurrent.lstm_layer), and the
module's parameters are never touched.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def embedding_dropout(weight: Tensor, p: float, training: bool) -> Tensor:
    """The embedding matrix (V, E) with whole rows zeroed with probability p, the others scaled by 1/(1-p).

    A dropped word is dropped at every position it occurs in the batch (Merity et al. 2018 §4.3;
    Gal and Ghahramani 2016). Identity when not training or p == 0.
    """
    if not training or p == 0:
        return weight
    keep = weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)  # (V, 1)
    return weight * keep


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """x (B, T, D) with one dropout mask per sequence, (B, 1, D), shared by every time step.

    Variational dropout (Gal and Ghahramani 2016; Merity et al. 2018 §4.2); survivors scaled by 1/(1-p).
    Identity when not training or p == 0.
    """
    if not training or p == 0:
        return x
    return x * locked_mask(x.size(0), x.size(2), p, x)


def locked_mask(batch: int, features: int, p: float, like: Tensor) -> Tensor:
    """A locked-dropout mask (batch, 1, features) in like's dtype and device: 0 with probability p, else
    1/(1-p). Drawn once per forward pass and multiplied into every time step (see locked_dropout)."""
    return like.new_empty(batch, 1, features).bernoulli_(1 - p) / (1 - p)


def weight_drop(weight: Tensor, p: float, training: bool) -> Tensor:
    """DropConnect (Wan et al. 2013) on a weight matrix: each entry zeroed with probability p, the rest
    scaled by 1/(1-p); one mask per call, so per batch, the same at every time step (Merity et al.
    2018 §2). Returns a new tensor; the parameter itself is untouched. Identity when not training."""
    return F.dropout(weight, p, training=training) if training and p > 0 else weight



class Dropout(nn.Dropout):
    """nn.Dropout that returns its input untouched, without a call into torch, when not training or p == 0.

    Same parameters, state and training behaviour as nn.Dropout. A decoding step of a small
    transformer calls a dropout about three times per layer; nn.Dropout's eval-mode call costs about
    4 us of Python and dispatch, this one about 1 (gpt-mini: 13 calls a token).
    """

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return input
        return F.dropout(input, self.p, True, self.inplace)
