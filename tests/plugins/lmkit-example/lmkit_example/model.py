import torch
from torch import nn

from lmkit.nn.stack import CausalDecoderStack

from .options import BigramOptions


class NoCache:
    """A bigram reads only the current token, so its cache holds nothing but the count of positions."""

    def __init__(self):
        self.length = 0

    def reorder(self, rows: torch.Tensor) -> None:
        pass

    def merge(self, other: "NoCache", max_len: int) -> "NoCache":
        merged = NoCache()
        merged.length = max(self.length, other.length)
        return merged


class BigramDecoder(CausalDecoderStack):
    """Logits of the next token looked up from the current one (lmkit.contract.CausalDecoder)."""

    max_positions = None  # it reads one token at a time: no limit
    task_recipe = "mean-pool"  # lmkit finetune reads its features with this plugin's own recipe

    def __init__(self, options: BigramOptions):
        super().__init__()
        self.config = options
        self.next_token_logits = nn.Embedding(options.vocab_size, options.vocab_size)

    @property
    def d_model(self) -> int:
        return self.config.vocab_size  # its only states are the logits

    def new_cache(self, batch_size: int, max_len: int | None = None) -> NoCache:
        return NoCache()

    def hidden_states(self, input_ids, cache=None, attention_mask=None, position_ids=None):
        if cache is not None:
            cache.length += input_ids.shape[1]
        return self.next_token_logits(input_ids)  # (B, T, V)

    def logits(self, hidden_states):
        return hidden_states
