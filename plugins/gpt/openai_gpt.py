"""GPT (Radford et al. 2018): a post-LN transformer decoder with learned positions and tied embeddings.

Each block is LN(x + attn(x)) then LN(x + mlp(x)), as in the Transformer, so the last block's output
is already normalised and there is no final LayerNorm. Everything is initialised N(0, 0.02).
Parameter names match Hugging Face's OpenAIGPTModel, so its checkpoints load after transposing the
Conv1D weights (see hf.py).
"""
from __future__ import annotations

from torch import nn

from lmkit.nn import Block, TiedOutputProjection

from .config import OpenAIGPTConfig
from .model import LearnedPositionDecoder


class OpenAIGPTDecoder(LearnedPositionDecoder):
    paper = "GPT"

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
        self.apply(self._init_weights)  # normal(0.02) for linears and embeddings, zero biases

    def token_embedding(self) -> nn.Embedding:
        return self.tokens_embed

    def position_embedding(self) -> nn.Embedding:
        return self.positions_embed
