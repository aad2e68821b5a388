"""The options of the GPT-2 decoder (torch-free: specs are checked against it before anything is built).

Names follow Hugging Face's GPT2Config, so an imported config.json maps field for field.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class GPT2Config:
    # Byte-level BPE: 256 bytes + 50,000 merges + <|endoftext|> (GPT-2 §2.2). A trained tokenizer's
    # size replaces it when a model is composed.
    vocab_size: int = 50257
    n_positions: int = 1024  # context length; positions are learned, so this is a hard limit
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12  # head size n_embd / n_head = 64 in every GPT-2 size
    # OpenAI's released GPT-2 code has no dropout; HF's config uses 0.1 for fine-tuning. One rate
    # serves embeddings, attention probabilities and residual branches.
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5  # openai/gpt-2 src/model.py norm()
    activation: Literal["gelu-tanh", "gelu", "relu"] = "gelu-tanh"  # GPT-2 uses the tanh approximation
    bias: bool = True  # False drops the biases of linears and LayerNorms (nanoGPT: a bit faster, no worse)

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head gets "
                f"n_embd / n_head dimensions"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_epsilon <= 0:
            raise ValueError(f"layer_norm_epsilon must be positive, got {self.layer_norm_epsilon}")


@dataclass(frozen=True)
class OpenAIGPTConfig:
    """The options of the original GPT decoder (Radford et al. 2018); names follow HF's OpenAIGPTConfig."""

    # BPE with 40,000 merges; Hugging Face's released vocabulary has 40,478 entries.
    vocab_size: int = 40478
    n_positions: int = 512  # context length; positions are learned, so this is a hard limit
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    dropout: float = 0.1  # embeddings, attention probabilities and residual branches (GPT §4.1)
    layer_norm_epsilon: float = 1e-5
    # openai/finetune-transformer-lm's gelu is the tanh approximation, and so is HF's afn="gelu"
    # (ACT_FNS["gelu"] = gelu_new in modeling_openai.py).
    activation: Literal["gelu-tanh", "gelu", "relu"] = "gelu-tanh"
    bias: bool = True

    __post_init__ = GPT2Config.__post_init__  # the same checks
