"""Task recipes: how a kind of stack is fine-tuned on labelled examples (lmkit.contract.TaskRecipe).

A stack names its recipe (`task_recipe`, "encoder" or "decoder" from lmkit.nn.stack); the recipes
are registered components (the `register_task_recipes` hook), so a family with its own way of
reading examples (ULMFiT's concat pooling, say) registers one instead of editing the core.

    encoder   BERT (Devlin et al. 2019, §4): the pair as the tokenizer's template makes it,
              [CLS] a [SEP] b [SEP] with segment ids; features are the encoder's pooled output
    decoder   GPT (Radford et al. 2018, §3.3): start a delim b extract, features at the extract
              token, and the language-model loss kept as an auxiliary objective (λ = 0.5)

A recipe may also put layers of its own between the features and a sequence head's linear layer
(`pooler`: ULMFiT's batch-norm blocks) and train with other settings (`training_arguments`:
ULMFiT's discriminative rates, gradual unfreezing and slanted triangular schedule).
"""
from __future__ import annotations

from ..contract import EncoderOutput
from .inputs import DecoderInputs, EncoderInputs, add_markers


class EncoderRecipe:
    name = "encoder"
    default_lr = 5e-5  # BERT §4: the best of {5e-5, 3e-5, 2e-5} on most GLUE tasks
    reference_width = 768  # BERT-base's d_model, the width default_lr was chosen at
    default_warmup_ratio = 0.1  # BERT's run_classifier.py: warmup_proportion 0.1
    bidirectional = True  # a position's state has read the tokens after it: tags go on a word's first piece
    label_smoothing = 0.0  # of a classifying head's cross-entropy, unless --label-smoothing says otherwise

    def prepare(self, tokenizer) -> bool:
        return False

    def auxiliary_objectives(self, aux_lm_weight: float | None) -> list[dict]:
        if aux_lm_weight:
            from ..errors import LmkitError

            raise LmkitError("--aux-lm-weight adds GPT's language-model loss, which needs a decoder; this model "
                             "is fine-tuned through its encoder: leave it out")
        return []

    def inputs(self, tokenizer, max_length: int) -> EncoderInputs:
        return EncoderInputs(tokenizer, max_length)

    def pooler(self, d_model: int):
        """Layers between the features and a sequence head's linear layer, as (module, width out), or None."""
        return None

    def training_arguments(self, steps: int, per_epoch: int) -> dict:
        """Training arguments that differ from lmkit finetune's defaults (AdamW, cosine decay); none."""
        return {}

    def run(self, model, input_ids, attention_mask, token_type_ids, **inputs) -> EncoderOutput:
        """inputs: per-token inputs beside the ids (lmkit.token_inputs), for a stack that reads them."""
        return model.encoder(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **inputs)

    def features(self, output: EncoderOutput, extract_index):
        """(N, D): the pooled output, or the first position's state where the encoder has no pooler."""
        return output.pooler_output if output.pooler_output is not None else output.last_hidden_state[:, 0]


class DecoderRecipe:
    name = "decoder"
    default_lr = 6.25e-5  # GPT §4.1
    reference_width = 768  # GPT's d_model
    default_warmup_ratio = 0.002  # GPT §4.1: warmup over 0.2% of training
    bidirectional = False  # causal: a word's tag goes on its last piece, the one that has read all of it
    aux_lm_weight = 0.5  # λ, GPT §4.1
    label_smoothing = 0.0

    def prepare(self, tokenizer) -> bool:
        return add_markers(tokenizer)  # learned from scratch during fine-tuning, as in GPT

    def auxiliary_objectives(self, aux_lm_weight: float | None) -> list[dict]:
        weight = self.aux_lm_weight if aux_lm_weight is None else aux_lm_weight
        return [{"type": "causal-lm", "weight": weight}] if weight > 0 else []

    def inputs(self, tokenizer, max_length: int) -> DecoderInputs:
        return DecoderInputs(tokenizer, max_length)

    def pooler(self, d_model: int):
        """Layers between the features and a sequence head's linear layer, as (module, width out), or None."""
        return None

    def training_arguments(self, steps: int, per_epoch: int) -> dict:
        """Training arguments that differ from lmkit finetune's defaults (AdamW, cosine decay); none."""
        return {}

    def run(self, model, input_ids, attention_mask, token_type_ids) -> EncoderOutput:
        # The left-to-right states, which the auxiliary LM loss reuses (a decoder's features may read both ways:
        # GLM's). Right padding comes after every real token, which causal attention keeps it from seeing.
        import torch

        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        return EncoderOutput(model.decoder.hidden_states(input_ids), mask)

    def features(self, output: EncoderOutput, extract_index):
        import torch

        states = output.last_hidden_state
        return states[torch.arange(states.size(0), device=states.device), extract_index]


def default_learning_rate(recipe, d_model: int) -> float:
    """The peak rate a stack of width `d_model` is fine-tuned at unless told: the recipe's paper rate,
    scaled up by reference_width / d_model for narrower models (never down). Narrow models want larger
    rates: Turc et al. 2019 found 3e-4 best for a BERT of width 128, where BERT-base takes 5e-5, i.e.
    768/128 times as much; at BERT's 5e-5 a width-64 BERT does not move from chance in three epochs."""
    return recipe.default_lr * max(1.0, recipe.reference_width / d_model)


def recipe_for(stack):
    """The task recipe a stack module names (its class attribute `task_recipe`)."""
    from ..registry import get_host

    return get_host().instantiate("task-recipe", stack.task_recipe)


def task_stack_key(spec: dict) -> str:
    """Which stack of a composition `lmkit finetune` trains a head on: the encoder when there is one."""
    from ..errors import ArtifactError

    if spec.get("encoder") is not None:
        return "encoder"
    if spec.get("decoder") is not None:
        return "decoder"
    raise ArtifactError("the model has neither an encoder nor a decoder to fine-tune")
