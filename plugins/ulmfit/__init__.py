"""ULMFiT (Howard and Ruder 2018): the AWD-LSTM language model (Merity et al. 2018) as a stateful
causal decoder, its regularised LM objective, its export with the recurrent state in and out, and
the presets.

Only registration lives here, so loading the plugin does not import torch; the model is in
model.py, the dropouts and recurrent pieces it shares with other families in lmkit.nn.dropout and
lmkit.nn.recurrent.
"""
from lmkit.hookspecs import hookimpl


@hookimpl
def register_decoders(register):
    register("awd-lstm", "lmkit.plugins.ulmfit.model:AWDLSTMDecoder", options="lmkit.plugins.ulmfit.config:AWDLSTMConfig",
             summary="AWD-LSTM: weight-dropped LSTMs, locked and embedding dropout, tied decoder (ULMFiT's LM)")


@hookimpl
def register_objectives(register):
    register("awd-lm", "lmkit.plugins.ulmfit.objectives:AWDLanguageModel",
             options="lmkit.plugins.ulmfit.config:AWDLanguageModelOptions",
             summary="next-token cross-entropy plus AR/TAR activation regularisation (Merity et al. 2018)")


@hookimpl
def register_exporters(register):
    register("decoder.awd-lstm", "lmkit.plugins.ulmfit.export:export_plan",
             summary="one graph: token ids and each layer's (h, c) in, logits and the state out")


@hookimpl
def register_export_runtimes(register):
    register("recurrent-lm", "lmkit.plugins.ulmfit.runtime:RecurrentRuntime",
             summary="a recurrent LM's graph, its state fed back step to step; padded prompts read column by column")


@hookimpl
def register_optimizers(register):
    register("ulmfit", "lmkit.plugins.ulmfit.training:ULMFiTOptimizer",
             options="lmkit.plugins.ulmfit.training:ULMFiTOptimizerOptions",
             summary="AdamW over ULMFiT's layer groups: discriminative rates (/2.6 per group down), gradual unfreezing")


@hookimpl
def register_schedules(register):
    register("stlr", "lmkit.plugins.ulmfit.training:STLR", options="lmkit.plugins.ulmfit.training:STLROptions",
             summary="slanted triangular learning rates: a short linear rise, a long linear decay (ULMFiT eq. 3)")


@hookimpl
def register_training_recipes(register):
    register("ulmfit-lm", "lmkit.plugins.ulmfit.training:ULMFiTLanguageModelRecipe",
             summary="ULMFiT stage 2, target-task LM fine-tuning: ulmfit optimizer, stlr, lr 0.004, Adam (0.7, 0.99)")


@hookimpl
def register_task_recipes(register):
    register("ulmfit", "lmkit.plugins.ulmfit.classifier:ULMFiTRecipe",
             summary="BPT3C over the AWD-LSTM, concat pooling [last; max; mean], batch-norm blocks; discriminative "
                     "rates, gradual unfreezing, STLR (ULMFiT)")


def _preset(summary: str, **decoder) -> tuple[dict, str]:
    spec = {
        "tokenizer": {"type": "bpe"},
        "decoder": {"type": "awd-lstm", **decoder},
        "objectives": [{"type": "awd-lm", "weight": 1.0}],
        "decoding": {"strategy": "greedy", "max_new_tokens": 100},
    }
    return spec, summary


PRESETS = {
    "awd-lstm": _preset("ULMFiT's AWD-LSTM LM (fastai): 3 LSTM layers of 1152, 400-d tied embedding, 60k vocab"),
    "awd-lstm-tiny": _preset("an AWD-LSTM for tests: 2 layers of 48, 32-d embedding, vocab 512",
                             vocab_size=512, d_embed=32, hidden_size=48, n_layers=2),
}


@hookimpl
def register_presets(register):
    for name, (spec, summary) in PRESETS.items():
        register(name, spec, summary=summary)
