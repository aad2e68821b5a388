"""GPT-3 (Brown et al. 2020): GPT-2's decoder whose layers alternate dense and locally banded attention.

"We use the same model and architecture as GPT-2 [...] with the exception that we use alternating
dense and locally banded sparse attention patterns in the layers of the transformer, similar to
the Sparse Transformer" (GPT-3 §2.1). The band width and which layers are banded are not given;
they are options here (GPT3Config). A banded layer computes only its band (lmkit.nn.banded: O(T * w)
rather than O(T^2)), and its key/value cache keeps only the last band_width positions.

Everything else (embeddings, blocks, initialisation, parameter names) is GPT2Decoder's: a banded
layer has the same weights as a dense one, only what it attends differs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lmkit.nn import BandedKVCache, BandedSelfAttention, Block, band_attention_mask, self_attention_mask

from .config import GPT3Config
from .model import GPT2Decoder


class GPT3Decoder(GPT2Decoder):
    paper = "GPT-3"

    def __init__(self, config: GPT3Config):
        super().__init__(config)
        self.banded = config.banded()  # for each layer, whether it is banded

    def make_block(self, config: GPT3Config, layer: int, attention: nn.Module | None = None) -> Block:
        if config.banded()[layer]:
            attention = BandedSelfAttention(config.d_model, config.n_heads, config.band_width, bias=config.bias,
                                            dropout=config.dropout)
        return super().make_block(config, layer, attention)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> BandedKVCache:
        """An empty cache: dense layers hold up to `max_len` positions (default: the context), banded
        layers the last band_width."""
        c = self.config
        weight = self.wte.weight
        return BandedKVCache(self.banded, batch_size, c.n_heads, max_len or c.max_positions, c.d_model // c.n_heads,
                             c.band_width, device=weight.device, dtype=weight.dtype)

    def layer_masks(self, attention_mask: Tensor | None, T: int, past: int, device: torch.device) -> list:
        """The causal mask for the dense layers and the band mask for the banded ones, each built once."""
        dense = band = None
        if not all(self.banded):
            dense = self_attention_mask(attention_mask, T, past, causal=True, device=device)
        if any(self.banded):
            band = band_attention_mask(attention_mask, T, past, self.config.band_width, device=device)
        return [band if banded else dense for banded in self.banded]
