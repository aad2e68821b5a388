"""The options of the GLM decoder and of the blank-infilling objective (torch-free: specs are checked
against them before anything is built).

Names are lmkit's one vocabulary across families (d_model, n_layers, n_heads, d_ff, max_positions).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The special tokens GLM reads and writes (Du et al. 2022 §2.1-2.3; THUDM/GLM calls [S] and [E]
# `sop` and `eop`). Composing a GLM adds those its tokenizer lacks.
MASK, SENTENCE_MASK, GENERATION_MASK, START, END = "[MASK]", "[sMASK]", "[gMASK]", "[S]", "[E]"
SPECIAL_TOKENS = (MASK, SENTENCE_MASK, GENERATION_MASK, START, END)
MASKS = (MASK, SENTENCE_MASK, GENERATION_MASK)
MAX_SPAN = 39  # blocklm_utils.py: span lengths are drawn from Poisson(3) on 1..39


@dataclass(frozen=True)
class GLMConfig:
    # BERT's uncased WordPiece (30,522) padded by THUDM to 30,592 with GLM's specials. A trained
    # tokenizer's size replaces it when a model is composed.
    vocab_size: int = 30592
    # Tokens a sequence may hold, Part A and Part B together; the pos1 table has this many rows,
    # the pos2 table one more (a span of n tokens is read as [S] x1..xn at pos2 1..n+1).
    max_positions: int = 512
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int | None = None  # unset: 4 x d_model (GLM-Base 3072, GLM-Large 4096)
    dropout: float = 0.1  # THUDM/GLM: embeddings, attention probabilities and residual branches
    layer_norm_eps: float = 1e-5
    # Megatron's gelu (THUDM/GLM mpu/transformer.py gelu_impl) is the tanh approximation.
    activation: Literal["gelu-tanh", "gelu", "relu"] = "gelu-tanh"

    def __post_init__(self):
        for name in ("vocab_size", "max_positions", "d_model", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        elif self.d_ff < 1:
            raise ValueError(f"d_ff must be a positive integer, got {self.d_ff}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")


@dataclass(frozen=True)
class BlankInfillingOptions:
    """GLM's pre-training objective (Du et al. 2022 §2.1 and §2.3; THUDM/GLM blocklm_utils.py).

    Each sequence is corrupted by one of three kinds of blank, drawn with the weights below:
    token-level spans ([MASK], lengths from Poisson(poisson_lambda) on 1..max_span_length, until
    mask_ratio of the tokens are masked), sentence-level spans ([sMASK], whole sentences until
    mask_ratio), or one document-level span ([gMASK], the last 50-100% of the text).
    """

    mask_ratio: float = 0.15  # §2.1: spans are drawn until 15% of the tokens are masked
    poisson_lambda: float = 3.0  # §2.1: span lengths ~ Poisson(3), as in BART
    max_span_length: int = MAX_SPAN
    # The multi-task mixture (§2.3): the weight of each kind of blank. GLM-Base/Large trained on
    # token-level blanks only; GLM-10B mixed all three.
    token_weight: float = 1.0
    sentence_weight: float = 0.0
    document_weight: float = 0.0
    # The share of the text a document-level span takes, drawn uniformly (§2.3: 50%-100%).
    document_min_ratio: float = 0.5
    document_max_ratio: float = 1.0
    shuffle_spans: bool = True  # §2.1: Part B's spans in a random order (False: text order)
    dynamic: bool = True  # new blanks every epoch (seeded by epoch); False: one draw for the whole run

    def __post_init__(self):
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not self.poisson_lambda > 0:
            raise ValueError(f"poisson_lambda must be positive, got {self.poisson_lambda}")
        if not 1 <= self.max_span_length <= 512:
            raise ValueError(f"max_span_length must be between 1 and 512, got {self.max_span_length}")
        weights = (self.token_weight, self.sentence_weight, self.document_weight)
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("token_weight, sentence_weight and document_weight must be non-negative and not all "
                             f"0, got {weights}")
        if not 0.0 < self.document_min_ratio <= self.document_max_ratio <= 1.0:
            raise ValueError("need 0 < document_min_ratio <= document_max_ratio <= 1, got "
                             f"{self.document_min_ratio} and {self.document_max_ratio}")


@dataclass(frozen=True)
class TextToTextOptions:
    """GLM fine-tuned on (input, target) pairs, each target a [gMASK] span after its input (Du et al. 2022 §2.3;
    lmkit finetune --task text-to-text)."""

    # Fine-tuned on a classification file: the task name its examples were prefixed with ("rte: sentence1: ..."),
    # kept so that lmkit eval --task and lmkit predict read other files of the task alike (as T5's seq2seq keeps it).
    task_prefix: str = ""

    def __post_init__(self):
        if not isinstance(self.task_prefix, str):
            raise ValueError(f"task_prefix must be a string, got {self.task_prefix!r}")
