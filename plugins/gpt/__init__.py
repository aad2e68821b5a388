"""GPT-2 (Radford et al. 2019): the `gpt2` decoder and the presets built on it.

Only registration lives here, so loading the plugin does not import torch; the model is in model.py.
"""
from lmkit.hookspecs import hookimpl


@hookimpl
def register_decoders(register):
    register("gpt2", "lmkit.plugins.gpt.model:GPT2Decoder", options="lmkit.plugins.gpt.config:GPT2Config",
             summary="pre-LN transformer decoder, learned positions, tied embeddings (GPT-2)")


@hookimpl
def register_exporters(register):
    register("decoder.gpt2", "lmkit.plugins.gpt.export:export_plan",
             summary="one decoder graph, KV cache in and out (optimum names)")


def _preset(summary: str, **decoder) -> tuple[dict, str]:
    spec = {
        "tokenizer": {"type": "bytelevel-bpe"},
        "decoder": {"type": "gpt2", **decoder},
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


@hookimpl
def register_presets(register):
    for name, (spec, summary) in PRESETS.items():
        register(name, spec, summary=summary)
