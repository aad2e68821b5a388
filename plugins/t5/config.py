"""The options of T5's encoder and decoder (torch-free: specs are checked against them first).

Defaults are t5-small (Raffel et al. 2020 §3.7, transformers' t5-small config). v1.0 and v1.1 differ
in options only: feed_forward (relu / gated-gelu), and, in the decoder, tie_word_embeddings and
rescale_output, which are stored apart so that a checkpoint's meaning never depends on a library
version (transformers 4.x and 5.x read one flag differently).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FEED_FORWARDS = ("relu", "gated-gelu")


def _check(config, *more: str) -> None:
    """ValueError, naming the option, for what no T5 stack can be built with."""
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "n_layers", "n_heads", "relative_buckets",
                 "relative_max_distance", *more):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if config.relative_buckets < 4 or config.relative_buckets % 4:
        raise ValueError(f"relative_buckets must be a multiple of 4 (an encoder halves them per sign and each "
                         f"half has exact and logarithmic buckets), got {config.relative_buckets}")
    if config.relative_max_distance <= config.relative_buckets // 2:
        raise ValueError(f"relative_max_distance ({config.relative_max_distance}) must exceed half of "
                         f"relative_buckets ({config.relative_buckets // 2}), where logarithmic buckets begin")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
    if not config.layer_norm_eps > 0:
        raise ValueError(f"layer_norm_eps must be positive, got {config.layer_norm_eps}")
    if config.feed_forward not in FEED_FORWARDS:
        raise ValueError(f"feed_forward must be one of {', '.join(FEED_FORWARDS)}, got {config.feed_forward!r}")


@dataclass(frozen=True)
class T5EncoderConfig:
    # SentencePiece's 32,000 pieces plus 100 sentinels, padded to a multiple of 128 (32,128 rows).
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64  # per head; n_heads x d_kv need not be d_model (t5-11b: 128 heads x 128)
    d_ff: int = 2048
    n_layers: int = 6
    n_heads: int = 8
    # Relative position buckets (§2.1): 32 buckets, logarithmic beyond 8 (per sign), all beyond 128 in one.
    relative_buckets: int = 32
    relative_max_distance: int = 128
    dropout: float = 0.1  # v1.0's rate (§3.1.2); v1.1 was pre-trained without dropout
    layer_norm_eps: float = 1e-6
    feed_forward: Literal["relu", "gated-gelu"] = "relu"  # v1.0 relu; v1.1 gated-gelu (GEGLU)
    # Relative positions set no hard limit; 512 is the input length T5 was pre-trained and fine-tuned
    # with (§3.1.2): longer sources are refused (or cut with --truncate) rather than read badly.
    max_positions: int = 512
    # transformers' T5 tokenizer ends every input with </s> (its post-processor, "$A </s>"), and the released
    # checkpoints were trained so: every source is encoded with it (lmkit.contract.Encoder.source_suffix),
    # in training, fine-tuning, generation and the export alike.
    append_eos: bool = True

    def __post_init__(self):
        _check(self, "max_positions")
        if not isinstance(self.append_eos, bool):
            raise ValueError(f"append_eos must be true or false, got {self.append_eos!r}")


@dataclass(frozen=True)
class T5DecoderConfig:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    n_layers: int = 6
    n_heads: int = 8
    relative_buckets: int = 32  # the decoder's own table: causal buckets, all 32 looking back
    relative_max_distance: int = 128
    dropout: float = 0.1
    layer_norm_eps: float = 1e-6
    feed_forward: Literal["relu", "gated-gelu"] = "relu"
    # The decoder reads its tokens through the encoder's embedding: one matrix for both (T5's `shared`).
    share_embedding: bool = True
    # v1.0: the output layer is the token embedding (§3.1.1)...
    tie_word_embeddings: bool = True
    # ...and the decoder's states are scaled by d_model**-0.5 before it (Mesh TensorFlow, transformers).
    # v1.1 has an output layer of its own and no rescale.
    rescale_output: bool = True

    def __post_init__(self):
        _check(self)


@dataclass(frozen=True)
class SpanCorruptionOptions:
    # §3.3.4 and the released models: 15% of the tokens dropped, in spans of 3 on average.
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    label_smoothing: float = 0.0  # as the seq2seq objective's; T5 used none

    def __post_init__(self):
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"noise_density must be in (0, 1), got {self.noise_density}")
        if not self.mean_noise_span_length >= 1.0:
            raise ValueError(f"mean_noise_span_length must be at least 1, got {self.mean_noise_span_length}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
