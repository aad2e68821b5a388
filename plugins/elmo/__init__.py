"""ELMo (Peters et al. 2018): the character-CNN biLM, its layers and their scalar mix.

Only registration lives here, so loading the plugin does not import torch: the encoder is in
model.py, its objective in objective.py, the import of bilm-tf's released weights in bilm_tf.py and
the export in export.py; the char CNN, the projected LSTM and the scalar mix are shared blocks in
lmkit.nn (char_ids, char_cnn, projected_lstm, scalar_mix).
"""
from lmkit.hookspecs import hookimpl


@hookimpl
def register_encoders(register):
    register("elmo-bilm", "lmkit.plugins.elmo.model:ELMoBiLM", options="lmkit.plugins.elmo.config:ELMoConfig",
             summary="char-CNN token encoder, forward and backward projected LSTMs, scalar mix of the layers (ELMo)")


@hookimpl
def register_objectives(register):
    register("bilm", "lmkit.plugins.elmo.objective:BiLMObjective",
             options="lmkit.plugins.elmo.config:BiLMObjectiveOptions",
             summary="forward + backward language model over one shared softmax, optionally sampled (ELMo)")


@hookimpl
def register_exporters(register):
    register("encoder.elmo-bilm", "lmkit.plugins.elmo.export:export_plan",
             summary="one graph: token ids and a mask in; the scalar mix, a pooled vector and every layer out")


@hookimpl
def register_export_runtimes(register):
    register("elmo-bilm", "lmkit.plugins.elmo.runtime:ELMoRuntime",
             summary="an encoder-only export that also gives every biLM layer (lmkit embed --layers)")


@hookimpl
def register_task_recipes(register):
    register("elmo", "lmkit.plugins.elmo.recipe:ELMoRecipe",
             summary="the biLM frozen, its scalar mix learned; sequences read the mix averaged over tokens (ELMo)")
    register("elmo-bilstm", "lmkit.plugins.elmo.recipe:ELMoBiLSTMRecipe",
             summary="the paper's tagger: [word embedding; ELMo mix] into a BiLSTM, the biLM frozen (ELMo)")
    register("elmo-bilstm-output", "lmkit.plugins.elmo.recipe:ELMoBiLSTMOutputRecipe",
             summary="elmo-bilstm with ELMo at the output too: [BiLSTM state; a second mix] into the tags (ELMo)")
    register("word-bilstm", "lmkit.plugins.elmo.recipe:WordBiLSTMRecipe",
             summary="the same BiLSTM tagger over word embeddings alone, ELMo's baseline (on an ELMo model)")


@hookimpl
def register_commands(cli):
    from .commands import import_elmo_command

    cli.add_command(import_elmo_command)


def _preset(summary: str, **encoder) -> tuple[dict, str]:
    return ({"tokenizer": {"type": "word"}, "encoder": {"type": "elmo-bilm", **encoder},
             "objectives": [{"type": "bilm", "weight": 1.0}]}, summary)


PRESETS = {
    "elmo-original": _preset(
        "Peters et al. 2018: char CNN 2048 filters, 2 highways, 2 x 4096-cell LSTMs projected to 512 per direction"),
    "elmo-small": _preset(
        "bilm-tf's small model (elmo_2x1024_128_2048cnn_1xhighway): 1 highway, 2 x 1024 cells projected to 128",
        n_highway=1, projection_dim=128, lstm_dim=1024),
    "elmo-tiny": _preset(
        "an ELMo biLM for tests: 3 small filters, 1 highway, 2 x 32 cells projected to 16, vocab 512",
        vocab_size=512, max_characters_per_token=20, d_char=8, filters=[[1, 8], [2, 8], [3, 16]], n_highway=1,
        projection_dim=16, lstm_dim=32, dropout=0.0),
}


@hookimpl
def register_presets(register):
    for name, (spec, summary) in PRESETS.items():
        register(name, spec, summary=summary)
