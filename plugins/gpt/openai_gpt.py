"""GPT (Radford et al. 2018): a post-LN transformer decoder with learned positions and tied embeddings.

Each block is LN(x + attn(x)) then LN(x + mlp(x)), as in the Transformer, so the last block's output
is already normalised and there is no final LayerNorm. Everything is initialised N(0, 0.02).
Parameter names match Hugging Face's OpenAIGPTModel, so its checkpoints load after transposing the
Conv1D weights (see hf.py).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lmkit.nn import Block, KVCache, TiedOutputProjection, self_attention_mask

from .config import OpenAIGPTConfig
from .model import GPT2Decoder


class OpenAIGPTDecoder(nn.Module):
    def __init__(self, config: OpenAIGPTConfig):
        super().__init__()
        self.config = config
        self.tokens_embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.positions_embed = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(
            Block(config.n_embd, config.n_head, causal=True, pre_ln=False, activation=config.activation,
                  bias=config.bias, dropout=config.dropout, layer_norm_epsilon=config.layer_norm_epsilon)
            for _ in range(config.n_layer)
        )
        self.lm_head = TiedOutputProjection()  # the output projection is tokens_embed itself
        self.apply(GPT2Decoder._init_weights)  # normal(0.02) for linears and embeddings, zero biases

    @property
    def max_positions(self) -> int:
        return self.config.n_positions

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache for `batch_size` rows and up to `max_len` positions (default: the context)."""
        c = self.config
        weight = self.tokens_embed.weight
        return KVCache(c.n_layer, batch_size, c.n_head, max_len or c.n_positions, c.n_embd // c.n_head,
                       device=weight.device, dtype=weight.dtype)

    def hidden_states(self, input_ids: Tensor, cache: KVCache | None = None,
                      attention_mask: Tensor | None = None, position_ids: Tensor | None = None) -> Tensor:
        """The last block's output, (B, T, n_embd); arguments as in `forward`."""
        B, T = input_ids.shape
        past = 0 if cache is None else cache.length
        if past + T > self.max_positions:
            raise ValueError(
                f"GPT reads at most {self.max_positions} positions (n_positions) but got {T} new "
                f"tokens after {past} cached ones; truncate the input to its last "
                f"{self.max_positions} tokens, or make a model with a larger n_positions"
            )
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)  # (T,), same for all rows
        mask = self_attention_mask(attention_mask, T, past, causal=True, device=input_ids.device)
        x = self.drop(self.tokens_embed(input_ids) + self.positions_embed(position_ids))  # (B, T, C)
        for layer, block in enumerate(self.h):
            x = block(x, mask, cache, layer)
        if cache is not None:
            cache.advance(T)
        return x  # post-LN blocks: already normalised

    def forward(self, input_ids: Tensor, cache: KVCache | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> Tensor:
        """Next-token logits, (B, T, vocab_size), for input_ids (B, T); see GPT2Decoder.forward."""
        h = self.hidden_states(input_ids, cache, attention_mask, position_ids)  # (B, T, C)
        return self.lm_head(h, self.tokens_embed.weight)  # tied output embedding
