"""Beam search, with Hugging Face transformers' bookkeeping, so outputs match its generate() token for token.

Each prompt keeps num_beams running hypotheses, all of them rows of one backend call. At every step
the num_beams * V continuations of a prompt's beams are scored by their summed log-probability and
the 2 * num_beams best kept: twice as many as needed, so that num_beams can go on even if every beam
picked eos. A candidate among the best num_beams that ends (eos, a stop sequence, the length limit)
becomes a finished hypothesis, ranked by sum_logprob / generated_length ** length_penalty; the best
num_beams candidates that do not end run on. A prompt is done when its num_beams finished hypotheses
cannot be beaten: when the best running beam, normalised by its current length, scores below the
worst of them (transformers' heuristic for early_stopping=False), or, with early_stopping, as soon as
num_beams hypotheses have finished. See transformers/generation/utils.py, `_beam_search`.

Every prompt searches on its own: its length limit is its own room (new_token_rooms), the other
prompts' beams never compete with its own, and it leaves the backend's batch once done, so a prompt
gets the same hypotheses alone as batched. One step of the search, for all prompts at once:

    expand    score every continuation of every running beam, keep the 2 * num_beams best (Candidates)
    select    the num_beams best candidates that do not end run on
    finish    candidates that end join the finished hypotheses, if they rank among the best so far
    advance   which prompts still search, and which backend row each of their beams continues
and at the end, `results` turns each prompt's finished hypotheses into Generations.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .backend import Backend
from .common import (
    FINISH_REASONS,
    Generation,
    Positions,
    ban_repeated_ngrams,
    fit_prompts,
    largest_indices,
    left_pad,
    log_softmax_terms,
    new_token_rooms,
    prefill,
    stop_lengths,
    stop_tail,
    token_sequences,
    top_k_indices,
)
from .options import BeamSearchOptions

EOS, STOP, LENGTH = (FINISH_REASONS.index(reason) for reason in ("eos", "stop", "length"))


class BeamSearch:
    def __init__(self, options: BeamSearchOptions | None = None):
        self.options = options or BeamSearchOptions()

    def generate(self, backend: Backend, prompts: Sequence[Sequence[int]], *, eos_id: int | None,
                 pad_id: int | None, stop: list[list[int]] | None = None,
                 on_token: Callable[[int, int], None] | None = None,
                 keys: Sequence[Sequence[int]] | None = None, positions: Positions | None = None) -> list[Generation]:
        """The best hypothesis of each prompt, the next best in its `alternatives`.

        Beam search knows its output only at the end, so on_token sees the best tokens then.
        keys: ignored (beam search draws nothing); taken so every strategy is called alike.
        positions: the model's own positions of the prompts (lmkit.decoding.common.Positions).
        """
        stop = token_sequences(stop)
        prompts = fit_prompts(prompts, backend.max_length, self.options.max_new_tokens)
        input_ids, attention_mask = left_pad(prompts, pad_id)
        search = _Search(self.options, input_ids, attention_mask,
                         new_token_rooms(prompts, backend.max_length, self.options.max_new_tokens), eos_id, stop)
        logits = prefill(backend, input_ids, attention_mask, positions)
        for t in range(search.steps):
            candidates = search.expand(logits, t)
            search.select(candidates)
            search.finish(candidates)
            rows = search.advance(candidates)
            if rows is None:
                break
            logits = backend.step(search.last_tokens(t), rows)
        results = search.results()
        if on_token is not None:
            for b, result in enumerate(results):
                for token in result.tokens:
                    on_token(b, token)
        return results


@dataclass
class _Candidates:
    """The 2K best continuations of each searching prompt's beams at one step, best first: (n, 2K) each."""

    length: int  # new tokens of every candidate
    scores: np.ndarray  # float32: summed log-probability of the new tokens
    beams: np.ndarray  # int64: the running beam (0..K-1) each extends
    tokens: np.ndarray  # int64: the token it adds
    sequences: np.ndarray  # int64 (n, 2K, P + steps): prompt (-1 at padding) and new tokens so far
    ends_with_eos: np.ndarray  # bool
    stop_length: np.ndarray  # int64: length of the stop sequence it ends with, or 0
    ends: np.ndarray  # bool: eos, a stop sequence, or the prompt's length limit


class _Search:
    """The state of one beam search over B prompts, K beams each, P prompt columns (left-padded)."""

    def __init__(self, options: BeamSearchOptions, input_ids: np.ndarray, attention_mask: np.ndarray,
                 limits: np.ndarray, eos_id: int | None, stop: list[list[int]]):
        self.options, self.eos_id, self.stop = options, eos_id, stop
        K = self.K = options.num_beams
        B, P = self.B, self.P = input_ids.shape
        self.limits = limits  # (B,) new tokens each prompt may have
        self.steps = int(limits.max())
        # Running beams, per prompt: the prompt (-1 at padding) then new tokens, and summed log-probs.
        # All start as the prompt, but only the first may be extended at the first step, or the K
        # beams would all pick the same best token.
        self.running = np.empty((B, K, P + self.steps), dtype=np.int64)
        self.running[:, :, :P] = np.where(attention_mask, input_ids, -1)[:, None, :]
        self.running_scores = np.full((B, K), -np.inf, dtype=np.float32)
        self.running_scores[:, 0] = 0.0
        # Finished hypotheses, per prompt, best first; a slot scored -inf is still empty.
        self.finished = {
            "tokens": np.zeros((B, K, P + self.steps), dtype=np.int64),
            "score": np.full((B, K), -np.inf, dtype=np.float32),  # sum_logprob / length ** length_penalty
            "logprob": np.zeros((B, K), dtype=np.float32),
            "kept": np.zeros((B, K), dtype=np.int64),  # new tokens without the eos or stop sequence
            "length": np.zeros((B, K), dtype=np.int64),  # new tokens with it
            "reason": np.zeros((B, K), dtype=np.int64),  # index into FINISH_REASONS
        }
        self.improvable = np.ones(B, dtype=np.bool_)  # could a running beam still beat a finished one?
        self.live = np.arange(B)  # the prompts still searching, in the backend's row order
        self.rows_per_prompt = 1  # after the prefill each prompt has one row, which all its beams continue

    def expand(self, logits: np.ndarray, t: int) -> _Candidates:
        """Score every continuation of the running beams; keep each prompt's 2K best and how they end.

        logits: (n * rows_per_prompt, V), the backend's rows for the n searching prompts.
        """
        live, K, P, R = self.live, self.K, self.P, self.rows_per_prompt
        n, length = len(live), t + 1  # prompts searching; new tokens once this step is taken
        top, log_sum = log_softmax_terms(logits)  # (n * R, 1) each, from the model's own logits before any ban
        if self.options.no_repeat_ngram_size:
            history = self.running[live, :R, :P + t].reshape(n * R, P + t)
            ban_repeated_ngrams(logits, history, self.options.no_repeat_ngram_size)
        # A prompt's 2K best continuations are among each of its rows' 2K best tokens, and within a row logits
        # rank tokens as log-probabilities do (they differ by the row's constant): only those C = 2K tokens a
        # row are scored, not K * V (whole-vocabulary arrays cost more than the model at V = 32k).
        V = logits.shape[1]
        C = min(2 * K, V)
        tokens = largest_indices(logits, C)  # (n * R, C), unordered
        log_probs = (np.take_along_axis(logits, tokens, axis=1) - top) - log_sum  # as log_softmax computes them
        # (n, K, C); at the first step R is 1 and the K beams (all but the first at -inf) share its row.
        scores = self.running_scores[live, :, None] + log_probs.reshape(n, R, C)
        tokens = np.broadcast_to(tokens.reshape(n, R, C), scores.shape).reshape(n, K * C)
        scores = scores.reshape(n, K * C)
        best = top_k_indices(scores, 2 * K)  # (n, 2K), best first
        beams, tokens = best // C, np.take_along_axis(tokens, best, axis=1)
        sequences = np.take_along_axis(self.running[live], beams[:, :, None], axis=1)  # (n, 2K, P + steps)
        sequences[:, :, P + t] = tokens
        ends_with_eos = tokens == self.eos_id if self.eos_id is not None else np.zeros_like(best, np.bool_)
        stop_length = stop_lengths(sequences[:, :, P:P + length].reshape(-1, length), self.stop).reshape(n, -1)
        ends = ends_with_eos | (stop_length > 0) | (length == self.limits[live])[:, None]
        return _Candidates(length, np.take_along_axis(scores, best, axis=1), beams, tokens, sequences,
                           ends_with_eos, stop_length, ends)

    def select(self, c: _Candidates) -> None:
        """The K best candidates that do not end become the running beams (-inf where fewer go on)."""
        going_on = np.where(c.ends, -np.inf, c.scores)
        keep = np.argsort(-going_on, axis=1, kind="stable")[:, :self.K]
        self.running[self.live] = np.take_along_axis(c.sequences, keep[:, :, None], axis=1)
        self.running_scores[self.live] = np.take_along_axis(going_on, keep, axis=1)
        self.sources = np.take_along_axis(c.beams, keep, axis=1)  # (n, K) the beam each continues

    def finish(self, c: _Candidates) -> None:
        """Candidates among the K best that end join the finished hypotheses, if they rank among the K
        best so far and the prompt still takes new ones (transformers' BeamHypotheses.add)."""
        live, finished, K = self.live, self.finished, self.K
        full = np.isfinite(finished["score"][live]).all(axis=1)
        open_to_new = self.improvable[live] & ~(self.options.early_stopping & full)
        new = c.ends & (np.arange(2 * K) < K) & np.isfinite(c.scores) & open_to_new[:, None]
        if not new.any():
            return
        normalized = c.scores / np.float32(c.length ** self.options.length_penalty)
        arriving = {
            "tokens": c.sequences,
            "score": np.where(new, normalized, -np.inf),
            "logprob": c.scores,
            "kept": c.length - np.where(c.ends_with_eos, 1, c.stop_length),
            "length": np.full(c.ends.shape, c.length, dtype=np.int64),
            "reason": np.select([c.ends_with_eos, c.stop_length > 0], [EOS, STOP], LENGTH),
        }
        order = top_k_indices(np.concatenate([finished["score"][live], arriving["score"]], axis=1), K)
        for key, values in finished.items():
            merged = np.concatenate([values[live], arriving[key]], axis=1)
            index = order if merged.ndim == 2 else order[:, :, None]
            values[live] = np.take_along_axis(merged, index, axis=1)

    def advance(self, c: _Candidates) -> np.ndarray | None:
        """Drop the prompts that are done; None when none is left, else the backend row each beam of the
        prompts still searching continues, (n' * K,), for Backend.step.

        A prompt is done (transformers: _check_early_stop_heuristic and _beam_search_has_unfinished_sequences)
        when no running beam can beat its worst finished hypothesis, when early_stopping and K have
        finished, or when every candidate ended (its length limit).
        """
        live, finished = self.live, self.finished
        full = np.isfinite(finished["score"][live]).all(axis=1)
        worst = np.where(full, finished["score"][live].min(axis=1), -np.inf)
        best_running = self.running_scores[live, 0] / np.float32(c.length ** self.options.length_penalty)
        self.improvable[live] &= best_running > worst
        searching = self.improvable[live] & ~(self.options.early_stopping & full) & ~c.ends.all(axis=1)
        if not searching.any():
            return None
        # Row of the backend's last output that each beam continues.
        rows = np.arange(len(live))[:, None] * self.rows_per_prompt + self.sources % self.rows_per_prompt
        self.live, self.rows_per_prompt = live[searching], self.K
        return rows[searching].ravel()

    def last_tokens(self, t: int) -> np.ndarray:
        """The token each running beam of the searching prompts took at step t, (n * K,), for Backend.step."""
        return self.running[self.live, :, self.P + t].ravel()

    def results(self) -> list[Generation]:
        return [self._result(b) for b in range(self.B)]

    def _result(self, b: int) -> Generation:
        finished, P = self.finished, self.P
        hypotheses = [
            Generation(tokens=finished["tokens"][b, j, P:P + finished["kept"][b, j]].tolist(),
                       score=float(finished["logprob"][b, j]),
                       finish_reason=FINISH_REASONS[finished["reason"][b, j]],
                       tail=stop_tail(finished["tokens"][b, j, P:P + finished["length"][b, j]],
                                      int(finished["length"][b, j] - finished["kept"][b, j]), self.stop)
                       if finished["reason"][b, j] == STOP else "",
                       normalized_score=float(finished["score"][b, j]))
            for j in range(self.options.num_return_sequences) if np.isfinite(finished["score"][b, j])
        ]
        if not hypotheses:  # every continuation was banned (no_repeat_ngram_size over a tiny vocabulary)
            return Generation([], float("-inf"), "length", normalized_score=float("-inf"))
        best, *alternatives = hypotheses
        best.alternatives = alternatives
        return best
