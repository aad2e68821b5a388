"""GLM (Du et al. 2022): autoregressive blank infilling with 2D positions, one model for understanding and
generation.

The `glm` decoder, the `blank-infilling` and `glm-text-to-text` objectives, the `glm-cloze` task recipe and
the glm-* presets. Only registration lives here, so loading the plugin does not import torch; the model is in model.py,
the objective in objectives.py, its data in data.py, blank filling in generation.py, fine-tuning as
cloze in cloze.py, text-to-text fine-tuning in text_to_text.py.
"""
from lmkit.hookspecs import hookimpl


@hookimpl
def register_decoders(register):
    register("glm", "lmkit.plugins.glm.model:GLMDecoder", options="lmkit.plugins.glm.config:GLMConfig",
             summary="pre-LN transformer, two learned position tables (pos1, pos2), Part A bidirectional, "
                     "Part B left to right, tied embeddings (GLM)")


@hookimpl
def register_exporters(register):
    register("decoder.glm", "lmkit.plugins.glm.export:export_plan",
             summary="one decoder graph, KV cache in and out; position_ids (batch, 2, tokens): pos1 and pos2")


@hookimpl
def register_objectives(register):
    register("blank-infilling", "lmkit.plugins.glm.objectives:BlankInfilling",
             options="lmkit.plugins.glm.config:BlankInfillingOptions",
             summary="autoregressive blank infilling: Poisson(3) spans, shuffled, [S] ... [E]; token, sentence "
                     "and document blanks (GLM)")
    register("glm-text-to-text", "lmkit.plugins.glm.text_to_text:GLMTextToText",
             options="lmkit.plugins.glm.config:TextToTextOptions",
             summary="fine-tuning on (input, target) pairs: each target a [gMASK] span after its input, loss on the "
                     "target only (lmkit finetune --task text-to-text; GLM)")


@hookimpl
def register_generators(register):
    register("glm", "lmkit.plugins.glm.generation:BlankFilling",
             summary="fills every [MASK], [sMASK] and [gMASK] of a prompt, span after span, with the shared strategies")


@hookimpl
def register_task_recipes(register):
    register("glm-cloze", "lmkit.plugins.glm.cloze:GLMClozeRecipe", options="lmkit.plugins.glm.cloze:ClozeOptions",
             summary="classification as blank infilling: a pattern with one [MASK], each label scored by its "
                     "verbalizer word in the blank (lmkit finetune --pattern --verbalizer; GLM)")


def _preset(summary: str, **decoder) -> tuple[dict, str]:
    spec = {
        "tokenizer": {"type": "wordpiece"},  # GLM-Base and GLM-Large: BERT's uncased WordPiece
        "decoder": {"type": "glm", **decoder},
        "objectives": [{"type": "blank-infilling", "weight": 1.0}],
        "decoding": {"strategy": "greedy"},
    }
    return spec, summary


PRESETS = {
    "glm-base": _preset("GLM-Base 110M: 12 layers x 768, 12 heads, 512 positions; token-level blanks",
                        vocab_size=30592, max_positions=512, d_model=768, n_layers=12, n_heads=12),
    "glm-large": _preset("GLM-Large 335M: 24 layers x 1024, 16 heads, 512 positions; token-level blanks",
                         vocab_size=30592, max_positions=512, d_model=1024, n_layers=24, n_heads=16),
    "glm-tiny": _preset("a GLM for tests: 2 layers x 64, 4 heads, vocab 512, 64 positions",
                        vocab_size=512, max_positions=64, d_model=64, n_layers=2, n_heads=4, dropout=0.0),
}


@hookimpl
def register_presets(register):
    for name, (spec, summary) in PRESETS.items():
        register(name, spec, summary=summary)
