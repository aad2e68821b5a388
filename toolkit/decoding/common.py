"""What the strategies share: results, fitting prompts into the context, padding, n-gram and stop checks.

All numpy on the host, batched over rows: the per-row Python here runs only to build results and to
stream tokens, never to pick them.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import LmkitError
from .backend import Backend

log = logging.getLogger(__name__)

FINISH_REASONS = ("eos", "stop", "length")


class PromptError(LmkitError):
    """A prompt the model cannot take: empty, or longer than its context."""


@dataclass
class Generation:
    """What one prompt produced."""

    tokens: list[int]  # the new tokens, without the eos or stop sequence that ended them
    score: float  # sum of the new tokens' log-probabilities (the ending eos or stop tokens included)
    finish_reason: str  # "eos", "stop" (a stop sequence) or "length" (max_new_tokens or the context)
    # A stop string that began inside a token: that token's text before it (decode(tokens) + tail is the
    # output's text, as OpenAI's API cuts it at the stop string; StopTexts.text_before).
    tail: str = ""
    # Beam search only: score / generated_length ** length_penalty, what hypotheses are ranked by...
    normalized_score: float | None = None
    # ...and the next best hypotheses, best first, when more than one is asked for.
    alternatives: list[Generation] = field(default_factory=list)
    # A model that rewrites its prompt rather than continuing it (lmkit.contract.Generator: GLM fills its
    # blanks): the whole output's ids, and each part generated (tokens above: all parts, one after another).
    output: list[int] | None = None
    spans: list[Generation] = field(default_factory=list)

    def to_dict(self, decode: Callable[[list[int]], str] | None = None) -> dict:
        """Plain JSON values; with `decode` (a tokenizer's), the text of the tokens (or of the output) too."""
        out = {"tokens": self.tokens, "score": self.score, "finish_reason": self.finish_reason}
        if decode is not None:
            out = {"text": decode(self.tokens) + self.tail if self.output is None else decode(self.output), **out}
        if self.spans:
            out["spans"] = [span.to_dict(decode) for span in self.spans]
        if self.normalized_score is not None:
            out["normalized_score"] = self.normalized_score
        if self.alternatives:
            out["alternatives"] = [a.to_dict(decode) for a in self.alternatives]
        return out


# -- prompts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Positions:
    """Positions the model supplies for its prompts, in place of 0, 1, 2, ... counted from the mask.

    prompts: one int64 array per prompt, (n,) or (K, n): K position components for each of its n
        tokens (GLM: pos1, the blank's place in the text, and pos2, the place inside the span).
    step: (K,) what each component adds for every generated token (GLM inside a span: (0, 1)).
    A backend given them feeds the prompts at these positions and every new token at the previous
    token's position plus `step`; the model reads whatever else it needs from them (GLM its mask).
    """

    prompts: Sequence[np.ndarray]
    step: tuple[int, ...] = (1,)

    def left_padded(self, width: int) -> np.ndarray:
        """int64 (B, width) or (B, K, width): each prompt's positions in its last columns, zeros before."""
        arrays = [np.asarray(p, dtype=np.int64) for p in self.prompts]
        leading = arrays[0].shape[:-1]
        if any(a.shape[:-1] != leading for a in arrays) or len(self.step) != (leading[0] if leading else 1):
            raise ValueError(f"every prompt's positions must have the same {len(self.step)} component(s) as step")
        out = np.zeros((len(arrays), *leading, width), dtype=np.int64)
        for row, array in enumerate(arrays):
            out[row, ..., width - array.shape[-1]:] = array
        return out


def prefill(backend: Backend, input_ids: np.ndarray, attention_mask: np.ndarray,
            positions: Positions | None) -> np.ndarray:
    """backend.prefill, with the model's own positions when it supplies them (left-padded like the prompts)."""
    if positions is None:
        return backend.prefill(input_ids, attention_mask)
    if len(positions.prompts) != len(input_ids):
        raise ValueError(f"{len(positions.prompts)} prompts' positions for {len(input_ids)} prompts; give one each")
    return backend.prefill(input_ids, attention_mask, positions.left_padded(input_ids.shape[1]),
                           np.asarray(positions.step, dtype=np.int64))


def fit_prompts(prompts: Sequence[Sequence[int]], max_length: int | None, max_new_tokens: int, *,
                truncate: bool = False) -> list[list[int]]:
    """The prompts as lists of ints, checked against the model's context.

    A prompt of n tokens followed by N new ones takes n + N - 1 positions: the last new token is
    never fed back. A prompt longer than the context is an error, unless `truncate`, which keeps
    the last max_length - N + 1 tokens of every prompt so all N new tokens fit. Without it, a
    prompt that leaves room for fewer than N tokens generates fewer (see new_token_rooms), with a
    warning; the prompts batched with it do not change its room, nor it theirs.
    """
    prompts = [[int(token) for token in prompt] for prompt in prompts]
    if not prompts:
        raise PromptError("there are no prompts to generate from; give at least one")
    label = (lambda i: "the prompt") if len(prompts) == 1 else (lambda i: f"prompt {i + 1}")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise PromptError(f"{label(i)} has no tokens; give at least one (e.g. the tokenizer's bos token)")
    if max_length is None:
        return prompts
    keep = max_length - max_new_tokens + 1  # the longest prompt that leaves room for every new token
    for i, prompt in enumerate(prompts):
        if truncate and len(prompt) > keep:
            if keep < 1:
                raise PromptError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                                  f"model's context of {max_length} tokens; ask for at most {max_length}")
            log.warning("kept the last %d of the %d tokens of %s, to leave room for %d new tokens in the "
                        "model's context of %d", keep, len(prompt), label(i), max_new_tokens, max_length)
            prompts[i] = prompt[-keep:]
        elif len(prompt) > max_length:
            raise PromptError(f"{label(i)} has {len(prompt)} tokens but the model reads at most {max_length}; "
                              f"shorten it or pass --truncate to keep its last {max(keep, 1)}")
        elif len(prompt) > keep:
            log.warning("only %d of the %d new tokens fit the model's context of %d after %s of %d tokens; "
                        "its generation stops there (pass --truncate to shorten the prompt instead)",
                        max_length - len(prompt) + 1, max_new_tokens, max_length, label(i), len(prompt))
    return prompts


def new_token_rooms(prompts: list[list[int]], max_length: int | None, max_new_tokens: int) -> np.ndarray:
    """int64 (B,): how many tokens may follow each prompt, min(max_new_tokens, context - its length + 1).

    Each prompt's own length, never the batch's longest: a prompt generates the same batched as alone
    (issue #19). The padding that left-aligning adds before a short prompt is no part of its room;
    the backends drop padding columns once the padded width would pass the context (Backend.step).
    """
    lengths = np.array([len(prompt) for prompt in prompts], dtype=np.int64)
    if max_length is None:
        return np.full(len(prompts), max_new_tokens, dtype=np.int64)
    return np.minimum(max_new_tokens, max_length - lengths + 1)


def left_pad(prompts: list[list[int]], pad_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """input_ids int64 (B, T) and attention_mask bool (B, T), padded on the left.

    Left, so that every row's last token sits in the last column and new tokens go in one column.
    """
    width = max(map(len, prompts))
    # Padding is masked out, so any id in the vocabulary will do when the tokenizer has no pad token.
    input_ids = np.full((len(prompts), width), 0 if pad_id is None else pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(prompts), width), dtype=np.bool_)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = prompt
        attention_mask[row, width - len(prompt):] = True
    return input_ids, attention_mask


def drop_padding_columns(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left-padded batch without its leading columns that are padding in every row.

    Once the rows with the longest prompts have left the batch, the ones left may have padding in
    common; a backend at its max_length drops it (see Backend.step) and runs the rest afresh.
    """
    first = int(attention_mask.any(axis=0).argmax())
    return input_ids[:, first:], attention_mask[:, first:]


# -- scores ----------------------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in the logits' dtype (float32, as transformers scores)."""
    top, log_sum = log_softmax_terms(logits)
    return (logits - top) - log_sum


def log_softmax_terms(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max, log of the sum of exp(logits - max)), each (..., 1): log_softmax is (logits - max) - log_sum, the
    same float32 values when computed for a few chosen entries alone (beam search's candidates)."""
    top = logits.max(axis=-1, keepdims=True)
    exp = np.subtract(logits, top)
    np.exp(exp, out=exp)  # in place: one array where two were, 40% less time at 8 x 32,128
    return top, np.log(exp.sum(axis=-1, keepdims=True))


def largest_indices(scores: np.ndarray, k: int, group: int = 64) -> np.ndarray:
    """Indices of the k largest scores of each row, in no order: (R, N) -> (R, min(k, N)).

    Over a vocabulary, one argpartition of every row costs more than a decoding step of a small model
    (32 rows x 32,128: 2.9 ms). So the columns are dealt into N // group strided groups (column j
    joins group j mod N // group); each of the k largest lies in a group whose maximum is at least the
    k-th largest, and there are at most k such groups, so the k groups with the largest maxima hold
    them all (with ties, k of the largest): one vectorised max, then argpartitions of N // group and
    of k * group entries (0.8 ms).
    """
    R, N = scores.shape
    if k >= N:
        return np.broadcast_to(np.arange(N), scores.shape)
    n = N // group
    if n < 16 * k:
        return np.argpartition(scores, N - k, axis=1)[:, N - k:]
    maxima = scores[:, :n * group].reshape(R, group, n).max(axis=1)  # (R, n), group j's at column j
    groups = np.argpartition(maxima, n - k, axis=1)[:, n - k:]  # (R, k)
    candidates = (groups[:, :, None] + n * np.arange(group)).reshape(R, k * group)
    if n * group < N:  # the last N mod group columns belong to no group: candidates too
        candidates = np.concatenate([candidates, np.broadcast_to(np.arange(n * group, N), (R, N - n * group))], axis=1)
    values = np.take_along_axis(scores, candidates, axis=1)
    chosen = np.argpartition(values, values.shape[1] - k, axis=1)[:, values.shape[1] - k:]
    return np.take_along_axis(candidates, chosen, axis=1)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores of each row, largest first: (R, N) -> (R, min(k, N))."""
    candidates = largest_indices(scores, k)
    order = np.argsort(-np.take_along_axis(scores, candidates, axis=1), axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)


def ban_repeated_ngrams(scores: np.ndarray, history: np.ndarray, n: int) -> None:
    """Set to -inf, in place, the score of every token that would complete an n-gram seen before.

    scores: (R, V); history: int64 (R, L), each row's tokens so far, -1 at padding. The last n - 1
    tokens of a row are compared with every earlier window at once (as transformers'
    NoRepeatNGramLogitsProcessor bans, but without a Python loop over rows).
    """
    if history.shape[1] < n:
        return
    windows = np.lib.stride_tricks.sliding_window_view(history, n, axis=1)  # (R, L - n + 1, n)
    recent = history[:, history.shape[1] - n + 1:]  # (R, n - 1)
    seen = (windows[:, :, :-1] == recent[:, None, :]).all(axis=2) & (windows >= 0).all(axis=2)
    rows, starts = np.nonzero(seen)
    scores[rows, windows[rows, starts, -1]] = -np.inf


@dataclass(frozen=True)
class StopTexts:
    """Stop strings matched on the text of each row's new tokens, as OpenAI's API and vLLM match them.

    A model writes a text in many ways: GPT-2 writes "\n\n" as one token or as two "\n", "what" inside
    " what", so the stop's own tokens (`sequences`, encode(text)) alone miss most of its appearances.
    Here a row stops at the first of the texts to appear in the decoded text of its new tokens, and keeps
    the tokens before the one in which that text begins; where the stop begins inside a token, that
    token's text before it is the generation's `tail` (text_before), so the output's text ends exactly
    where the stop begins, as OpenAI's API cuts it. Token sequences match too (a special
    token whose text decoding leaves out). Pass one as `stop` wherever token sequences are taken: the
    strategies and lmkit serve's engine read it through stop_lengths and partial_stop_length.

    texts: the stop strings; decode: the output tokenizer's ids -> text (special tokens shown);
    sequences: token sequences that stop as well (encode(text) of each, in lmkit generate and serve).
    """

    texts: tuple[str, ...]
    decode: Callable[[list[int]], str] = field(compare=False, repr=False)
    sequences: tuple[tuple[int, ...], ...] = ()

    def lengths(self, generated: np.ndarray) -> np.ndarray:
        """(R, t) new tokens -> (R,): how many of the last tokens a stop takes (0: none appeared).

        Called after every new token, so a stop can only end in the last one: the text of the last
        `window` tokens is enough, however long the row.
        """
        lengths = stop_lengths(generated, [list(s) for s in self.sequences])
        for row in np.flatnonzero(lengths == 0):
            tokens = generated[row, -self.window:].tolist()
            _, start = self._first_stop(tokens)
            if start is not None:
                lengths[row] = len(tokens) - self._tokens_within(tokens, start)
        return lengths

    def text_before(self, generated: Sequence[int], cut: int) -> str:
        """The text the last `cut` of a row's new tokens write before the stop that `lengths` found in them:
        the part of a token that a stop beginning inside it leaves (\"\" where it begins at a token)."""
        tokens = list(map(int, generated[-self.window:]))
        text, start = self._first_stop(tokens)
        kept = self.decode(tokens[:len(tokens) - cut])
        if start is None or not text.startswith(kept):
            return ""
        return text[len(kept):start]

    @property
    def window(self) -> int:
        """Tokens enough to hold any stop text: a character may take 4 byte-level tokens, and a few more for
        tokens that write nothing."""
        return 4 * max(map(len, self.texts), default=0) + 4

    def partial(self, tokens: np.ndarray) -> int:
        """How many of the last tokens could begin a stop (their text ends with the start of one)."""
        tokens = list(map(int, tokens[-self.window:]))
        text = self.decode(tokens)
        held = max((n for stop in self.texts for n in range(min(len(stop) - 1, len(text)), 0, -1)
                    if text.endswith(stop[:n])), default=0)
        by_text = len(tokens) - self._tokens_within(tokens, len(text) - held) if held else 0
        return max(by_text, partial_stop_length(np.array(tokens, dtype=np.int64), [list(s) for s in self.sequences]))

    def _first_stop(self, tokens: list[int]) -> tuple[str, int | None]:
        """(the tokens' text, where the first stop text begins in it or None). The text leaves out the U+FFFD that
        the first bytes of a character still coming decode to (a stop holding U+FFFD matched half a character
        of a random model's output: a trial's)."""
        text = self.decode(tokens).rstrip("\ufffd")
        starts = [i for i in (text.find(stop) for stop in self.texts) if i >= 0]
        return text, min(starts) if starts else None

    def _tokens_within(self, tokens: list[int], chars: int) -> int:
        """The most leading tokens whose text is no longer than `chars` characters."""
        k = len(tokens)
        while k and len(self.decode(tokens[:k])) > chars:
            k -= 1
        return k


def stop_texts(texts: Sequence[str], tokenizer) -> StopTexts | list:
    """StopTexts for the output tokenizer `tokenizer` (an lmkit Tokenizer), or [] for no texts."""
    texts = tuple(text for text in texts if text)
    if not texts:
        return []
    return StopTexts(texts, tokenizer.decode, tuple(tuple(tokenizer.encode(text)) for text in texts))


def stop_tail(generated: Sequence[int], cut: int, stop: list[list[int]] | StopTexts | None) -> str:
    """Generation.tail of a row whose last `cut` new tokens a stop took ("" for token sequences)."""
    return stop.text_before(generated, cut) if isinstance(stop, StopTexts) and cut else ""


def stop_lengths(generated: np.ndarray, stop: list[list[int]] | StopTexts | None) -> np.ndarray:
    """For each row of new tokens (R, t), the length of the stop sequence it ends with, or 0."""
    if isinstance(stop, StopTexts):
        return stop.lengths(generated)
    lengths = np.zeros(generated.shape[0], dtype=np.int64)
    for sequence in stop or ():
        m = len(sequence)
        if m <= generated.shape[1]:
            ends = (generated[:, generated.shape[1] - m:] == sequence).all(axis=1)
            lengths[ends & (lengths == 0)] = m
    return lengths


def partial_stop_length(tokens: np.ndarray, stop: list[list[int]] | StopTexts | None) -> int:
    """How many of the last tokens could be the start of a stop sequence (so must not be streamed yet)."""
    if isinstance(stop, StopTexts):
        return stop.partial(tokens)
    longest = 0
    for sequence in stop or ():
        for k in range(min(len(sequence) - 1, len(tokens)), longest, -1):
            if list(tokens[len(tokens) - k:]) == list(sequence[:k]):
                longest = k
                break
    return longest


def token_sequences(stop) -> list[list[int]] | StopTexts:
    """`stop` as the strategies read it: StopTexts as it is, token sequences as lists of ints (empty ones left out)."""
    if isinstance(stop, StopTexts):
        return stop
    return [list(map(int, sequence)) for sequence in stop or () if len(sequence)]


# -- the loop greedy search and sampling share -------------------------------------------------------


def generate_token_by_token(backend: Backend, prompts: Sequence[Sequence[int]],
                            choose: Callable[[np.ndarray, np.ndarray], np.ndarray], *, max_new_tokens: int,
                            no_repeat_ngram_size: int, eos_id: int | None, pad_id: int | None,
                            stop: list[list[int]] | None, on_token: Callable[[int, int], None] | None,
                            positions: Positions | None = None) -> list[Generation]:
    """Extend every prompt with the tokens `choose` picks, one step for the whole batch at a time.

    choose(logits, prompts): float32 logits (R, V) and int64 (R,), the index of the prompt each row
    continues -> int64 tokens (R,); it must leave the logits as they are (the scores read them after).
    A row that ends (eos, a stop sequence, its own length limit, see new_token_rooms) leaves the batch,
    so the backend only ever computes rows still generating.
    on_token(prompt_index, token_id) sees each token as soon as it cannot be part of a stop sequence.
    positions: the model's own positions of the prompts (Positions), else the backend counts them.
    """
    stop = token_sequences(stop)
    prompts = fit_prompts(prompts, backend.max_length, max_new_tokens)
    input_ids, attention_mask = left_pad(prompts, pad_id)
    n, width = input_ids.shape
    limits = new_token_rooms(prompts, backend.max_length, max_new_tokens)  # (n,), new tokens per prompt
    steps = int(limits.max())
    history = np.full((n, width + steps), -1, dtype=np.int64)  # the prompt (-1 at padding), then new tokens
    history[:, :width] = np.where(attention_mask, input_ids, -1)
    scores = np.zeros(n, dtype=np.float32)
    results: list[Generation | None] = [None] * n
    streamed = np.zeros(n, dtype=np.int64)  # new tokens already handed to on_token

    active = np.arange(n)  # the prompts still generating, in the backend's row order
    logits = prefill(backend, input_ids, attention_mask, positions)
    for t in range(steps):
        top, log_sum = log_softmax_terms(logits)  # the model's own, before any ban, for the score
        model_logits = logits.copy() if no_repeat_ngram_size else logits  # the ban writes -inf into logits
        if no_repeat_ngram_size:
            ban_repeated_ngrams(logits, history[active, :width + t], no_repeat_ngram_size)
        tokens = choose(logits, active)  # (R,); the strategies' choose() leaves the logits as they are
        # log_softmax at the chosen tokens alone, the same float32 values as the whole array's
        scores[active] += ((np.take_along_axis(model_logits, tokens[:, None], axis=1) - top) - log_sum)[:, 0]
        history[active, width + t] = tokens
        generated = history[active, width:width + t + 1]  # (R, t + 1)
        ends_with_eos = tokens == eos_id if eos_id is not None else np.zeros(len(active), dtype=np.bool_)
        stop_length = stop_lengths(generated, stop)
        done = ends_with_eos | (stop_length > 0) | (t + 1 == limits[active])
        for i in np.flatnonzero(done):
            kept = t + 1 - (1 if ends_with_eos[i] else stop_length[i])
            reason = "eos" if ends_with_eos[i] else "stop" if stop_length[i] else "length"
            results[active[i]] = Generation(generated[i, :kept].tolist(), float(scores[active[i]]), reason,
                                            stop_tail(generated[i], int(stop_length[i]), stop))
        if on_token is not None:
            for i, prompt in enumerate(active):
                ready = len(results[prompt].tokens) if done[i] else t + 1 - partial_stop_length(generated[i], stop)
                for token in generated[i, streamed[prompt]:ready]:
                    on_token(int(prompt), int(token))
                streamed[prompt] = max(streamed[prompt], ready)
        if done.all():
            break
        going_on = ~done
        active = active[going_on]
        logits = backend.step(tokens[going_on], np.flatnonzero(going_on) if done.any() else None)
    return results
