import torch
from torch import nn

from .options import BigramOptions


class BigramDecoder(nn.Module):
    """Logits of the next token looked up from the current one; keeps no cache, needs none."""

    def __init__(self, options: BigramOptions):
        super().__init__()
        self.config = options
        self.next_token_logits = nn.Embedding(options.vocab_size, options.vocab_size)

    max_positions = None  # it reads one token at a time: no limit

    @property
    def d_model(self) -> int:
        return self.config.vocab_size  # its only states are the logits

    def forward(self, input_ids: torch.Tensor, cache=None, attention_mask=None, position_ids=None):
        return self.next_token_logits(input_ids)  # (B, T, V)
