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

    def score_text(self, model, input_ids, **inputs):
        """For `lmkit eval --data` on a model without a decoder: {name: (summed NLL in nats, tokens scored)} of
        windows input_ids (B, T) of a token stream (ELMo's biLM: forward and backward), or None when this
        objective does not score text. inputs: the stack's per-token inputs (B, T, ...) of the same windows,
        by name (lmkit.token_inputs; ELMo's char_ids), when it declares them."""
        return None

    @classmethod
    def with_unlabeled(cls, batches, context):
        """The Batches of a run given --unlabeled text (context.args.unlabeled), made from `batches` (the labelled
        data) and that text, or None: this objective does not learn from unlabelled text (the default)."""
        return None

    @classmethod
    def check_composition(cls, options, spec, tokenizer) -> None:
        """SpecError when this objective could not train the composition (lmkit.contract.Objective); none here."""

    @classmethod
    def for_model(cls, options, model) -> ObjectiveModule:
        """The objective for `model`, whose stacks exist already; override to size a head to them."""
        return cls(options)

    def carried_state(self) -> dict:
        """Tensors training carries from step to step outside the weights (a stateful LM's hidden state),
        by name; the trainer saves them with each checkpoint so that resume is exact. None by default."""
        return {}

    def load_carried_state(self, tensors: dict) -> None:
        """Restore what carried_state() returned, on resume."""


def require_end_of_text(tokenizer) -> None:
    """SpecError when `tokenizer` has no end-of-text token: training text is read as documents, each ended by
    one (lmkit.data.load_tokens). For check_composition of objectives that read plain text."""
    if tokenizer is not None and tokenizer.eos_id is None:
        from ..errors import SpecError

        raise SpecError(f"training reads text as documents, each ended by the tokenizer's end-of-text token, and "
                        f"this {tokenizer.kind} tokenizer has none; train one whose special tokens include </s> or "
                        "<|endoftext|> (lmkit tokenizer train --set special_tokens=...)")
