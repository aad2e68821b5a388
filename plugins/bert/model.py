"""BERT (Devlin et al. 2019), ALBERT (Lan et al. 2020) and RoBERTa (Liu et al. 2019) encoders.

All three are the same post-LN bidirectional transformer over lmkit's shared blocks; each paper is
a small diff on BertEncoder:

    BERT     token + segment + learned position embeddings, post-LN blocks, GELU, tanh pooler
    ALBERT   embeddings of width E projected up to H (`embedding_hidden_mapping_in`), and blocks
             shared across layers (lmkit.nn.BlockStack)
    RoBERTa  positions numbered from pad_token_id + 1 (fairseq), one segment, no pooler by default

Each is an lmkit.contract.Encoder: forward(input_ids, attention_mask, token_type_ids) returns an
EncoderOutput whose pooler_output is the pooled [CLS] (RoBERTa: the <s> state); word_embeddings()
is what the masked-LM decoder is tied to.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lmkit.contract import EncoderOutput
from lmkit.nn import BandedSelfAttention, Block, self_attention_mask, symmetric_band_mask
from lmkit.nn.embeddings import Embeddings
from lmkit.nn.sharing import BlockStack
from lmkit.nn.stack import EncoderStack

from .config import AlbertConfig, BertConfig, RobertaConfig


class BertEncoder(EncoderStack):
    """Embeddings, a stack of post-LN blocks, and the pooler."""

    paper = "BERT"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(
            config.vocab_size, config.d_embed, config.max_positions, config.type_vocab_size,
            layer_norm_eps=config.layer_norm_eps, dropout=config.dropout,
            position_offset=getattr(config, "position_offset", 0))
        self.banded = config.banded()  # for each layer, whether its attention is banded (band_width)
        self.blocks = BlockStack(config.n_layers, self._make_block, getattr(config, "sharing", "none"))
        # BERT §3: the pooled representation of the sequence is tanh(W h_[CLS] + b).
        self.pooler = nn.Linear(config.d_model, config.d_model) if config.pooler else None
        self.apply(self._init_weights)

    def _make_block(self, layer: int) -> Block:
        c = self.config
        # A banded layer (band_width set) attends the band_width - 1 tokens on each side of a token
        # and itself, computed blockwise (lmkit.nn.banded); its weights are a dense layer's.
        attention = (BandedSelfAttention(c.d_model, c.n_heads, c.band_width, causal=False, dropout=c.dropout)
                     if self.banded[layer] else None)
        return Block(c.d_model, c.n_heads, causal=False, pre_ln=False, d_ff=c.d_ff,
                     activation=c.activation, dropout=c.dropout, layer_norm_eps=c.layer_norm_eps,
                     attention=attention)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # google-research/bert: truncated normal with std 0.02 (initializer_range) for every matrix.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def max_positions(self) -> int:
        """Usable positions (RoBERTa: config.max_positions - pad_token_id - 1)."""
        return self.embeddings.max_positions

    @property
    def d_model(self) -> int:
        """The width of the hidden states the encoder returns."""
        return self.config.d_model

    def word_embeddings(self) -> nn.Embedding:
        """The token embedding, (vocab_size, d_embed): the masked-LM decoder is tied to it."""
        return self.embeddings.word_embeddings

    def embed_tokens(self, input_ids: Tensor, token_type_ids: Tensor | None,
                     attention_mask: Tensor | None) -> Tensor:
        return self.embeddings(input_ids, token_type_ids, attention_mask)  # (B, T, H)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> EncoderOutput:
        """Top-layer hidden states (B, T, H) and the pooled output (B, H) of input_ids (B, T).

        attention_mask: (B, T), true (or 1) at real tokens and false at padding; None: no padding.
        token_type_ids: (B, T) segment ids (0 for A, 1 for B); None: all 0.
        """
        if input_ids.size(1) > self.max_positions:
            raise ValueError(f"{self.paper} reads at most {self.max_positions} tokens but got {input_ids.size(1)}; "
                             "truncate the input (lmkit embed --truncate) or use a model with more positions")
        x = self.embed_tokens(input_ids, token_type_ids, attention_mask)  # (B, T, H)
        padding = None if attention_mask is None else attention_mask.bool()
        states = self.blocks(x, self.layer_masks(padding, input_ids.size(1)))  # (B, T, H)
        if padding is None:
            padding = torch.ones_like(input_ids, dtype=torch.bool)
        return EncoderOutput(states, padding, self.pooled(states))

    def layer_masks(self, padding: Tensor | None, T: int) -> list:
        """Each layer's attention mask, each kind built once: (B, 1, 1, T) or None for dense layers,
        lmkit.nn.banded.symmetric_band_mask's for banded ones."""
        dense = band = None
        if not all(self.banded):
            dense = self_attention_mask(padding, T, 0, causal=False)
        if any(self.banded):
            band = symmetric_band_mask(padding, T, self.config.band_width)
        return [band if banded else dense for banded in self.banded]

    def pooled(self, hidden_states: Tensor) -> Tensor:
        """(B, T, H) -> (B, H): the pooler over the first token ([CLS], <s>), or that state itself
        when the encoder has no pooler (RoBERTa)."""
        first = hidden_states[:, 0]
        return first if self.pooler is None else torch.tanh(self.pooler(first))


class AlbertEncoder(BertEncoder):
    """BERT with a factorised embedding and parameters shared across layers (ALBERT §3.1)."""

    paper = "ALBERT"

    def __init__(self, config: AlbertConfig):
        super().__init__(config)
        # E -> H: with E << H, the V x E table is the embedding's bulk instead of V x H.
        self.embedding_hidden_mapping_in = nn.Linear(config.d_embed, config.d_model)
        self._init_weights(self.embedding_hidden_mapping_in)

    def embed_tokens(self, input_ids, token_type_ids, attention_mask):
        return self.embedding_hidden_mapping_in(super().embed_tokens(input_ids, token_type_ids, attention_mask))


class RobertaEncoder(BertEncoder):
    """BERT's encoder with fairseq's position numbering (from pad_token_id + 1) and, by default, no pooler."""

    paper = "RoBERTa"

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
