"""The options of the decoding strategies: a spec's [decoding] table is checked against them.

Plain dataclasses, importing neither numpy nor torch, so checking a spec stays cheap. Defaults and
meanings follow Hugging Face's GenerationConfig, so settings carry over from transformers.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def _help(text: str) -> dict:
    return {"help": text}


def _max_new_tokens():
    return field(default=50, metadata=_help("most tokens to generate after each prompt"))


def _no_repeat_ngram_size():
    return field(default=0, metadata=_help("never generate an n-gram of this size twice (0: off)"))


def _check_shared(options) -> None:
    if options.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {options.max_new_tokens}")
    if options.no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be 0 (off) or an n-gram size, got {options.no_repeat_ngram_size}")


@dataclass(frozen=True)
class GreedyOptions:
    max_new_tokens: int = _max_new_tokens()
    no_repeat_ngram_size: int = _no_repeat_ngram_size()

    def __post_init__(self):
        _check_shared(self)


@dataclass(frozen=True)
class BeamSearchOptions:
    max_new_tokens: int = _max_new_tokens()
    num_beams: int = field(default=4, metadata=_help("hypotheses kept per prompt at every step"))
    # Hypotheses are ranked by sum_logprob / length ** length_penalty: above 0 favours longer ones.
    length_penalty: float = field(default=1.0, metadata=_help("exponent of the length that divides a score"))
    early_stopping: bool = field(default=False, metadata=_help(
        "stop a prompt once num_beams hypotheses have ended, instead of when none can do better"))
    num_return_sequences: int = field(default=1, metadata=_help("best hypotheses returned per prompt"))
    no_repeat_ngram_size: int = _no_repeat_ngram_size()

    def __post_init__(self):
        _check_shared(self)
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")
        if not 1 <= self.num_return_sequences <= self.num_beams:
            raise ValueError(f"num_return_sequences must be between 1 and num_beams ({self.num_beams}), "
                             f"got {self.num_return_sequences}")
        if self.length_penalty != self.length_penalty or abs(self.length_penalty) == float("inf"):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty}")


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = _max_new_tokens()
    temperature: float = field(default=1.0, metadata=_help("divides the logits: below 1 sharpens, above 1 flattens"))
    top_k: int = field(default=0, metadata=_help("sample among the k most likely tokens only (0: all)"))
    top_p: float = field(default=1.0, metadata=_help(
        "sample among the fewest most likely tokens whose probabilities add up to top_p (1: all)"))
    seed: int | None = field(default=None, metadata=_help("seed of the random choices; unset: different every run"))
    no_repeat_ngram_size: int = _no_repeat_ngram_size()

    def __post_init__(self):
        _check_shared(self)
        if not 0 < self.temperature < float("inf"):  # inf draws every token alike: noise, not sampling
            raise ValueError(f"temperature must be a positive finite number (for deterministic output use the "
                             f"greedy strategy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 (off) or a positive number of tokens, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
