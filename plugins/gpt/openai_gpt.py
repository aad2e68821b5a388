"""GPT (Radford et al. 2018): a post-LN transformer decoder with learned positions and tied embeddings.

Each block is LN(x + attn(x)) then LN(x + mlp(x)), as in the Transformer, so the last block's output
is already normalised and there is no final LayerNorm. Everything is initialised N(0, 0.02).
Parameter names match Hugging Face's OpenAIGPTModel, so its checkpoints load after transposing the
Conv1D weights (see hf.py).
"""
from __future__ import annotations

from torch import nn

from lmkit.nn import Block, Dropout, SharedBlocks, TiedOutputProjection

from .config import OpenAIGPTConfig
from .model import LearnedPositionDecoder


class OpenAIGPTDecoder(LearnedPositionDecoder):
    paper = "GPT"

    def __init__(self, config: OpenAIGPTConfig):
        super().__init__()
        self.config = config
        self.tokens_embed = nn.Embedding(config.vocab_size, config.d_model)
        self.positions_embed = nn.Embedding(config.max_positions, config.d_model)
        self.drop = Dropout(config.dropout)
        self.h = SharedBlocks(config.n_layers, lambda layer: Block(
            config.d_model, config.n_heads, causal=True, pre_ln=False, d_ff=config.d_ff,
            activation=config.activation, bias=config.bias, dropout=config.dropout,
            layer_norm_eps=config.layer_norm_eps), config.sharing)
        self.lm_head = TiedOutputProjection()  # the output projection is tokens_embed itself
        self.apply(self._init_weights)  # normal(0.02) for linears and embeddings, zero biases

    def token_embedding(self) -> nn.Embedding:
        return self.tokens_embed

    def position_embedding(self) -> nn.Embedding:
        return self.positions_embed
