"""Task heads: a linear layer on each sequence's features, trained as an objective.

The features are what the model's family reads a whole sequence into: a decoder's final state at
GPT's extract token, an encoder's pooled [CLS] state. A batch holds B examples of S sequences each
(input_ids (B, S, T)); the head turns the S feature vectors of an example into its scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ObjectiveModule
from .options import SequenceHeadOptions, SpanHeadOptions, TokenHeadOptions
from .states import stack_output


class _Head(ObjectiveModule):
    @classmethod
    def for_model(cls, options, model):
        """Sized to the features the model's feature stack gives (its d_model)."""
        return cls(options, model.feature_stack.d_model)

    def output_layer(self) -> nn.Linear:
        """The head's one linear layer, which an export stores beside the encoder graph (lmkit.exports.heads)."""
        return self.score


def _recipe(options):
    from ..registry import get_host

    return get_host().instantiate("task-recipe", options.recipe, getattr(options, "recipe_options", None))


def sequence_features(model, batch: dict, recipe) -> Tensor:
    """(B, S, H): the features of every sequence of the batch, as the task recipe reads them."""
    B, S, _ = batch["input_ids"].shape
    output = stack_output(model, batch, recipe)  # (B*S, T, H)
    return recipe.features(output, batch["extract_index"].reshape(B * S)).reshape(B, S, -1)


def _linear(d_model: int, outputs: int) -> nn.Linear:
    layer = nn.Linear(d_model, outputs)
    nn.init.normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


class SequenceHead(_Head):
    """Classification, similarity, regression or multiple choice from sequence features."""

    def __init__(self, options: SequenceHeadOptions, d_model: int = 768):
        super().__init__(options)
        self.recipe = _recipe(options)
        # A recipe that scores the labels itself has no layer here: a cloze recipe reads each label's word in the
        # blank off the language model (GLM, lmkit.tasks.cloze), label_scores(model, batch) -> (B, num_labels).
        self.label_scores = getattr(self.recipe, "label_scores", None)
        if self.label_scores is not None:
            return
        self.pooler = None  # the recipe's layers before the linear one (ULMFiT's), if it has any
        pooler = self.recipe.pooler(d_model)
        if pooler is not None:
            self.pooler, d_model = pooler
        self.dropout = nn.Dropout(options.dropout)
        self.score = _linear(d_model, options.num_labels)

    def output_layer(self) -> nn.Linear | None:
        """The linear layer; with a recipe's pooler, the exporter puts the pooler's output in its graph's
        pooler_output, which the export's head reads (ULMFiT: lmkit.plugins.ulmfit.export). None for a recipe
        that scores the labels with the language model itself and can do so over an export's generating graph
        (`backend_label_scores(opened, batch)`, numpy: GLM's cloze)."""
        if self.label_scores is not None:
            if hasattr(self.recipe, "backend_label_scores"):
                return None
            from ..errors import ArtifactError

            raise ArtifactError(f"this model scores its labels with the language model itself ({self.options.recipe} "
                                "recipe), which exports do not run; predict with the model directory")
        return self.score

    def scores(self, model, batch: dict) -> Tensor:
        """classification/similarity: (B, num_labels) logits; regression: (B,); multiple choice: (B, S)."""
        if self.label_scores is not None:
            return self.label_scores(model, batch)
        features = sequence_features(model, batch, self.recipe)  # (B, S, H)
        if self.pooler is not None:
            features = self.pooler(features.flatten(0, 1)).unflatten(0, features.shape[:2])
        features = self.dropout(features)
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
        return F.cross_entropy(scores.float(), batch["labels"], label_smoothing=self.options.label_smoothing)

    @torch.no_grad()
    def predict(self, model, batch: dict) -> Tensor:
        """The predicted class (or choice) index per example, or the predicted value for regression."""
        scores = self.scores(model, batch)
        return scores.float() if self.options.task == "regression" else scores.argmax(-1)


class TokenHead(_Head):
    """A tag for every token; only tokens with a label (a word's first subword) count in the loss.

    A recipe may put a task model of its own between the stack's output and the linear layer
    (`token_layers(stack)` -> (module, width out), the module called with the stack's EncoderOutput and
    input_ids: ELMo's BiLSTM tagger); most have none, and the linear layer reads the states themselves.
    Such a module exports when it also has `encoder_outputs` (the encoder export's outputs it reads) and
    `export_module()` (lmkit.exports.heads.layers_graph).
    """

    def __init__(self, options: TokenHeadOptions, d_model: int = 768, stack=None):
        super().__init__(options)
        self.recipe = _recipe(options)
        self.layers = None
        make = getattr(self.recipe, "token_layers", None)  # optional: recipes of other families predate it
        if make is not None and stack is not None:
            self.layers, d_model = make(stack)
        self.dropout = nn.Dropout(options.dropout)
        self.score = _linear(d_model, options.num_labels)

    @classmethod
    def for_model(cls, options, model):
        return cls(options, model.feature_stack.d_model, model.feature_stack)

    def output_layer(self) -> nn.Linear:
        """The tag layer; with a recipe's task model (self.layers) it reads that model's states, which an export
        carries as a graph of their own (lmkit.exports.heads.layers_graph)."""
        return self.score

    def scores(self, model, batch: dict) -> Tensor:
        output = stack_output(model, batch, self.recipe)
        states = output.last_hidden_state if self.layers is None else self.layers(output, batch["input_ids"])
        return self.score(self.dropout(states))  # (B, T, num_labels)

    def forward(self, model, batch: dict) -> Tensor:
        scores = self.scores(model, batch)
        return F.cross_entropy(scores.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100,
                               label_smoothing=self.options.label_smoothing)

    @torch.no_grad()
    def predict(self, model, batch: dict) -> Tensor:
        return self.scores(model, batch).argmax(-1)  # (B, T)


class SpanHead(_Head):
    """Start and end scores for every token; positions outside the context (and [CLS]) cannot answer."""

    def __init__(self, options: SpanHeadOptions, d_model: int = 768):
        super().__init__(options)
        self.recipe = _recipe(options)
        self.dropout = nn.Dropout(options.dropout)
        self.qa_outputs = _linear(d_model, 2)  # Hugging Face's name

    def output_layer(self) -> nn.Linear:
        return self.qa_outputs

    def scores(self, model, batch: dict) -> Tensor:
        states = stack_output(model, batch, self.recipe).last_hidden_state
        logits = self.qa_outputs(self.dropout(states)).float()  # (B, T, 2)
        return logits.masked_fill(~batch["answerable"][:, :, None], -1e4)

    def forward(self, model, batch: dict) -> Tensor:
        logits = self.scores(model, batch)
        start, end = logits.unbind(-1)  # (B, T) each
        return (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2

    @torch.no_grad()
    def predict(self, model, batch: dict) -> Tensor:
        return self.scores(model, batch)  # (B, T, 2): spans are chosen on the host, with the offsets
