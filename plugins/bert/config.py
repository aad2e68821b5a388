"""Options of the BERT, ALBERT and RoBERTa encoders and of their pre-training objectives (torch-free).

Encoder field names are lmkit's one vocabulary across families (`d_model`, `n_layers`, `n_heads`,
`d_ff`, `max_positions`, ...); Hugging Face's names live only in the importer, plugins/bert/hf.py.
The encoders' width is `config.d_model`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmkit.nn.options import SHARINGS, banded_layers, check_band, check_sharing  # torch-free

__all__ = ["SHARINGS", "AlbertConfig", "BertConfig", "MaskedLMOptions", "RobertaConfig", "SentencePairOptions"]


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522  # uncased WordPiece; a trained tokenizer's size replaces it when composed
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072  # 4 x d_model
    activation: Literal["gelu", "gelu-tanh", "relu"] = "gelu"  # BERT uses the exact erf GELU
    max_positions: int = 512  # learned positions: a hard limit on sequence length
    type_vocab_size: int = 2  # segments A and B
    # BERT §A.2: 0.1 on all layers; one rate serves embeddings, attention probabilities and
    # residual branches (HF's hidden_dropout_prob and attention_probs_dropout_prob are both 0.1).
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12  # google-research/bert modeling.py layer_norm
    pooler: bool = True  # tanh(W h_[CLS]), what next-sentence prediction reads
    # GPT-3's locally banded attention, made bidirectional (lmkit.nn.banded): unset, every layer is
    # dense; set, a token of a banded layer attends itself and the band_width - 1 tokens on each side.
    band_width: int | None = None
    # Which layers are banded when band_width is set: "all" (the default), "odd", "even", "none", or
    # the layers themselves, [1, 2] or "1,2" (0-based), as GPT-3's option.
    banded_layers: str | tuple[int, ...] = "all"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must not be negative, got {self.type_vocab_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads}): each head gets d_model / n_heads dimensions")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        check_band(self.band_width, self.usable_positions,
                   what="max_positions" if self.usable_positions == self.max_positions
                   else f"max_positions less the position offset, {self.max_positions} - {self.position_offset}")
        self.banded()  # raises on a bad banded_layers

    @property
    def position_offset(self) -> int:
        return 0  # RoBERTa numbers positions from pad_token_id + 1

    @property
    def usable_positions(self) -> int:
        return self.max_positions - self.position_offset

    def banded(self) -> tuple[bool, ...]:
        """For each layer, whether its attention is banded (none without band_width)."""
        scheme = banded_layers(self.banded_layers, self.n_layers)
        return scheme if self.band_width else (False,) * self.n_layers

    @property
    def d_embed(self) -> int:
        return self.d_model  # BERT embeds at full width; ALBERT factorises


@dataclass(frozen=True)
class AlbertConfig(BertConfig):
    vocab_size: int = 30000  # SentencePiece
    # Factorised embedding (ALBERT §3.1): tokens embed in E dimensions, projected up to H, so the
    # embedding costs V*E + E*H instead of V*H.
    d_embed: int = 128
    activation: Literal["gelu", "gelu-tanh", "relu"] = "gelu-tanh"  # HF's gelu_new
    dropout: float = 0.0  # ALBERT v2 trains without dropout
    # Cross-layer parameter sharing (ALBERT §3.1, Table 4): all layers share everything (the
    # default), only the attention, only the feed-forward network, or nothing.
    sharing: Literal["none", "all", "attention", "ffn"] = "all"

    def __post_init__(self):
        super().__post_init__()
        if self.d_embed < 1:
            raise ValueError(f"d_embed must be a positive integer, got {self.d_embed}")
        check_sharing(self.sharing)


@dataclass(frozen=True)
class RobertaConfig(BertConfig):
    vocab_size: int = 50265  # byte-level BPE, 50K merges
    # fairseq numbers positions from pad_token_id + 1, so 514 rows give 512 usable positions.
    max_positions: int = 514  # rows of the position table, the pad offset included: 512 usable
    pad_token_id: int = 1  # <s>=0, <pad>=1, </s>=2, <unk>=3 in fairseq's dictionary
    type_vocab_size: int = 1  # no segment B: no NSP (RoBERTa §4.2)
    layer_norm_eps: float = 1e-5
    pooler: bool = False  # RobertaForMaskedLM has none; heads read the <s> state

    def __post_init__(self):
        if not 0 <= self.pad_token_id < self.max_positions - 1:
            raise ValueError(f"pad_token_id must be in [0, max_positions - 1), got {self.pad_token_id}")
        super().__post_init__()

    @property
    def position_offset(self) -> int:
        return self.pad_token_id + 1


# -- objectives ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskedLMOptions:
    # BERT §3.1 / create_pretraining_data.py: 15% of the tokens are picked, of which 80% become
    # [MASK], 10% a random token and 10% stay as they are.
    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    max_predictions: int = 0  # at most this many picks per sequence (BERT: 20 at length 128); 0: no cap
    whole_word: bool = False  # pick whole words, all their pieces together (BERT's later release)
    max_ngram: int = 1  # ALBERT §4.1: spans of n words, n <= max_ngram drawn with p(n) ~ 1/n
    # A new mask every time a sequence is read (RoBERTa §4.1); False draws one mask per sequence
    # for the whole run, as BERT's static pre-processing did.
    dynamic: bool = True
    # Data: sentence pairs when next-sentence or sentence-order is trained beside; else full
    # sentences packed across documents (RoBERTa's FULL-SENTENCES), with a separator between them.
    short_seq_prob: float = 0.0  # BERT: 0.1 of pairs aim at a shorter random length

    def __post_init__(self):
        for name in ("mask_prob", "mask_token_prob", "random_token_prob", "short_seq_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mask_prob == 0:
            raise ValueError("mask_prob must be above 0: masked LM needs tokens to predict")
        if self.mask_token_prob + self.random_token_prob > 1.0:
            raise ValueError(f"mask_token_prob + random_token_prob must be at most 1, got "
                             f"{self.mask_token_prob} + {self.random_token_prob}")
        if self.max_predictions < 0:
            raise ValueError(f"max_predictions must not be negative, got {self.max_predictions}")
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram must be at least 1, got {self.max_ngram}")


@dataclass(frozen=True)
class SentencePairOptions:
    """Next-sentence prediction (BERT) and sentence-order prediction (ALBERT) read the same pairs."""

    # The share of pairs that are negatives: a random next sentence (NSP) or a swapped pair (SOP).
    negative_prob: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.negative_prob <= 1.0:
            raise ValueError(f"negative_prob must be in [0, 1], got {self.negative_prob}")
