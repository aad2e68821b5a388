"""Torch building blocks shared by the model families (importing this imports torch)."""
from .attention import SelfAttention, self_attention_mask
from .blocks import MLP, Activation, Block, activation_module
from .cache import KVCache
from .tied import TiedOutputProjection

__all__ = [
    "MLP", "Activation", "Block", "KVCache", "SelfAttention", "TiedOutputProjection", "activation_module",
    "self_attention_mask",
]
