"""GPT-2 (Radford et al. 2019): a pre-LN transformer decoder with learned positions and tied embeddings.

What GPT-2 adds over GPT-1's decoder (all in openai/gpt-2 src/model.py): LayerNorm moved to the
input of each sub-block plus a final LayerNorm, and residual projections initialised smaller by
1/sqrt(number of residual layers). Parameter names match Hugging Face's GPT2Model, so its
checkpoints load after transposing the Conv1D weights (see hf.py).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lmkit.nn import Block, Dropout, KVCache, SharedBlocks, TiedOutputProjection, self_attention_mask
from lmkit.nn.stack import CausalDecoderStack

from .config import GPT2Config


class LearnedPositionDecoder(CausalDecoderStack):
    """What GPT and GPT-2 share: token plus learned position embeddings, a stack of causal blocks
    over a key/value cache, and logits from the tied token embedding.

    A subclass builds its modules, under the names its Hugging Face checkpoints use, and says which
    embeddings they are; `final_norm` is where GPT-2 adds its ln_f.
    """

    paper = "GPT"  # how errors name the model

    def token_embedding(self) -> nn.Embedding:
        raise NotImplementedError

    def position_embedding(self) -> nn.Embedding:
        raise NotImplementedError

    def final_norm(self, x: Tensor) -> Tensor:
        return x

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    @property
    def d_model(self) -> int:
        """The width of the hidden states the stack returns."""
        return self.config.d_model

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache for `batch_size` rows and up to `max_len` positions (default: the context)."""
        c = self.config
        weight = self.token_embedding().weight
        return KVCache(c.n_layers, batch_size, c.n_heads, max_len or c.max_positions, c.d_model // c.n_heads,
                       device=weight.device, dtype=weight.dtype)

    def hidden_states(self, input_ids: Tensor, cache: KVCache | None = None,
                      attention_mask: Tensor | None = None, position_ids: Tensor | None = None) -> Tensor:
        """The final hidden states, (B, T, d_model); arguments as in `forward`."""
        B, T = input_ids.shape
        past = 0 if cache is None else cache.length
        if past + T > self.max_positions:
            raise ValueError(
                f"{self.paper} reads at most {self.max_positions} positions (max_positions) but got {T} new "
                f"tokens after {past} cached ones; truncate the input to its last "
                f"{self.max_positions} tokens, or make a model with a larger max_positions"
            )
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)  # (T,), same for all rows
        masks = self.layer_masks(attention_mask, T, past, input_ids.device)
        x = self.drop(self.token_embedding()(input_ids) + self.position_embedding()(position_ids))  # (B, T, C)
        for layer, (block, mask) in enumerate(zip(self.h, masks)):
            x = block(x, mask, cache, layer)
        if cache is not None:
            cache.advance(T)
        return self.final_norm(x)  # (B, T, C)

    def layer_masks(self, attention_mask: Tensor | None, T: int, past: int, device: torch.device) -> list:
        """Each layer's attention mask, built once per forward pass: here one causal mask for all.

        (B, 1, T, past + T), or None where SDPA's is_causal (or no mask at all) is right.
        """
        mask = self_attention_mask(attention_mask, T, past, causal=True, device=device)
        return [mask] * len(self.h)

    def forward(self, input_ids: Tensor, cache: KVCache | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> Tensor:
        """Next-token logits, (B, T, vocab_size), for input_ids (B, T).

        cache: the keys/values of earlier positions; the new ones are appended and cache.length
            advances by T.
        attention_mask: (B, past + T) bool, False at padding; with left padding, also pass
            position_ids so every row's first real token gets position 0.
        position_ids: (B, T); default past + arange(T).
        """
        return self.logits(self.hidden_states(input_ids, cache, attention_mask, position_ids))

    def logits(self, hidden_states: Tensor) -> Tensor:
        """Next-token logits from final hidden states: (B, T, C) -> (B, T, vocab_size)."""
        return self.lm_head(hidden_states, self.token_embedding().weight)  # the tied output embedding


class GPT2Decoder(LearnedPositionDecoder):
    paper = "GPT-2"

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.max_positions, config.d_model)
        self.drop = Dropout(config.dropout)
        # One block per layer (each its own cache slot); with `sharing` their parameters are layer 0's.
        self.h = SharedBlocks(config.n_layers, lambda layer: self.make_block(config, layer), config.sharing)
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        # The output projection is wte itself, so its weights are stored once.
        self.lm_head = TiedOutputProjection()

        self.apply(self._init_weights)
        nn.init.normal_(self.wpe.weight, std=0.01)  # openai/gpt-2 model.py: wpe 0.01, wte 0.02
        # Each block adds two residual branches (attention and MLP) that end in a c_proj; scaling
        # their init by 1/sqrt(2 * n_layers) keeps the residual stream's variance from growing with
        # depth (GPT-2 §2.3).
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * config.n_layers))

    def make_block(self, config: GPT2Config, layer: int, attention: nn.Module | None = None) -> Block:
        """Block `layer` of the stack: pre-LN, with dense causal attention unless `attention` is given."""
        return Block(config.d_model, config.n_heads, causal=True, pre_ln=True, d_ff=config.d_ff,
                     activation=config.activation,
                     bias=config.bias, dropout=config.dropout, layer_norm_eps=config.layer_norm_eps,
                     attention=attention)

    def token_embedding(self) -> nn.Embedding:
        return self.wte

    def position_embedding(self) -> nn.Embedding:
        return self.wpe

    def final_norm(self, x: Tensor) -> Tensor:
        return self.ln_f(x)  # pre-LN blocks leave the residual stream unnormalised
