"""Hugging Face GPT-2 and GPT (openai-gpt) checkpoints (config.json + model.safetensors) as lmkit configs and weights."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .config import GPT2Config, OpenAIGPTConfig

if TYPE_CHECKING:  # config_from_hf works without torch
    from torch import Tensor

# HF activation_function -> ours. gelu_new and gelu_pytorch_tanh are both the tanh approximation.
ACTIVATIONS = {"gelu_new": "gelu-tanh", "gelu_pytorch_tanh": "gelu-tanh", "gelu": "gelu", "relu": "relu"}

# HF's Conv1D stores its weight as (in, out); nn.Linear wants (out, in).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def config_from_hf(hf_config: dict) -> GPT2Config:
    """A GPT2Config from a Hugging Face config.json; ValueError for what GPT2Decoder cannot represent."""
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise ValueError(f"the checkpoint is not GPT-2: its config.json has model_type {model_type!r}, "
                         f"expected 'gpt2'")
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise ValueError(f"GPT-2 checkpoint uses activation_function {activation!r}; supported: "
                         f"{', '.join(ACTIVATIONS)}")
    unsupported = {
        "scale_attn_weights": hf_config.get("scale_attn_weights", True) is not True,
        "scale_attn_by_inverse_layer_idx": hf_config.get("scale_attn_by_inverse_layer_idx", False),
        "add_cross_attention": hf_config.get("add_cross_attention", False),
    }
    for key, differs in unsupported.items():
        if differs:
            raise ValueError(f"GPT-2 checkpoint sets {key}={hf_config[key]!r}, which lmkit's gpt2 "
                             f"decoder does not support")
    return GPT2Config(
        vocab_size=hf_config.get("vocab_size", 50257),
        max_positions=hf_config.get("n_positions", 1024),
        d_model=hf_config.get("n_embd", 768),
        n_layers=hf_config.get("n_layer", 12),
        n_heads=hf_config.get("n_head", 12),
        d_ff=hf_config.get("n_inner"),  # None: 4 x n_embd, in HF as in lmkit
        dropout=hf_config.get("resid_pdrop", 0.1),
        layer_norm_eps=hf_config.get("layer_norm_epsilon", 1e-5),
        activation=ACTIVATIONS[activation],
    )


def state_dict_from_hf(tensors: dict[str, Tensor], config: GPT2Config) -> dict[str, Tensor]:
    """GPT2Decoder's state dict from the tensors of a GPT2Model or GPT2LMHeadModel checkpoint.

    Keys lose their `transformer.` prefix (GPT2LMHeadModel); the causal-mask buffers (attn.bias,
    attn.masked_bias) and lm_head.weight (tied to wte) are dropped. Anything else is passed through,
    so a strict load_state_dict names it.
    """
    return _decoder_state(tensors, config, embedding="wte.weight", model="gpt2",
                          dropped=(".attn.bias", ".attn.masked_bias"))


def import_checkpoint(hf_config: dict, tensors: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """The spec table and the model's state dict of a Hugging Face GPT-2 checkpoint (`lmkit import-hf`).

    ValueError, with the reason, for a checkpoint the gpt2 decoder cannot represent.
    """
    from lmkit.options import options_to_dict

    config = config_from_hf(hf_config)
    spec = {
        "decoder": {"type": "gpt2", **options_to_dict(config)},
        "objectives": [{"type": "causal-lm"}],
        "decoding": {"strategy": "greedy"},  # what transformers' generate() does for GPT-2
    }
    return spec, _as_model_state(state_dict_from_hf(tensors, config))


# HF OpenAIGPT afn -> ours: its "gelu" is gelu_new, the tanh approximation (modeling_openai.ACT_FNS).
OPENAI_GPT_ACTIVATIONS = {"gelu": "gelu-tanh", "relu": "relu"}


def openai_gpt_config_from_hf(hf_config: dict) -> OpenAIGPTConfig:
    """An OpenAIGPTConfig from a Hugging Face config.json (model_type "openai-gpt"); ValueError otherwise."""
    model_type = hf_config.get("model_type")
    if model_type != "openai-gpt":
        raise ValueError(f"the checkpoint is not GPT: its config.json has model_type {model_type!r}, "
                         f"expected 'openai-gpt'")
    afn = hf_config.get("afn", "gelu")
    if afn not in OPENAI_GPT_ACTIVATIONS:
        raise ValueError(f"GPT checkpoint uses afn {afn!r}; supported: {', '.join(OPENAI_GPT_ACTIVATIONS)}")
    if hf_config.get("tie_word_embeddings", True) is not True:
        raise ValueError("GPT checkpoint sets tie_word_embeddings=False; lmkit's gpt decoder ties them")
    return OpenAIGPTConfig(
        vocab_size=hf_config.get("vocab_size", 40478),
        max_positions=hf_config.get("n_positions", 512),
        d_model=hf_config.get("n_embd", 768),
        n_layers=hf_config.get("n_layer", 12),
        n_heads=hf_config.get("n_head", 12),
        dropout=hf_config.get("resid_pdrop", 0.1),
        layer_norm_eps=hf_config.get("layer_norm_epsilon", 1e-5),
        activation=OPENAI_GPT_ACTIVATIONS[afn],
    )


def openai_gpt_state_dict_from_hf(tensors: dict[str, Tensor], config: OpenAIGPTConfig) -> dict[str, Tensor]:
    """OpenAIGPTDecoder's state dict from the tensors of an OpenAIGPTModel or OpenAIGPTLMHeadModel checkpoint.

    As state_dict_from_hf: `transformer.` goes, Conv1D weights are transposed, the causal-mask
    buffers (attn.bias) and the tied lm_head.weight are dropped. HF's ln_1/ln_2 are already
    post-LN (after each residual sum), as in lmkit's Block(pre_ln=False), so they keep their names.
    """
    return _decoder_state(tensors, config, embedding="tokens_embed.weight", model="gpt",
                          dropped=(".attn.bias", "position_ids"))


def import_openai_gpt_checkpoint(hf_config: dict, tensors: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """The spec table and the model's state dict of a Hugging Face openai-gpt checkpoint (`lmkit import-hf`)."""
    from lmkit.options import options_to_dict

    config = openai_gpt_config_from_hf(hf_config)
    spec = {
        "decoder": {"type": "gpt", **options_to_dict(config)},
        "objectives": [{"type": "causal-lm"}],
        "decoding": {"strategy": "greedy"},
    }
    return spec, _as_model_state(openai_gpt_state_dict_from_hf(tensors, config))


def _as_model_state(decoder_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An importer returns the composed model's state dict (lmkit.contract.Importer): the decoder's, prefixed."""
    return {f"decoder.{name}": tensor for name, tensor in decoder_state.items()}


def _decoder_state(tensors: dict[str, Tensor], config, *, embedding: str, model: str,
                   dropped: tuple[str, ...]) -> dict[str, Tensor]:
    """A GPT-style HF checkpoint as a decoder state dict: `transformer.` goes, Conv1D weights are
    transposed, buffers ending in `dropped` and the tied lm_head.weight are left out."""
    state = {}
    for key, tensor in tensors.items():
        key = key.removeprefix("transformer.")
        if key == "lm_head.weight" or key.endswith(dropped):
            continue
        state[key] = tensor.t().contiguous() if key.endswith(CONV1D) else tensor
    head = tensors.get("lm_head.weight")
    if head is not None and embedding in state and not head.equal(state[embedding]):
        raise ValueError(f"the checkpoint's lm_head.weight differs from its {embedding}; lmkit's {model} "
                         "decoder ties them, so it cannot load untied output embeddings")
    expected = (config.vocab_size, config.d_model)
    if embedding in state and tuple(state[embedding].shape) != expected:
        raise ValueError(f"{embedding} is {tuple(state[embedding].shape)} but the config says "
                         f"(vocab_size, n_embd) = {expected}; config and weights are not from one checkpoint")
    return state


# -- lmkit -> transformers (`lmkit export-hf`) -------------------------------------------------------

# Ours -> HF activation_function (GPT-2) and afn (GPT): the inverses of ACTIVATIONS and OPENAI_GPT_ACTIVATIONS.
HF_ACTIVATIONS = {"gelu-tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
HF_OPENAI_GPT_ACTIVATIONS = {"gelu-tanh": "gelu", "relu": "relu"}


def _exportable(config, model: str) -> None:
    """ValueError for the options transformers' GPT-2 / GPT classes have no field for."""
    if not config.bias:
        raise ValueError(f"the {model} decoder has no biases (bias=false), which transformers' class cannot load")
    if config.sharing != "none":
        raise ValueError(f"the {model} decoder shares layers (sharing={config.sharing!r}), which transformers' "
                         "class cannot represent")


def _hf_state(model, prefix: str = "transformer.") -> dict[str, Tensor]:
    """The decoder's tensors in HF names: `transformer.` added, Conv1D weights as (in, out)."""
    return {f"{prefix}{key}": tensor.t() if key.endswith(CONV1D) else tensor
            for key, tensor in model.decoder.state_dict().items()}


def export_checkpoint(model, tokenizer) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, tensors) of a GPT2LMHeadModel with the weights of a gpt2 decoder (`lmkit export-hf`).

    lm_head.weight is left out: it is wte, and transformers ties it again (tie_word_embeddings).
    """
    config = model.spec.decoder.options
    _exportable(config, "gpt2")
    if config.activation not in HF_ACTIVATIONS:
        raise ValueError(f"activation {config.activation!r} has no transformers name")
    hf_config = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size, "n_positions": config.max_positions, "n_embd": config.d_model,
        "n_layer": config.n_layers, "n_head": config.n_heads,
        "n_inner": None if config.d_ff == 4 * config.d_model else config.d_ff,  # None: 4 x n_embd, as in HF
        "activation_function": HF_ACTIVATIONS[config.activation], "layer_norm_epsilon": config.layer_norm_eps,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "tie_word_embeddings": True,
    }
    return hf_config, _hf_state(model)


def export_openai_gpt_checkpoint(model, tokenizer) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, tensors) of an OpenAIGPTLMHeadModel with the weights of a gpt decoder (`lmkit export-hf`)."""
    config = model.spec.decoder.options
    _exportable(config, "gpt")
    if config.activation not in HF_OPENAI_GPT_ACTIVATIONS:
        raise ValueError(f"transformers' GPT has no activation {config.activation!r} (afn: gelu, the tanh "
                         "approximation, or relu)")
    if config.d_ff != 4 * config.d_model:
        raise ValueError(f"transformers' GPT fixes the feed-forward width at 4 x n_embd; this model's d_ff is "
                         f"{config.d_ff}, not {4 * config.d_model}")
    hf_config = {
        "model_type": "openai-gpt", "architectures": ["OpenAIGPTLMHeadModel"],
        "vocab_size": config.vocab_size, "n_positions": config.max_positions, "n_embd": config.d_model,
        "n_layer": config.n_layers, "n_head": config.n_heads, "afn": HF_OPENAI_GPT_ACTIVATIONS[config.activation],
        "layer_norm_epsilon": config.layer_norm_eps, "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout, "tie_word_embeddings": True,
    }
    return hf_config, _hf_state(model)
