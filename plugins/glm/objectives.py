"""GLM's pre-training objective: autoregressive blank infilling (Du et al. 2022 §2.1, eq. 1).

max E_z [ sum_i log p(s_z_i | x_corrupt, s_z_<i) ]: the spans of Part B, in a shuffled order, each
written token by token after [S] and closed by [E], given Part A and the spans before it. The loss is
the mean cross-entropy over Part B's targets; Part A is never predicted.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmkit.errors import SpecError
from lmkit.objectives.base import ObjectiveModule

from .config import BlankInfillingOptions


class BlankInfilling(ObjectiveModule):
    """Cross-entropy of Part B's targets; the data (data.py) gives input_ids, position_ids (B, 2, T),
    attention_mask (B, T) and labels (B, T) (-100 in Part A and padding)."""

    models_language = True  # the mean cross-entropy of the predicted tokens: exp is the spans' perplexity

    def __init__(self, options: BlankInfillingOptions):
        super().__init__(options)

    @classmethod
    def for_model(cls, options: BlankInfillingOptions, model):
        if model.decoder is None or model.encoder is not None:
            raise SpecError("objectives: blank-infilling trains a GLM decoder alone; the spec needs [decoder] "
                            "type = \"glm\" and no encoder")
        return cls(options)

    @classmethod
    def batches(cls, context):
        from .data import InfillingBatches

        return InfillingBatches(context)

    def forward(self, model, batch: dict) -> torch.Tensor:
        states = model.decoder.hidden_states(batch["input_ids"], None, batch["attention_mask"], batch["position_ids"])
        labels = batch["labels"]
        picked = labels != -100
        logits = model.decoder.logits(states[picked])  # (N, V): only Part B goes through the vocabulary
        return F.cross_entropy(logits.float(), labels[picked])
