"""Torch building blocks shared by the model families (importing this imports torch)."""
from .attention import SelfAttention, self_attention_mask
from .banded import BandedKVCache, BandedSelfAttention, band_attention_mask, banded_attention
from .blocks import MLP, Activation, Block, activation_module
from .cache import KVCache
from .tied import TiedOutputProjection

__all__ = [
    "MLP", "Activation", "BandedKVCache", "BandedSelfAttention", "Block", "KVCache", "SelfAttention",
    "TiedOutputProjection", "activation_module", "band_attention_mask", "banded_attention", "self_attention_mask",
]
