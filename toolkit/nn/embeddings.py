"""The input embeddings of BERT-style encoders: token + learned position + segment, LayerNorm, dropout."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .dropout import Dropout


class Embeddings(nn.Module):
    """Sum of token, learned position and segment (token type) embeddings, normalised (BERT §3.2).

    Names are Hugging Face's (`word_embeddings`, `position_embeddings`, `token_type_embeddings`,
    `LayerNorm`), so BERT, ALBERT and RoBERTa checkpoints map onto it unchanged. `dim` is the
    embedding width: BERT's hidden size, or ALBERT's smaller E, projected up by the encoder.

    position_offset: the first position id of a real token. RoBERTa (fairseq) numbers positions
    from padding_idx + 1 = 2, with padding at position padding_idx, so its table has 2 more rows
    than usable positions.
    """

    def __init__(self, vocab_size: int, dim: int, max_positions: int, type_vocab_size: int, *,
                 layer_norm_eps: float = 1e-12, dropout: float = 0.0, position_offset: int = 0):
        super().__init__()
        self.position_offset = position_offset
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        # type_vocab_size 0: no segment embeddings at all (RoBERTa keeps one, of a single type)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, dim) if type_vocab_size else None
        self.LayerNorm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)

    @property
    def max_positions(self) -> int:
        """How many tokens a sequence may have."""
        return self.position_embeddings.num_embeddings - self.position_offset

    def position_ids(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """(B, T) or (T,) position ids: offset, offset + 1, ... for real tokens.

        With an offset (RoBERTa), padding sits at position offset - 1 and real tokens are counted
        from the mask, as fairseq and Hugging Face count them, so left padding gives the same ids.
        """
        T = input_ids.size(1)
        if attention_mask is None or self.position_offset == 0:
            return torch.arange(self.position_offset, self.position_offset + T, device=input_ids.device)
        mask = attention_mask.long()
        return torch.cumsum(mask, dim=1) * mask + (self.position_offset - 1)  # (B, T)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, T) -> (B, T, dim)."""
        T = input_ids.size(1)
        if T > self.max_positions:
            raise ValueError(f"the sequence has {T} tokens but the model has {self.max_positions} positions; "
                             "truncate it (lmkit embed --truncate) or use a model with more positions")
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids(input_ids, attention_mask))
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)  # one segment
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))  # (B, T, dim)
