"""The translation objective: cross-entropy of the target given the source, with teacher forcing."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TranslationOptions


class Translation(nn.Module):
    """-log p(y | x) = -sum_t log p(y_t | y_<t, x) (Sutskever et al. 2014 eq. 1), averaged over target tokens."""

    def __init__(self, options: TranslationOptions):
        super().__init__()
        self.options = options

    @classmethod
    def batches(cls, context):
        """Training reads sentence pairs: source/target files or a TSV (lmkit.parallel)."""
        from lmkit.parallel import ParallelText

        return ParallelText(context)

    def forward(self, model, batch: dict) -> torch.Tensor:
        encoded = model.encoder(batch["source_ids"], batch["source_mask"])
        # Teacher forcing: the decoder reads the gold previous token, <s> y_1 ... y_{n}, and predicts
        # y_1 ... y_n </s>.
        logits, _ = model.decoder(batch["target_ids"], model.decoder.start(encoded))  # (B, T, V)
        labels = batch["labels"]
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                               ignore_index=-100, label_smoothing=self.options.label_smoothing)
