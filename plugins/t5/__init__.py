"""T5 (Raffel et al. 2020): the text-to-text encoder-decoder, v1.0 and v1.1, its presets and the import of
transformers' checkpoints.

Only registration lives here, so loading the plugin does not import torch; the stacks are in
model.py, their options in config.py, the importer in hf.py.
"""
from lmkit.hookspecs import hookimpl


@hookimpl
def register_encoders(register):
    register("t5", "lmkit.plugins.t5.model:T5Encoder", options="lmkit.plugins.t5.config:T5EncoderConfig",
             summary="pre-norm transformer encoder, RMS norm, relative position bias, no biases (T5)")


@hookimpl
def register_decoders(register):
    register("t5", "lmkit.plugins.t5.model:T5Decoder", options="lmkit.plugins.t5.config:T5DecoderConfig",
             summary="pre-norm transformer decoder with cross-attention, the encoder's embedding, "
                     "tied+rescaled (v1.0) or own (v1.1) output layer (T5)")


@hookimpl
def register_objectives(register):
    register("span-corruption", "lmkit.plugins.t5.span_corruption:SpanCorruption",
             options="lmkit.plugins.t5.config:SpanCorruptionOptions",
             summary="T5's pre-training: random spans (15%, mean 3) become sentinels, the decoder writes them back")


@hookimpl
def register_optimizers(register):
    register("adafactor", "lmkit.plugins.t5.training:Adafactor", options="lmkit.plugins.t5.training:AdafactorOptions",
             summary="Adafactor: factored second moments, relative step capped by --lr (T5; Shazeer and Stern 2018)")


@hookimpl
def register_schedules(register):
    register("inverse-sqrt", "lmkit.plugins.t5.training:InverseSqrt",
             options="lmkit.plugins.t5.training:InverseSqrtOptions",
             summary="--lr for constant_steps steps, then --lr * sqrt(constant_steps / n) (T5: 1/sqrt(max(n, 10^4)))")


@hookimpl
def register_exporters(register):
    register("decoder.t5", "lmkit.plugins.t5.export:export_plan",
             summary="an encoder graph giving every layer's cross-attention keys/values once, and a decoder-step "
                     "graph with the self-attention cache in and out")


@hookimpl
def register_hf_exporters(register):
    register("decoder.t5", "lmkit.plugins.t5.hf:export_checkpoint", summary="T5ForConditionalGeneration")


@hookimpl
def register_importers(register):
    register("t5", "lmkit.plugins.t5.hf:import_checkpoint",
             summary="T5ForConditionalGeneration checkpoints, v1.0 and v1.1 (t5-*, google/t5-v1_1-*)")


def _preset(summary: str, *, vocab_size: int = 32128, v1_1: bool = False, dropout: float = 0.1,
            max_positions: int = 512, max_new_tokens: int = 64, objective: str = "span-corruption",
            **sizes) -> tuple[dict, str]:
    common = {"vocab_size": vocab_size, "dropout": dropout, "feed_forward": "gated-gelu" if v1_1 else "relu", **sizes}
    spec = {
        "tokenizer": {"type": "unigram"},
        "encoder": {"type": "t5", **common, "max_positions": max_positions},
        "decoder": {"type": "t5", **common, "tie_word_embeddings": not v1_1, "rescale_output": not v1_1},
        "objectives": [{"type": objective, "weight": 1.0}],
        "decoding": {"strategy": "greedy", "max_new_tokens": max_new_tokens},  # T5 decoded greedily (§3.1.4)
    }
    return spec, summary


# Sizes from Raffel et al. 2020 §3.7 and the released configs (t5-*, google/t5-v1_1-*).
PRESETS = {
    "t5-small": _preset("T5 v1.0 small, 60.5M: 6+6 layers x 512, 8 heads, d_ff 2048, relu, tied + rescaled output",
                        d_model=512, d_kv=64, d_ff=2048, n_layers=6, n_heads=8),
    "t5-base": _preset("T5 v1.0 base, 223M: 12+12 layers x 768, 12 heads, d_ff 3072",
                       d_model=768, d_kv=64, d_ff=3072, n_layers=12, n_heads=12),
    "t5-large": _preset("T5 v1.0 large, 738M: 24+24 layers x 1024, 16 heads, d_ff 4096",
                        d_model=1024, d_kv=64, d_ff=4096, n_layers=24, n_heads=16),
    "t5-v1_1-small": _preset("T5 v1.1 small, 77M: 8+8 layers x 512, 6 heads, d_ff 1024, gated-gelu, own output layer",
                             v1_1=True, dropout=0.0, d_model=512, d_kv=64, d_ff=1024, n_layers=8, n_heads=6),
    "t5-v1_1-base": _preset("T5 v1.1 base, 248M: 12+12 layers x 768, 12 heads, d_ff 2048, gated-gelu",
                            v1_1=True, dropout=0.0, d_model=768, d_kv=64, d_ff=2048, n_layers=12, n_heads=12),
    # Trained on sentence pairs (seq2seq), as the other encoder-decoders' tiny presets; pre-train it with
    # --set objectives.0.type=span-corruption.
    "t5-tiny": _preset("a T5 for tests: 2+2 layers x 64, 4 heads of 16, d_ff 128, vocab 512, 64 source tokens",
                       objective="seq2seq",
                       vocab_size=512, dropout=0.0, max_positions=64, max_new_tokens=32, d_model=64, d_kv=16,
                       d_ff=128, n_layers=2, n_heads=4, relative_buckets=16, relative_max_distance=32),
}


@hookimpl
def register_presets(register):
    for name, (spec, summary) in PRESETS.items():
        register(name, spec, summary=summary)
