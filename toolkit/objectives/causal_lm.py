"""Next-token prediction, the objective of every autoregressive language model."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ObjectiveModule
from .options import CausalLMOptions
from .states import decoder_states_if_computed


class CausalLM(ObjectiveModule):
    """Next-token prediction: position t predicts token t+1 (Radford et al. 2018, eq. 1)."""

    @property
    def models_language(self) -> bool:
        return self.options.label_smoothing == 0  # a smoothed loss is not the cross-entropy perplexity measures

    def __init__(self, options: CausalLMOptions):
        super().__init__()
        self.options = options

    @classmethod
    def batches(cls, context):
        """Training reads windows of the tokenized text."""
        from ..training.batches import TokenWindows

        return TokenWindows(context)

    def forward(self, model, batch: dict) -> torch.Tensor:
        input_ids = batch["input_ids"]  # (B, T), or (B, S, T): the S sequences of each task example
        targets = batch.get("lm_labels", input_ids)  # -100 where nothing is predicted (padding)
        if input_ids.dim() == 3:  # fine-tuning's auxiliary LM loss (GPT §3.2) reads every sequence
            input_ids, targets = input_ids.flatten(0, 1), targets.flatten(0, 1)
        states = decoder_states_if_computed(model, batch)
        if states is not None:
            # A task head already ran the decoder on these sequences. Causal attention makes the
            # states of the first T-1 positions the same as those of input_ids[:, :-1] alone.
            logits = model.decoder.logits(states[:, :-1])  # (B, T-1, V)
        else:
            logits = model.decoder(input_ids[:, :-1])  # (B, T-1, V)
        targets = targets[:, 1:]
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
            ignore_index=-100, label_smoothing=self.options.label_smoothing,
        )
