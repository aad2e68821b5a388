"""The pre-training objectives of the BERT family: masked LM, next-sentence and sentence-order prediction.

Each objective holds its own head (`objectives.masked-lm.dense.weight`, ...), built for the encoder
of the model it trains (`for_model`). Masked LM says what data training reads (`batches`); the
sentence-pair objectives add a loss on the same batches. The encoder runs once per batch
(lmkit.objectives.states): the objectives share its states.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmkit.contract import EncoderOutput
from lmkit.errors import SpecError
from lmkit.nn import activation_module
from lmkit.objectives.base import ObjectiveModule
from lmkit.objectives.states import stack_output

from .config import MaskedLMOptions, SentencePairOptions
from .data import missing_special_tokens


def _encoder(model):
    if model.encoder is None:
        raise SpecError("objectives: the BERT-family objectives train an encoder and the spec has none; add [encoder] type = \"bert\"")
    return model.encoder


class MaskedLM(ObjectiveModule):
    """Predict the picked tokens from the encoder states (BERT §3.1, Task #1).

    Head (google-research/bert `get_masked_lm_output`): dense + activation + LayerNorm, then the
    token embedding as the output matrix (tied) plus a per-token bias. With ALBERT's factorised
    embedding the dense layer maps H down to E, the width of the embedding.
    """

    models_language = True  # the cross-entropy of the picked tokens: its exp is the MLM perplexity

    def __init__(self, options: MaskedLMOptions, d_model: int = 64, d_embed: int = 64,
                 vocab_size: int = 512, activation: str = "gelu", layer_norm_eps: float = 1e-12):
        super().__init__()
        self.options = options
        self.dense = nn.Linear(d_model, d_embed)
        self.act = activation_module(activation)
        self.LayerNorm = nn.LayerNorm(d_embed, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.trunc_normal_(self.dense.weight, std=0.02, a=-0.04, b=0.04)
        nn.init.zeros_(self.dense.bias)

    @classmethod
    def check_composition(cls, options, spec, tokenizer) -> None:
        """SpecError at compose time for a tokenizer without [CLS] [SEP] [MASK] [PAD] (a trial's unigram tokenizer
        was accepted by compose and refused only by train)."""
        reason = missing_special_tokens(tokenizer)
        if reason:
            raise SpecError(reason)

    @classmethod
    def for_model(cls, options: MaskedLMOptions, model) -> MaskedLM:
        config = _encoder(model).config
        return cls(options, config.d_model, config.d_embed, config.vocab_size, config.activation,
                   config.layer_norm_eps)

    @classmethod
    def batches(cls, context):
        """Pre-training sequences of documents: pairs for NSP/SOP, else packed full sentences."""
        from .data import PretrainingBatches

        return PretrainingBatches(context)

    def logits(self, model, hidden_states: Tensor) -> Tensor:
        """(..., H) -> (..., vocab_size) token logits."""
        h = self.LayerNorm(self.act(self.dense(hidden_states)))  # (..., E)
        return F.linear(h, model.encoder.word_embeddings().weight, self.bias)

    def forward(self, model, batch: dict) -> Tensor:
        states = stack_output(model, batch).last_hidden_state  # (B, T, H)
        labels = batch["labels"]  # (B, T), -100 where nothing is predicted
        picked = labels != -100
        # Only the picked positions (15%) go through the vocabulary-sized product.
        logits = self.logits(model, states[picked])  # (N, V)
        return F.cross_entropy(logits.float(), labels[picked])


class SentencePairObjective(ObjectiveModule):
    """A two-way classifier on the pooled [CLS] state; reads `sentence_label` of MLM's pair batches."""

    def __init__(self, options: SentencePairOptions, d_model: int = 64, dropout: float = 0.0):
        super().__init__()
        self.options = options
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, 2)
        nn.init.trunc_normal_(self.classifier.weight, std=0.02, a=-0.04, b=0.04)
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def for_model(cls, options: SentencePairOptions, model):
        config = _encoder(model).config
        if not config.pooler:
            raise SpecError("objectives: next-sentence and sentence-order prediction read the pooled [CLS] state; "
                             "set encoder.pooler=true")
        return cls(options, config.d_model, config.dropout)

    def logits(self, model, output: EncoderOutput) -> Tensor:
        return self.classifier(self.dropout(output.pooler_output))  # (B, 2)

    def forward(self, model, batch: dict) -> Tensor:
        if "sentence_label" not in batch:
            raise ValueError(f"{type(self).__name__} needs sentence pairs; train it with masked-lm, which makes them")
        return F.cross_entropy(self.logits(model, stack_output(model, batch)).float(), batch["sentence_label"])


class NextSentencePrediction(SentencePairObjective):
    """BERT §3.1 Task #2: is B the sentence that follows A (label 0) or a random one (label 1)?"""


class SentenceOrderPrediction(SentencePairObjective):
    """ALBERT §4.1: are two consecutive segments in order (label 0) or swapped (label 1)?"""
