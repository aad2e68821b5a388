"""Torch building blocks shared by the model families.

Importing this package does not import torch: the names below load their module on first use, so
torch-free code (spec checking) can import lmkit.nn.options. Importing a block imports torch.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "SelfAttention": "attention", "self_attention_mask": "attention",
    "BandedKVCache": "banded", "BandedSelfAttention": "banded", "band_attention_mask": "banded",
    "banded_attention": "banded", "symmetric_band_mask": "banded",
    "MLP": "blocks", "Activation": "blocks", "Block": "blocks", "activation_module": "blocks",
    "KVCache": "cache", "TiedOutputProjection": "tied", "decoding_layout": "layout",
    "OneDNNLinear": "onednn", "training_layout": "onednn",
    "BlockStack": "sharing", "SharedBlocks": "sharing",
    "Dropout": "dropout", "embedding_dropout": "dropout", "locked_dropout": "dropout", "locked_mask": "dropout", "weight_drop": "dropout",
    "RecurrentCache": "recurrent", "lstm_layer": "recurrent", "masked_steps": "recurrent",
    "RMSNorm": "norms", "RelativePositionBias": "relative", "relative_position_bucket": "relative",
    "MultiHeadAttention": "encoder_decoder", "FeedForward": "encoder_decoder", "EncoderBlock": "encoder_decoder",
    "DecoderBlock": "encoder_decoder", "additive_mask": "encoder_decoder", "clamp_half": "encoder_decoder",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'lmkit.nn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
