"""CVT (Clark et al. 2018): cross-view training, semi-supervised sequence tagging from unlabelled text.

Only registration lives here, so loading the plugin does not import torch: the encoder is in
model.py, the auxiliary modules and their unlabelled loss in objective.py, the finetune recipe
that alternates labelled and unlabelled batches in recipe.py, the schedule in config.py and the
export in export.py; CVT for translation (auxiliary decoders on an attentional NMT model) in translation.py. The char CNN and the LSTMs are shared blocks (lmkit.nn.char_cnn, lmkit.nn.lstm).
"""
from lmkit.hookspecs import hookimpl


@hookimpl
def register_encoders(register):
    register("cvt-tagger", "lmkit.plugins.cvt.model:CVTEncoder", options="lmkit.plugins.cvt.config:CVTConfig",
             summary="word embeddings + char CNN, a forward and a backward LSTM, a BiLSTM over both (CVT)")


@hookimpl
def register_objectives(register):
    register("cvt", "lmkit.plugins.cvt.objective:CVTObjective", options="lmkit.plugins.cvt.config:CVTObjectiveOptions",
             summary="auxiliary views (forward, backward, future, past, full) learn the primary's soft tags on "
                     "unlabelled text (CVT)")
    register("cvt-translation", "lmkit.plugins.cvt.translation:CVTTranslationObjective",
             options="lmkit.plugins.cvt.config:CVTTranslationOptions",
             summary="auxiliary decoders (attention dropout, next word) learn the primary decoder's beam-search "
                     "translations of unlabelled sources (CVT for an attentional LSTM NMT model)")
    register("cvt-multitask", "lmkit.plugins.cvt.multitask:CVTMultitaskObjective",
             options="lmkit.plugins.cvt.config:CVTMultitaskOptions",
             summary="several taggers on one CVT encoder: a primary and auxiliary modules per task, "
                     "one unlabelled loss over all of them (multi-task CVT)")


@hookimpl
def register_exporters(register):
    register("encoder.cvt-tagger", "lmkit.plugins.cvt.export:export_plan",
             summary="encoder-only graph: the primary module's hidden layer; a tagger adds its token head")


@hookimpl
def register_task_recipes(register):
    register("cvt", "lmkit.plugins.cvt.recipe:CVTRecipe",
             summary="labelled and --unlabeled batches alternate; auxiliary views learn the primary's tags (CVT)")


@hookimpl
def register_schedules(register):
    register("cvt", "lmkit.plugins.cvt.config:CVTSchedule", options="lmkit.plugins.cvt.config:CVTScheduleOptions",
             summary="lr min(step / 5000, 1) / (1 + 0.005 sqrt(step)) (Clark et al. 2018, cvt_text)")


PRESETS = {
    "cvt-tagger": ({"tokenizer": {"type": "word"}, "encoder": {"type": "cvt-tagger"}},
                   "Clark et al. 2018's tagger: 300-d words, char CNN 3 x 100 filters, 2 x 1024-cell LSTMs, "
                   "a 2 x 512 BiLSTM, 512-unit modules"),
    "cvt-tiny": ({"tokenizer": {"type": "word"},
                  "encoder": {"type": "cvt-tagger", "vocab_size": 512, "d_word": 16, "max_characters_per_token": 16,
                              "d_char": 8, "filters": [[2, 8], [3, 8]], "d_first": 24, "d_second": 16,
                              "d_projection": 32, "dropout": 0.1}},
                 "a CVT tagger for tests: 16-d words, 2 small filters, 24-cell LSTMs, a 2 x 16 BiLSTM, 32-unit modules"),
}


@hookimpl
def register_presets(register):
    for name, (spec, summary) in PRESETS.items():
        register(name, spec, summary=summary)
