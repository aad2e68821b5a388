"""The AWD-LSTM language-model loss: next-token cross-entropy plus AR and TAR (Merity et al. 2018 §4.6)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmkit.errors import SpecError
from lmkit.objectives.causal_lm import CausalLM

from .config import AWDLanguageModelOptions
from .model import AWDLSTMDecoder


class AWDLanguageModel(CausalLM):
    """causal-lm's data and carried state, and in training two activation penalties:

        AR  = ar_alpha * mean(o_t^2)              o: the last layer's output after output dropout
        TAR = tar_beta * mean((h_t - h_{t-1})^2)  h: the same output before dropout

    (fastai's RNNRegularizer: alpha 2, beta 1.) Evaluation scores the cross-entropy alone, so the
    validation perplexity is a perplexity.
    """

    def __init__(self, options: AWDLanguageModelOptions):
        super().__init__(options)

    @property
    def models_language(self) -> bool:
        return self.options.label_smoothing == 0

    @classmethod
    def for_model(cls, options, model):
        if model.decoder is None or not isinstance(model.decoder, AWDLSTMDecoder):
            raise SpecError("the awd-lm objective needs an awd-lstm decoder (it regularises its LSTM outputs); "
                            "use causal-lm for other decoders")
        return cls(options)

    def forward(self, model, batch: dict) -> torch.Tensor:
        input_ids = batch["input_ids"]
        targets = batch.get("lm_labels", input_ids)
        if input_ids.dim() == 3:
            input_ids, targets = input_ids.flatten(0, 1), targets.flatten(0, 1)
        cache = self.carried_cache(model, batch)
        dropped, raw = model.decoder.run(input_ids[:, :-1], cache)  # (B, T-1, E) each
        self.carry(batch, cache)
        logits = model.decoder.logits(dropped)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets[:, 1:].reshape(-1),
                               ignore_index=-100, label_smoothing=self.options.label_smoothing)
        if self.training and self.options.ar_alpha:
            loss = loss + self.options.ar_alpha * dropped.float().pow(2).mean()
        if self.training and self.options.tar_beta and raw.size(1) > 1:
            loss = loss + self.options.tar_beta * (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
        return loss
