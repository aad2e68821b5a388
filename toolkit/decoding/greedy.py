"""Greedy search: the most likely next token, every step."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .backend import Backend
from .common import Generation, Positions, generate_token_by_token
from .options import GreedyOptions


class Greedy:
    def __init__(self, options: GreedyOptions | None = None):
        self.options = options or GreedyOptions()

    def generate(self, backend: Backend, prompts: Sequence[Sequence[int]], *, eos_id: int | None,
                 pad_id: int | None, stop: list[list[int]] | None = None,
                 on_token: Callable[[int, int], None] | None = None,
                 keys: Sequence[Sequence[int]] | None = None, positions: Positions | None = None) -> list[Generation]:
        """One Generation per prompt; see Backend for what `backend` must provide.

        keys: what tells rows apart for sampling's seeds; greedy search draws nothing and ignores them,
            but takes them so every strategy is called alike (lmkit.seq2seq passes the sources).
        positions: the model's own positions of the prompts (lmkit.decoding.common.Positions: GLM's spans).
        """
        return generate_token_by_token(
            backend, prompts, choose=lambda logits, rows: logits.argmax(axis=1).astype(np.int64),
            max_new_tokens=self.options.max_new_tokens,
            no_repeat_ngram_size=self.options.no_repeat_ngram_size,
            eos_id=eos_id, pad_id=pad_id, stop=stop, on_token=on_token, positions=positions,
        )
