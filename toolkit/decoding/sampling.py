"""Sampling: draw each next token from the model's distribution, optionally sharpened and truncated.

Temperature (Ackley et al. 1985), top-k (Fan et al. 2018) and nucleus/top-p (Holtzman et al. 2020),
applied in that order, as transformers does.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .backend import Backend
from .common import Generation, generate_token_by_token
from .options import SamplingOptions


def keep_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """The logits with all but the k largest of each row set to -inf (ties with the k-th are kept)."""
    if k >= logits.shape[1]:
        return logits
    kth = np.partition(logits, logits.shape[1] - k, axis=1)[:, logits.shape[1] - k, None]  # (R, 1)
    return np.where(logits < kth, -np.inf, logits)


def keep_top_p(probs: np.ndarray, p: float) -> np.ndarray:
    """The probabilities with all but the nucleus zeroed: the fewest most likely tokens whose mass reaches p."""
    order = np.argsort(-probs, axis=1)  # which of two equally likely tokens comes first does not matter
    ranked = np.take_along_axis(probs, order, axis=1)
    before = np.cumsum(ranked, axis=1) - ranked  # mass of the more likely tokens
    keep = np.empty_like(probs, dtype=np.bool_)
    np.put_along_axis(keep, order, before < p, axis=1)  # the most likely token is always kept
    return np.where(keep, probs, 0.0)


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row from (unnormalised) probabilities (R, V), by inverting the cumulative sum."""
    cumulative = np.cumsum(probs, axis=1, dtype=np.float64)
    targets = rng.random((probs.shape[0], 1)) * cumulative[:, -1:]
    return np.argmax(cumulative > targets, axis=1).astype(np.int64)


class Sampling:
    def __init__(self, options: SamplingOptions | None = None):
        self.options = options or SamplingOptions()

    def choose(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One sampled token per row of logits (R, V)."""
        options = self.options
        logits = logits / np.float32(options.temperature)
        if options.top_k:
            logits = keep_top_k(logits, options.top_k)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        if options.top_p < 1.0:
            probs = keep_top_p(probs, options.top_p)
        return draw(probs, rng)

    def generate(self, backend: Backend, prompts: Sequence[Sequence[int]], *, eos_id: int | None,
                 pad_id: int | None, stop: list[list[int]] | None = None,
                 on_token: Callable[[int, int], None] | None = None) -> list[Generation]:
        """One Generation per prompt; the same seed and prompts give the same tokens."""
        rng = np.random.default_rng(self.options.seed)
        return generate_token_by_token(
            backend, prompts, choose=lambda logits: self.choose(logits, rng),
            max_new_tokens=self.options.max_new_tokens,
            no_repeat_ngram_size=self.options.no_repeat_ngram_size,
            eos_id=eos_id, pad_id=pad_id, stop=stop, on_token=on_token,
        )
