"""GPT (Radford et al. 2018) and GPT-2 (2019): the `gpt` and `gpt2` decoders and the presets built on them.

Only registration lives here, so loading the plugin does not import torch; the models are in
openai_gpt.py and model.py.
"""
from lmkit.hookspecs import hookimpl


@hookimpl
def register_decoders(register):
    register("gpt2", "lmkit.plugins.gpt.model:GPT2Decoder", options="lmkit.plugins.gpt.config:GPT2Config",
             summary="pre-LN transformer decoder, learned positions, tied embeddings (GPT-2)")
    register("gpt", "lmkit.plugins.gpt.openai_gpt:OpenAIGPTDecoder",
             options="lmkit.plugins.gpt.config:OpenAIGPTConfig",
             summary="post-LN transformer decoder, learned positions, tied embeddings (GPT, 2018)")


@hookimpl
def register_exporters(register):
    register("decoder.gpt2", "lmkit.plugins.gpt.export:export_plan",
             summary="one decoder graph, KV cache in and out (optimum names)")


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
                          vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": _preset("GPT-2 355M: 24 layers x 1024, 16 heads, context 1024",
                           vocab_size=50257, n_positions=1024, n_embd=1024, n_layer=24, n_head=16),
    "gpt-mini": _preset("a GPT-2 to train on one machine: 6 layers x 384, 6 heads, vocab 8192, context 256",
                        vocab_size=8192, n_positions=256, n_embd=384, n_layer=6, n_head=6),
    "gpt2-tiny": _preset("a GPT-2 for tests: 2 layers x 64, 4 heads, vocab 512, context 64",
                         vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4),
}

# The original GPT: a (word-level) BPE tokenizer and the `gpt` decoder. Kept apart from PRESETS,
# whose entries are all gpt2 options.
OPENAI_GPT_PRESETS = {
    "gpt": _preset("GPT (2018) 117M: 12 layers x 768, 12 heads, context 512, post-LN",
                   decoder_type="gpt", tokenizer="bpe",
                   vocab_size=40478, n_positions=512, n_embd=768, n_layer=12, n_head=12),
    "gpt-tiny": _preset("a GPT (2018) for tests: 2 layers x 64, 4 heads, vocab 512, context 64",
                        decoder_type="gpt", tokenizer="bpe",
                        vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4),
}


@hookimpl
def register_presets(register):
    for name, (spec, summary) in {**PRESETS, **OPENAI_GPT_PRESETS}.items():
        register(name, spec, summary=summary)
