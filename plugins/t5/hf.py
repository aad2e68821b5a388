"""transformers' T5 checkpoints (config.json + model.safetensors) as lmkit's t5 encoder and decoder.

v1.0 (t5-small ... t5-11b) and v1.1 (google/t5-v1_1-*) read alike: feed_forward_proj picks the
feed-forward, and two things are decided apart, so that a checkpoint means the same whichever
transformers wrote it: whether the output layer is the shared embedding (by the weights: an
lm_head.weight that differs from shared.weight is an output layer of its own), and whether the
decoder's states are rescaled by d_model**-0.5 (transformers 5.x writes scale_decoder_outputs; 4.x
said both with tie_word_embeddings).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .config import FEED_FORWARDS, T5DecoderConfig, T5EncoderConfig

if TYPE_CHECKING:
    from torch import Tensor

# transformers' names inside a block -> lmkit's, by stack.
_ENCODER_LAYER = {"layer.0.SelfAttention": "attn", "layer.0.layer_norm": "ln_1",
                  "layer.1.DenseReluDense": "mlp", "layer.1.layer_norm": "ln_2"}
_DECODER_LAYER = {"layer.0.SelfAttention": "attn", "layer.0.layer_norm": "ln_1",
                  "layer.1.EncDecAttention": "cross_attn", "layer.1.layer_norm": "ln_2",
                  "layer.2.DenseReluDense": "mlp", "layer.2.layer_norm": "ln_3"}
_BLOCK = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.(layer\.\d\.[A-Za-z_]+)\.(.+)$")


def configs_from_hf(hf_config: dict, *, tied: bool, shared: bool) -> tuple[T5EncoderConfig, T5DecoderConfig]:
    """The encoder's and decoder's options from a T5Config dict; ValueError naming an unsupported field."""
    if hf_config.get("model_type") != "t5":
        raise ValueError(f"the checkpoint is not T5: its config.json has model_type {hf_config.get('model_type')!r}")
    if hf_config.get("is_encoder_decoder", True) is not True:
        raise ValueError("config.json sets is_encoder_decoder=false (a T5EncoderModel?); lmkit imports "
                         "T5ForConditionalGeneration checkpoints")
    projection = hf_config.get("feed_forward_proj", "relu")
    if projection not in FEED_FORWARDS:
        raise ValueError(f"config.json feed_forward_proj is {projection!r}, which lmkit's t5 does not support; "
                         f"supported: {', '.join(FEED_FORWARDS)}")
    common = {
        "vocab_size": hf_config.get("vocab_size", 32128),
        "d_model": hf_config.get("d_model", 512),
        "d_kv": hf_config.get("d_kv", 64),
        "d_ff": hf_config.get("d_ff", 2048),
        "n_heads": hf_config.get("num_heads", 8),
        "relative_buckets": hf_config.get("relative_attention_num_buckets", 32),
        "relative_max_distance": hf_config.get("relative_attention_max_distance", 128),
        "dropout": hf_config.get("dropout_rate", 0.1),
        "layer_norm_eps": hf_config.get("layer_norm_epsilon", 1e-6),
        "feed_forward": projection,
    }
    layers = hf_config.get("num_layers", 6)
    decoder_layers = hf_config.get("num_decoder_layers") or layers
    rescale = hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True))
    encoder = T5EncoderConfig(**common, n_layers=layers, max_positions=hf_config.get("n_positions", 512))
    decoder = T5DecoderConfig(**common, n_layers=decoder_layers, share_embedding=shared, tie_word_embeddings=tied,
                              rescale_output=bool(rescale))
    return encoder, decoder


def state_dict_from_hf(tensors: dict[str, Tensor], *, tied: bool, shared: bool) -> dict[str, Tensor]:
    """The composed model's state dict (encoder.*, decoder.*) from a T5ForConditionalGeneration's tensors.

    shared.weight becomes the encoder's embedding (the decoder reads it); the stacks' copies of it and
    the tied lm_head are dropped, as is the cross-attention's unused relative bias. Anything unknown is
    passed through, so that a strict load names it.
    """
    state = {}
    embedding = tensors.get("shared.weight", tensors.get("encoder.embed_tokens.weight"))
    if embedding is None:
        raise ValueError("the checkpoint has no shared.weight (nor encoder.embed_tokens.weight)")
    state["encoder.embed_tokens.weight"] = embedding
    for key, tensor in tensors.items():
        if key in ("shared.weight", "encoder.embed_tokens.weight"):
            continue
        if key == "decoder.embed_tokens.weight":
            if not shared:
                state[key] = tensor
            continue
        if key == "lm_head.weight":
            if not tied:
                state["decoder.lm_head.weight"] = tensor
            continue
        match = _BLOCK.match(key)
        if match is None:
            state[key] = tensor  # final_layer_norm.weight keeps its name
            continue
        stack, layer, part, rest = match.groups()
        if part.endswith("Attention") and rest == "relative_attention_bias.weight":
            if part.endswith("SelfAttention") and layer == "0":
                state[f"{stack}.relative_bias.relative_attention_bias.weight"] = tensor
            continue  # the cross-attention's, which transformers never reads
        names = _ENCODER_LAYER if stack == "encoder" else _DECODER_LAYER
        state[f"{stack}.block.{layer}.{names.get(part, part)}.{rest}"] = tensor
    return state


def import_checkpoint(hf_config: dict, tensors: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """The spec table and state dict of a transformers T5 checkpoint (`lmkit import-hf`), v1.0 or v1.1."""
    from lmkit.options import options_to_dict

    embedding = tensors.get("shared.weight", tensors.get("encoder.embed_tokens.weight"))
    head = tensors.get("lm_head.weight")
    tied = head is None or (embedding is not None and head.shape == embedding.shape and bool(head.equal(embedding)))
    own = tensors.get("decoder.embed_tokens.weight")
    shared = own is None or (embedding is not None and own.shape == embedding.shape and bool(own.equal(embedding)))
    encoder, decoder = configs_from_hf(hf_config, tied=tied, shared=shared)
    spec = {
        "encoder": {"type": "t5", **options_to_dict(encoder)},
        "decoder": {"type": "t5", **options_to_dict(decoder)},
        "objectives": [{"type": "seq2seq"}],
        "decoding": {"strategy": "greedy", "max_new_tokens": 64},
    }
    return spec, state_dict_from_hf(tensors, tied=tied, shared=shared)


# A checkpoint with spiece.model and no tokenizer.json (`lmkit import-hf`): T5's vocabulary has 100 sentinels
# after the pieces (transformers' T5Tokenizer extra_ids) and ends every text with </s>.
import_checkpoint.spiece = {"extra_ids": 100, "template": "t5"}


# -- lmkit -> transformers (`lmkit export-hf`) -------------------------------------------------------

_HF_NAMES = {"encoder": {ours: hf for hf, ours in _ENCODER_LAYER.items()},
             "decoder": {ours: hf for hf, ours in _DECODER_LAYER.items()}}
_OURS = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.([A-Za-z_0-9]+)\.(.+)$")


def export_checkpoint(model, tokenizer) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, tensors) of a T5ForConditionalGeneration with the t5 encoder's and decoder's weights.

    The converse of state_dict_from_hf: the encoder's embedding is shared.weight (the stacks' copies
    and a tied lm_head are left out: transformers ties them), each stack's relative bias sits in its
    first block's self-attention. A decoder with an embedding of its own has no transformers twin.
    """
    encoder, decoder = model.spec.encoder.options, model.spec.decoder.options
    if not decoder.share_embedding:
        raise ValueError("the t5 decoder has an input embedding of its own (share_embedding=false); "
                         "transformers' T5 shares one between encoder and decoder")
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "n_heads", "relative_buckets", "relative_max_distance",
                 "dropout", "layer_norm_eps", "feed_forward"):
        if getattr(encoder, name) != getattr(decoder, name):
            raise ValueError(f"the t5 encoder and decoder differ in {name}, which transformers' T5Config holds once")
    tensors = {}
    for key, tensor in model.state_dict().items():
        if key == "encoder.embed_tokens.weight":
            tensors["shared.weight"] = tensor
        elif key == "decoder.lm_head.weight":
            tensors["lm_head.weight"] = tensor
        elif key.endswith("relative_bias.relative_attention_bias.weight"):
            stack = key.split(".")[0]
            tensors[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = tensor
        elif match := _OURS.match(key):
            stack, layer, part, rest = match.groups()
            tensors[f"{stack}.block.{layer}.{_HF_NAMES[stack].get(part, part)}.{rest}"] = tensor
        else:
            tensors[key] = tensor  # final_layer_norm.weight keeps its name
    start = model.decoder.decoder_start_token_id(tokenizer) if tokenizer is not None else 0
    hf_config = {
        "model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True,
        "vocab_size": encoder.vocab_size, "d_model": encoder.d_model, "d_kv": encoder.d_kv, "d_ff": encoder.d_ff,
        "num_heads": encoder.n_heads, "num_layers": encoder.n_layers, "num_decoder_layers": decoder.n_layers,
        "relative_attention_num_buckets": encoder.relative_buckets,
        "relative_attention_max_distance": encoder.relative_max_distance, "dropout_rate": encoder.dropout,
        "layer_norm_epsilon": encoder.layer_norm_eps, "feed_forward_proj": encoder.feed_forward,
        "n_positions": encoder.max_positions, "tie_word_embeddings": decoder.tie_word_embeddings,
        "scale_decoder_outputs": decoder.rescale_output, "decoder_start_token_id": start,
    }
    return hf_config, tensors
