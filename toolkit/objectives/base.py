"""The base class of objectives: lmkit.contract.Objective with its defaults."""
from __future__ import annotations

from torch import nn


class ObjectiveModule(nn.Module):
    """A training loss. Subclasses define forward(model, batch) and, when they decide what data training
    reads, the classmethod batches(context); one that only adds a loss to another's batches (next-sentence
    prediction beside masked LM) keeps the default, None.
    """

    # True when the loss is the mean cross-entropy of the tokens it predicts, so that exp(loss) is a
    # perplexity (causal LM, masked LM, seq2seq without label smoothing); the trainer reports
    # perplexity from these objectives only, never from a sum with NSP or a task head.
    models_language = False

    def __init__(self, options=None):
        super().__init__()
        self.options = options

    @classmethod
    def batches(cls, context):
        """A lmkit.training.batches.Batches over the run's data, or None: this objective reads another's."""
        return None

    def score_text(self, model, input_ids):
        """For `lmkit eval --data` on a model without a decoder: {name: (summed NLL in nats, tokens scored)} of
        windows input_ids (B, T) of a token stream (ELMo's biLM: forward and backward), or None when this
        objective does not score text."""
        return None

    @classmethod
    def for_model(cls, options, model) -> ObjectiveModule:
        """The objective for `model`, whose stacks exist already; override to size a head to them."""
        return cls(options)
