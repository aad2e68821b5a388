"""Task heads: a linear layer on each sequence's features, trained as an objective.

The features are what the model's family reads a whole sequence into: a decoder's final state at
GPT's extract token, an encoder's pooled [CLS] state. A batch holds B examples of S sequences each
(input_ids (B, S, T)); the head turns the S feature vectors of an example into its scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .options import SequenceHeadOptions, SpanHeadOptions, TokenHeadOptions
from .states import stack_states


def sequence_features(model, batch: dict) -> Tensor:
    """(B, S, H): the features of every sequence of the batch."""
    B, S, _ = batch["input_ids"].shape
    states = stack_states(model, batch)  # (B*S, T, H)
    if model.encoder is not None:
        features = model.encoder.pooled(states) if hasattr(model.encoder, "pooled") else states[:, 0]
    else:
        extract = batch["extract_index"].reshape(B * S)
        features = states[torch.arange(B * S, device=states.device), extract]
    return features.reshape(B, S, -1)


def _linear(d_model: int, outputs: int) -> nn.Linear:
    layer = nn.Linear(d_model, outputs)
    nn.init.normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


class SequenceHead(nn.Module):
    """Classification, similarity, regression or multiple choice from sequence features."""

    def __init__(self, options: SequenceHeadOptions):
        super().__init__()
        self.options = options
        self.dropout = nn.Dropout(options.dropout)
        self.score = _linear(options.d_model, options.num_labels)

    def scores(self, model, batch: dict) -> Tensor:
        """classification/similarity: (B, num_labels) logits; regression: (B,); multiple choice: (B, S)."""
        features = self.dropout(sequence_features(model, batch))  # (B, S, H)
        task = self.options.task
        if task == "multiple-choice":
            return self.score(features).squeeze(-1)  # one score per choice: (B, S)
        # similarity: the two orders' features added (GPT §3.3); otherwise S is 1
        logits = self.score(features.sum(1))  # (B, num_labels)
        return logits.squeeze(-1) if task == "regression" else logits

    def forward(self, model, batch: dict) -> Tensor:
        scores = self.scores(model, batch)
        if self.options.task == "regression":
            return F.mse_loss(scores.float(), batch["labels"].float())
        return F.cross_entropy(scores.float(), batch["labels"])

    @torch.no_grad()
    def predict(self, model, batch: dict) -> Tensor:
        """The predicted class (or choice) index per example, or the predicted value for regression."""
        scores = self.scores(model, batch)
        return scores.float() if self.options.task == "regression" else scores.argmax(-1)


class TokenHead(nn.Module):
    """A tag for every token; only tokens with a label (a word's first subword) count in the loss."""

    def __init__(self, options: TokenHeadOptions):
        super().__init__()
        self.options = options
        self.dropout = nn.Dropout(options.dropout)
        self.score = _linear(options.d_model, options.num_labels)

    def scores(self, model, batch: dict) -> Tensor:
        return self.score(self.dropout(stack_states(model, batch)))  # (B, T, num_labels)

    def forward(self, model, batch: dict) -> Tensor:
        scores = self.scores(model, batch)
        return F.cross_entropy(scores.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100)

    @torch.no_grad()
    def predict(self, model, batch: dict) -> Tensor:
        return self.scores(model, batch).argmax(-1)  # (B, T)


class SpanHead(nn.Module):
    """Start and end scores for every token; positions outside the context (and [CLS]) cannot answer."""

    def __init__(self, options: SpanHeadOptions):
        super().__init__()
        self.options = options
        self.dropout = nn.Dropout(options.dropout)
        self.qa_outputs = _linear(options.d_model, 2)  # Hugging Face's name

    def scores(self, model, batch: dict) -> Tensor:
        logits = self.qa_outputs(self.dropout(stack_states(model, batch))).float()  # (B, T, 2)
        return logits.masked_fill(~batch["answerable"][:, :, None], -1e4)

    def forward(self, model, batch: dict) -> Tensor:
        logits = self.scores(model, batch)
        start, end = logits.unbind(-1)  # (B, T) each
        return (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2

    @torch.no_grad()
    def predict(self, model, batch: dict) -> Tensor:
        return self.scores(model, batch)  # (B, T, 2): spans are chosen on the host, with the offsets
