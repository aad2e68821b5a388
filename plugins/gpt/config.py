"""The options of the GPT-2 decoder (torch-free: specs are checked against it before anything is built).

Names are lmkit's one vocabulary across families (d_model, n_layers, n_heads, d_ff, max_positions);
Hugging Face's names live only in the importer, plugins/gpt/hf.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmkit.nn.options import BANDED_SCHEMES, banded_layers, check_band, check_sharing  # torch-free

__all__ = ["BANDED_SCHEMES", "GPT2Config", "GPT3Config", "OpenAIGPTConfig"]


@dataclass(frozen=True)
class GPT2Config:
    # Byte-level BPE: 256 bytes + 50,000 merges + <|endoftext|> (GPT-2 §2.2). A trained tokenizer's
    # size replaces it when a model is composed.
    vocab_size: int = 50257
    max_positions: int = 1024  # context length; positions are learned, so this is a hard limit
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12  # head size d_model / n_heads = 64 in every GPT-2 size
    # Width of the feed-forward layer; unset means 4 x d_model, as in every GPT and GPT-2 size
    # (GPT §4.1: "3072 dimensional inner states" at d_model 768). Set, it is resolved on construction.
    d_ff: int | None = None
    # OpenAI's released GPT-2 code has no dropout; HF's config uses 0.1 for fine-tuning. One rate
    # serves embeddings, attention probabilities and residual branches.
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5  # openai/gpt-2 src/model.py norm()
    activation: Literal["gelu-tanh", "gelu", "relu"] = "gelu-tanh"  # GPT-2 uses the tanh approximation
    bias: bool = True  # False drops the biases of linears and LayerNorms (nanoGPT: a bit faster, no worse)
    # ALBERT's cross-layer parameter sharing (§3.1, lmkit.nn.sharing) in a decoder: none (GPT-2), all,
    # attention or ffn. Each layer keeps its own slot in the key/value cache.
    sharing: Literal["none", "all", "attention", "ffn"] = "none"

    def __post_init__(self):
        for name in ("vocab_size", "max_positions", "d_model", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}): each head gets "
                f"d_model / n_heads dimensions"
            )
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)  # frozen: resolved once, here
        elif self.d_ff < 1:
            raise ValueError(f"d_ff must be a positive integer, got {self.d_ff}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        check_sharing(self.sharing)


@dataclass(frozen=True)
class OpenAIGPTConfig:
    """The options of the original GPT decoder (Radford et al. 2018)."""

    # BPE with 40,000 merges; Hugging Face's released vocabulary has 40,478 entries.
    vocab_size: int = 40478
    max_positions: int = 512  # context length; positions are learned, so this is a hard limit
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int | None = None  # unset: 4 x d_model (GPT §4.1: 3072 at 768)
    dropout: float = 0.1  # embeddings, attention probabilities and residual branches (GPT §4.1)
    layer_norm_eps: float = 1e-5
    # openai/finetune-transformer-lm's gelu is the tanh approximation, and so is HF's afn="gelu"
    # (ACT_FNS["gelu"] = gelu_new in modeling_openai.py).
    activation: Literal["gelu-tanh", "gelu", "relu"] = "gelu-tanh"
    bias: bool = True
    sharing: Literal["none", "all", "attention", "ffn"] = "none"  # as GPT2Config's

    __post_init__ = GPT2Config.__post_init__  # the same checks


@dataclass(frozen=True)
class GPT3Config(GPT2Config):
    """GPT-3 (Brown et al. 2020): GPT-2's decoder with dense and locally banded attention layers.

    The paper says the layers alternate "dense and locally banded sparse attention patterns,
    similar to the Sparse Transformer" and gives neither the band width nor which layers are
    banded; the defaults follow GPT-Neo (window 256, layer 0 dense, then alternating).
    """

    max_positions: int = 2048  # GPT-3's context (Table 2.1: every size)
    # Query i attends keys i - band_width < j <= i: itself and the band_width - 1 positions before it.
    band_width: int = 256
    # Which layers are banded (0-based): "odd" (1, 3, 5, ...: dense first, alternating, as GPT-Neo),
    # "even", "all", "none" (every layer dense: GPT-2), or the layers themselves: [1, 2, 5] or "1,2,5".
    banded_layers: str | tuple[int, ...] = "odd"

    def __post_init__(self):
        super().__post_init__()
        check_band(self.band_width, self.max_positions)
        self.banded()  # raises on a bad banded_layers

    def banded(self) -> tuple[bool, ...]:
        """For each layer, whether its attention is banded."""
        return banded_layers(self.banded_layers, self.n_layers)
