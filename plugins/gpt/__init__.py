"""GPT (Radford et al. 2018), GPT-2 (2019) and GPT-3 (2020): the `gpt`, `gpt2` and `gpt3` decoders and
the presets built on them.

Only registration lives here, so loading the plugin does not import torch; the models are in
openai_gpt.py, model.py and sparse.py.
"""
from lmkit.hookspecs import hookimpl


@hookimpl
def register_decoders(register):
    register("gpt2", "lmkit.plugins.gpt.model:GPT2Decoder", options="lmkit.plugins.gpt.config:GPT2Config",
             summary="pre-LN transformer decoder, learned positions, tied embeddings (GPT-2)")
    register("gpt3", "lmkit.plugins.gpt.sparse:GPT3Decoder", options="lmkit.plugins.gpt.config:GPT3Config",
             summary="GPT-2's decoder with alternating dense and locally banded attention layers (GPT-3)")
    register("gpt", "lmkit.plugins.gpt.openai_gpt:OpenAIGPTDecoder",
             options="lmkit.plugins.gpt.config:OpenAIGPTConfig",
             summary="post-LN transformer decoder, learned positions, tied embeddings (GPT, 2018)")


@hookimpl
def register_exporters(register):
    register("decoder.gpt2", "lmkit.plugins.gpt.export:export_plan",
             summary="one decoder graph, KV cache in and out (optimum names)")
    register("decoder.gpt", "lmkit.plugins.gpt.export:export_plan",
             summary="one decoder graph, KV cache in and out (optimum names); GPT (2018)'s post-LN stack")
    register("decoder.gpt3", "lmkit.plugins.gpt.export:gpt3_export_plan",
             summary="one decoder graph, KV cache in and out; banded layers' cache is their last band_width positions")


@hookimpl
def register_hf_exporters(register):
    register("decoder.gpt2", "lmkit.plugins.gpt.hf:export_checkpoint", summary="GPT2LMHeadModel")
    register("decoder.gpt", "lmkit.plugins.gpt.hf:export_openai_gpt_checkpoint", summary="OpenAIGPTLMHeadModel")


@hookimpl
def register_importers(register):
    register("gpt2", "lmkit.plugins.gpt.hf:import_checkpoint", summary="GPT2LMHeadModel checkpoints")
    register("openai-gpt", "lmkit.plugins.gpt.hf:import_openai_gpt_checkpoint",
             summary="OpenAIGPTLMHeadModel checkpoints (GPT, 2018)")


def _preset(summary: str, *, decoder_type: str = "gpt2", tokenizer: str = "bytelevel-bpe",
            **decoder) -> tuple[dict, str]:
    spec = {
        "tokenizer": {"type": tokenizer},
        "decoder": {"type": decoder_type, **decoder},
        "objectives": [{"type": "causal-lm", "weight": 1.0}],
        "decoding": {"strategy": "greedy"},
    }
    return spec, summary


PRESETS = {
    "gpt2-small": _preset("GPT-2 124M: 12 layers x 768, 12 heads, context 1024",
                          vocab_size=50257, max_positions=1024, d_model=768, n_layers=12, n_heads=12),
    "gpt2-medium": _preset("GPT-2 355M: 24 layers x 1024, 16 heads, context 1024",
                           vocab_size=50257, max_positions=1024, d_model=1024, n_layers=24, n_heads=16),
    "gpt-mini": _preset("a GPT-2 to train on one machine: 6 layers x 384, 6 heads, vocab 8192, context 256",
                        vocab_size=8192, max_positions=256, d_model=384, n_layers=6, n_heads=6),
    "gpt2-tiny": _preset("a GPT-2 for tests: 2 layers x 64, 4 heads, vocab 512, context 64",
                         vocab_size=512, max_positions=64, d_model=64, n_layers=2, n_heads=4),
}

# The original GPT: a (word-level) BPE tokenizer and the `gpt` decoder. Kept apart from PRESETS,
# whose entries are all gpt2 options.
OPENAI_GPT_PRESETS = {
    "gpt": _preset("GPT (2018) 117M: 12 layers x 768, 12 heads, context 512, post-LN",
                   decoder_type="gpt", tokenizer="bpe",
                   vocab_size=40478, max_positions=512, d_model=768, n_layers=12, n_heads=12),
    "gpt-tiny": _preset("a GPT (2018) for tests: 2 layers x 64, 4 heads, vocab 512, context 64",
                        decoder_type="gpt", tokenizer="bpe",
                        vocab_size=512, max_positions=64, d_model=64, n_layers=2, n_heads=4),
}

# GPT-3: the `gpt3` decoder, GPT-2's tokenizer. The paper gives no band width; 256 is GPT-Neo's.
GPT3_PRESETS = {
    "gpt3-small": _preset("GPT-3 Small 125M: 12 layers x 768, 12 heads, context 2048, odd layers banded (256)",
                          decoder_type="gpt3", vocab_size=50257, max_positions=2048, d_model=768, n_layers=12,
                          n_heads=12, band_width=256, banded_layers="odd"),
    "gpt3-tiny": _preset("a GPT-3 for tests: 4 layers x 64, 4 heads, vocab 512, context 64, odd layers banded (8)",
                         decoder_type="gpt3", vocab_size=512, max_positions=64, d_model=64, n_layers=4, n_heads=4,
                         band_width=8, banded_layers="odd"),
}


@hookimpl
def register_presets(register):
    for name, (spec, summary) in {**PRESETS, **OPENAI_GPT_PRESETS, **GPT3_PRESETS}.items():
        register(name, spec, summary=summary)
