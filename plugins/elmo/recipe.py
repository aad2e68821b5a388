"""How `lmkit finetune` reads an ELMo biLM (lmkit.contract.TaskRecipe), registered as the "elmo" recipe.

Peters et al. 2018 §3.3: the biLM is frozen and the task model learns the scalar mix of its layers.
Here the layers are computed without gradients and without the biLM's dropout, so only the mix
(its softmax weights and gamma) and the task head train; a sequence's features are the mean of
the mix over its real tokens (a pooled classifier), a token's features are its mix (the core's
token head). Not here: the paper's task architectures (a BiLSTM tagger over [word vector; ELMo]).
"""
from __future__ import annotations

from lmkit.contract import EncoderOutput
from lmkit.tasks.recipes import EncoderRecipe


class ELMoRecipe(EncoderRecipe):
    name = "elmo"
    stacks = ("elmo-bilm",)
    default_lr = 1e-3  # Adam at 0.001 for the task models (allennlp's ELMo configurations)
    reference_width = 1024  # 2 x 512: elmo-original's layers
    default_warmup_ratio = 0.0

    def run(self, model, input_ids, attention_mask, token_type_ids, char_ids=None) -> EncoderOutput:
        _require_elmo(model.encoder, self.name)
        return model.encoder.frozen_mix(input_ids, attention_mask, char_ids)

    def features(self, output: EncoderOutput, extract_index):
        """(N, 2P): the mix averaged over each sequence's real tokens."""
        return output.pooler_output


class ELMoBiLSTMRecipe(ELMoRecipe):
    """The paper's tagger (Peters et al. 2018 §3.3, its NER and chunking models): [x_k; ELMo_k] into a BiLSTM,
    x_k a word embedding learned from scratch, ELMo_k the frozen biLM's learned mix; a tag from each state.
    Sequences are read as the elmo recipe reads them."""

    name = "elmo-bilstm"
    task_kinds = ("token-classification",)  # a tagger: the BiLSTM's states are read per token
    elmo_input, elmo_output = True, False

    def token_layers(self, stack):
        """(BiLSTMTagger, its output width): what a token head's linear layer reads (lmkit.objectives.heads)."""
        from .tagger import BiLSTMTagger

        _require_elmo(stack, self.name)
        tagger = BiLSTMTagger(stack.config.vocab_size, stack.d_model, stack.n_layers, elmo_input=self.elmo_input,
                              elmo_output=self.elmo_output, layer_norm=stack.config.mix_layer_norm)
        return tagger, tagger.width


class ELMoBiLSTMOutputRecipe(ELMoBiLSTMRecipe):
    """elmo-bilstm with ELMo at the output too (Peters et al. §3.3): [h_k; ELMo'_k] into the tag layer, ELMo'_k
    a second mix of the same layers with weights of its own."""

    name = "elmo-bilstm-output"
    elmo_output = True


class WordBiLSTMRecipe(ELMoBiLSTMRecipe):
    """The same tagger without ELMo (the paper's baseline): word embeddings alone into the BiLSTM."""

    name = "word-bilstm"
    elmo_input = False


def _require_elmo(stack, recipe: str) -> None:
    from lmkit.errors import LmkitError

    from .model import ELMoBiLM

    if not isinstance(stack, ELMoBiLM):
        raise LmkitError(f"the {recipe} recipe reads an ELMo biLM (encoder elmo-bilm); this model's stack is "
                         f"{type(stack).__name__}: leave out --recipe, or give one of its own")
