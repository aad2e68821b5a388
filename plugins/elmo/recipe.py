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
    default_lr = 1e-3  # Adam at 0.001 for the task models (allennlp's ELMo configurations)
    reference_width = 1024  # 2 x 512: elmo-original's layers
    default_warmup_ratio = 0.0

    def run(self, model, input_ids, attention_mask, token_type_ids, char_ids=None) -> EncoderOutput:
        return model.encoder.frozen_mix(input_ids, attention_mask, char_ids)

    def features(self, output: EncoderOutput, extract_index):
        """(N, 2P): the mix averaged over each sequence's real tokens."""
        return output.pooler_output
