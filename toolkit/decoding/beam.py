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
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .backend import Backend
from .common import (
    FINISH_REASONS,
    Generation,
    ban_repeated_ngrams,
    fit_prompts,
    left_pad,
    log_softmax,
    new_token_room,
    stop_lengths,
    top_k_indices,
)
from .options import BeamSearchOptions

EOS, STOP, LENGTH = (FINISH_REASONS.index(reason) for reason in ("eos", "stop", "length"))


class BeamSearch:
    def __init__(self, options: BeamSearchOptions | None = None):
        self.options = options or BeamSearchOptions()

    def generate(self, backend: Backend, prompts: Sequence[Sequence[int]], *, eos_id: int | None,
                 pad_id: int | None, stop: list[list[int]] | None = None,
                 on_token: Callable[[int, int], None] | None = None) -> list[Generation]:
        """The best hypothesis of each prompt, the next best in its `alternatives`.

        Beam search knows its output only at the end, so on_token sees the best tokens then.
        """
        options = self.options
        K = options.num_beams
        stop = [list(map(int, sequence)) for sequence in stop or () if len(sequence)]
        prompts = fit_prompts(prompts, backend.max_length, options.max_new_tokens)
        input_ids, attention_mask = left_pad(prompts, pad_id)
        B, P = input_ids.shape
        steps = new_token_room(P, backend.max_length, options.max_new_tokens)

        # Running beams, per prompt: the prompt (-1 at padding) then new tokens, and summed log-probs.
        # All start as the prompt, but only the first may be extended at the first step, or the K
        # beams would all pick the same best token.
        running = np.empty((B, K, P + steps), dtype=np.int64)
        running[:, :, :P] = np.where(attention_mask, input_ids, -1)[:, None, :]
        running_scores = np.full((B, K), -np.inf, dtype=np.float32)
        running_scores[:, 0] = 0.0
        # Finished hypotheses, per prompt, best first; a slot scored -inf is still empty.
        finished = {
            "tokens": np.zeros((B, K, P + steps), dtype=np.int64),
            "score": np.full((B, K), -np.inf, dtype=np.float32),  # sum_logprob / length ** length_penalty
            "logprob": np.zeros((B, K), dtype=np.float32),
            "kept": np.zeros((B, K), dtype=np.int64),  # new tokens without the eos or stop sequence
            "reason": np.zeros((B, K), dtype=np.int64),  # index into FINISH_REASONS
        }
        improvable = np.ones(B, dtype=np.bool_)  # could a running beam still beat a finished one?

        live = np.arange(B)  # the prompts still searching, in the backend's row order
        rows_per_prompt = 1  # after the prefill each prompt has one row, which all its beams continue
        logits = backend.prefill(input_ids, attention_mask)
        for t in range(steps):
            n, length = len(live), t + 1  # prompts searching; new tokens once this step is taken
            log_probs = log_softmax(logits)  # (n * rows_per_prompt, V)
            if options.no_repeat_ngram_size:
                history = running[live, :rows_per_prompt, :P + t].reshape(n * rows_per_prompt, P + t)
                ban_repeated_ngrams(log_probs, history, options.no_repeat_ngram_size)
            V = log_probs.shape[1]
            scores = running_scores[live, :, None] + log_probs.reshape(n, rows_per_prompt, V)  # (n, K, V)
            scores = scores.reshape(n, K * V)
            best = top_k_indices(scores, 2 * K)  # (n, 2K), best first
            candidate_scores = np.take_along_axis(scores, best, axis=1)
            candidate_beams, candidate_tokens = np.divmod(best, V)
            candidates = np.take_along_axis(running[live], candidate_beams[:, :, None], axis=1)  # (n, 2K, L)
            candidates[:, :, P + t] = candidate_tokens

            # How each candidate ends, if it does.
            ends_with_eos = candidate_tokens == eos_id if eos_id is not None else np.zeros_like(best, np.bool_)
            stop_length = stop_lengths(candidates[:, :, P:P + length].reshape(-1, length), stop).reshape(n, -1)
            ends = ends_with_eos | (stop_length > 0) | (length == steps)

            # The K best candidates that do not end are the next running beams.
            going_on = np.where(ends, -np.inf, candidate_scores)
            keep = np.argsort(-going_on, axis=1, kind="stable")[:, :K]
            running[live] = np.take_along_axis(candidates, keep[:, :, None], axis=1)
            running_scores[live] = np.take_along_axis(going_on, keep, axis=1)
            sources = np.take_along_axis(candidate_beams, keep, axis=1)  # (n, K) the beam each continues

            # Candidates among the K best that end join the finished hypotheses, if they rank among the
            # K best so far and the prompt still takes new ones.
            full = np.isfinite(finished["score"][live]).all(axis=1)
            open_to_new = improvable[live] & ~(options.early_stopping & full)
            new = ends & (np.arange(2 * K) < K) & np.isfinite(candidate_scores) & open_to_new[:, None]
            if new.any():
                normalized = candidate_scores / np.float32(length ** options.length_penalty)
                arriving = {
                    "tokens": candidates,
                    "score": np.where(new, normalized, -np.inf),
                    "logprob": candidate_scores,
                    "kept": length - np.where(ends_with_eos, 1, stop_length),
                    "reason": np.select([ends_with_eos, stop_length > 0], [EOS, STOP], LENGTH),
                }
                order = top_k_indices(np.concatenate([finished["score"][live], arriving["score"]], axis=1), K)
                for key, values in finished.items():
                    merged = np.concatenate([values[live], arriving[key]], axis=1)
                    index = order if merged.ndim == 2 else order[:, :, None]
                    values[live] = np.take_along_axis(merged, index, axis=1)

            # Is the prompt done? (transformers: _check_early_stop_heuristic and
            # _beam_search_has_unfinished_sequences, per prompt)
            full = np.isfinite(finished["score"][live]).all(axis=1)
            worst = np.where(full, finished["score"][live].min(axis=1), -np.inf)
            improvable[live] &= running_scores[live, 0] / np.float32(length ** options.length_penalty) > worst
            searching = improvable[live] & ~(options.early_stopping & full) & ~ends.all(axis=1)
            if length == steps or not searching.any():
                break
            # Row of the backend's last output that each beam continues, for the prompts still searching.
            rows = np.arange(n)[:, None] * rows_per_prompt + sources % rows_per_prompt
            live, rows_per_prompt = live[searching], K
            logits = backend.step(running[live, :, P + t].ravel(), rows[searching].ravel())

        results = [self._result(finished, b, P) for b in range(B)]
        if on_token is not None:
            for b, result in enumerate(results):
                for token in result.tokens:
                    on_token(b, token)
        return results

    def _result(self, finished: dict, b: int, P: int) -> Generation:
        hypotheses = [
            Generation(tokens=finished["tokens"][b, j, P:P + finished["kept"][b, j]].tolist(),
                       score=float(finished["logprob"][b, j]),
                       finish_reason=FINISH_REASONS[finished["reason"][b, j]],
                       normalized_score=float(finished["score"][b, j]))
            for j in range(self.options.num_return_sequences) if np.isfinite(finished["score"][b, j])
        ]
        if not hypotheses:  # every continuation was banned (no_repeat_ngram_size over a tiny vocabulary)
            return Generation([], float("-inf"), "length", float("-inf"))
        best, *alternatives = hypotheses
        best.alternatives = alternatives
        return best
