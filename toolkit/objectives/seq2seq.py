"""Sequence-to-sequence cross-entropy: the target given the source, with teacher forcing.

The objective of every encoder-decoder: Seq2Seq and attentional NMT on parallel text, T5 on the
(input, target) pairs its span corruption or a text-to-text task makes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ObjectiveModule
from .options import Seq2SeqOptions


class Seq2SeqLM(ObjectiveModule):
    """-log p(y | x) = -sum_t log p(y_t | y_<t, x) (Sutskever et al. 2014 eq. 1), averaged over target tokens.

    A batch holds source_ids / source_mask (B, S), target_ids (B, T) (the decoder's input: its start
    token, then y_1 ... y_{T-1}) and labels (B, T) (y_1 ... y_T, -100 where nothing is predicted).
    """

    @property
    def models_language(self) -> bool:
        return self.options.label_smoothing == 0  # a smoothed loss is not the cross-entropy perplexity measures

    def __init__(self, options: Seq2SeqOptions):
        super().__init__(options)

    @classmethod
    def batches(cls, context):
        """Training reads sentence pairs: source/target files or a TSV (lmkit.parallel)."""
        from ..parallel import ParallelText

        return ParallelText(context)

    def forward(self, model, batch: dict) -> torch.Tensor:
        encoded = model.encoder(batch["source_ids"], batch["source_mask"])
        logits, _ = model.decoder(batch["target_ids"], model.decoder.start(encoded))  # (B, T, V)
        labels = batch["labels"]
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                               ignore_index=-100, label_smoothing=self.options.label_smoothing)
