"""Sampling: draw each next token from the model's distribution, optionally sharpened and truncated.

Temperature (Ackley et al. 1985), top-k (Fan et al. 2018) and nucleus/top-p (Holtzman et al. 2020),
applied in that order, as transformers does.

Randomness per row, not per batch: every row draws from a generator of its own, seeded from the
seed and the row's key (by default its prompt's tokens; translation gives the source sentence),
plus how many earlier rows of the call had the same key. So a prompt samples the same tokens alone
as batched with any others, in any position, and n copies of one prompt give n different samples
(the k-th copy the same each time). A row draws one number per token it generates, so rows that end
early change nobody else's draws. Without a seed, one is drawn per call and used the same way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .backend import Backend
from .common import Generation, Positions, generate_token_by_token
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


def draw(probs: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """One token per row from (unnormalised) probabilities (R, V) and a uniform number in [0, 1) per
    row (R,), by inverting the cumulative sum."""
    cumulative = np.cumsum(probs, axis=1, dtype=np.float64)
    targets = uniform[:, None] * cumulative[:, -1:]
    return np.argmax(cumulative > targets, axis=1).astype(np.int64)


def row_generators(seed: int | None, keys: Sequence[Sequence[int]]) -> list[np.random.Generator]:
    """One generator per row, seeded from (seed, the row's key, the number of earlier rows with that key).

    The length of the key goes into the seed too, so no two different keys share an entropy list.
    """
    if seed is None:
        seed = int(np.random.SeedSequence().entropy)
    seen: dict[tuple[int, ...], int] = {}
    generators = []
    for key in keys:
        key = tuple(int(token) for token in key)
        copy = seen.get(key, 0)
        seen[key] = copy + 1
        generators.append(np.random.default_rng([seed, copy, len(key), *key]))
    return generators


class Sampling:
    def __init__(self, options: SamplingOptions | None = None):
        self.options = options or SamplingOptions()

    def choose(self, logits: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """One sampled token per row of logits (R, V), given a uniform number in [0, 1) per row (R,)."""
        options = self.options
        logits = logits / np.float32(options.temperature)
        if options.top_k:
            logits = keep_top_k(logits, options.top_k)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        if options.top_p < 1.0:
            probs = keep_top_p(probs, options.top_p)
        return draw(probs, uniform)

    def generate(self, backend: Backend, prompts: Sequence[Sequence[int]], *, eos_id: int | None,
                 pad_id: int | None, stop: list[list[int]] | None = None,
                 on_token: Callable[[int, int], None] | None = None,
                 keys: Sequence[Sequence[int]] | None = None, positions: Positions | None = None) -> list[Generation]:
        """One Generation per prompt; the same seed gives a prompt the same tokens, whatever it is batched with.

        keys: what seeds each prompt's generator (see the module's docstring); default the prompts.
            Give them when the prompts alone do not tell rows apart: every translation starts from <s>.
        positions: the model's own positions of the prompts (lmkit.decoding.common.Positions: GLM's spans).
        """
        keys = prompts if keys is None else keys
        if len(keys) != len(prompts):
            raise ValueError(f"{len(keys)} keys for {len(prompts)} prompts; give one key per prompt")
        generators = row_generators(self.options.seed, keys)

        def choose(logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return self.choose(logits, np.array([generators[row].random() for row in rows]))

        return generate_token_by_token(
            backend, prompts, choose=choose,
            max_new_tokens=self.options.max_new_tokens,
            no_repeat_ngram_size=self.options.no_repeat_ngram_size,
            eos_id=eos_id, pad_id=pad_id, stop=stop, on_token=on_token, positions=positions,
        )
