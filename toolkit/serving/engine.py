"""Continuous batching over lmkit.decoding's Backend: requests join and leave the batch at every step.

One thread runs one loop. At each step every sequence still generating gets its next token from the
same backend call, whichever request it belongs to; sequences that end (eos, a stop sequence, their
max_tokens, the context) leave the batch before the next call (Backend.step's `rows`), and those
that arrived meanwhile join it: at such a step the running rows take their next token (Backend.step)
and the new prompts are prefilled and appended to the running cache (Backend.merge), so a sequence
already running is never computed again when others join. Rows keep their own positions whatever
the padding (the backends count them from each row's first token), so a sequence's tokens do not
depend on what it is batched with. This is iteration-level scheduling as in Orca (Yu et al., OSDI
2022), on every backend: a PyTorch model directory (TorchBackend) and an export (the onnxruntime
backend of its runtime) alike.

Token choice is the decoding strategies' own code: greedy is the arg max, sampling is
lmkit.decoding.sampling.Sampling.choose with a generator per sequence (row_generators), so a
request gives the tokens `lmkit generate` gives for the same prompt, settings and seed.

Prompt log-probabilities (the OpenAI API's echo with logprobs, what lm-eval's local-completions
scores with) need the logits after every prompt token, while Backend.prefill gives the last ones
only: such a sequence joins with its first token and is fed the rest of its prompt one token per
step, its log-probability read at each, before it starts generating.

numpy only (no torch, no server library): the loop calls the backend, the backend imports what it runs on.
"""
from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..decoding.common import (
    StopTexts,
    left_pad,
    log_softmax,
    partial_stop_length,
    stop_lengths,
    stop_tail,
    top_k_indices,
)
from ..decoding.options import SamplingOptions
from ..decoding.sampling import Sampling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """How one sequence is generated.

    max_new_tokens: most tokens to generate (fewer when the prompt leaves less room in the context).
    temperature: 0 for greedy search, else sampling at this temperature, with top_k (0: off) and
        top_p (1: off) as lmkit.decoding.options.SamplingOptions.
    stop: what ends the generation, left out of it: token sequences, or StopTexts (the request's strings,
        matched on the text, as OpenAI's API matches them).
    logprobs: None for no log-probabilities; k >= 0 for each token's own and those of the k most likely.
    score_prompt: the prompt tokens' log-probabilities too (every one but the first).
    ignore_eos: go on past the end-of-text token (benchmarks: every sequence gets max_new_tokens).
    """

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple[tuple[int, ...], ...] | StopTexts = ()
    logprobs: int | None = None
    score_prompt: bool = False
    ignore_eos: bool = False

    def sampler(self) -> Sampling | None:
        if self.temperature == 0:
            return None
        return Sampling(SamplingOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                        top_k=self.top_k, top_p=self.top_p))


@dataclass
class Sequence:
    """One continuation: its prompt and settings, and what it has produced so far.

    generator: the numpy generator its sampled tokens draw from (lmkit.decoding.sampling.row_generators),
        None for greedy search.
    on_event(sequence, kind, detail), called on the engine's thread: ("tokens", (start, end)) when
        tokens[start:end] are final (they cannot be the start of a stop sequence), ("done", None) when
        it has ended (finish_reason says why), ("error", message) when the step it was in failed.
    """

    prompt: list[int]
    settings: Settings
    generator: np.random.Generator | None = None
    on_event: Callable[[Sequence, str, object], None] | None = None
    tokens: list[int] = field(default_factory=list)  # the new tokens, without the eos or stop that ended them
    token_logprobs: list[float] = field(default_factory=list)  # with settings.logprobs: one per new token...
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # ...and its k most likely
    prompt_logprobs: list[float | None] = field(default_factory=list)  # with score_prompt: one per prompt token
    prompt_top_logprobs: list[list[tuple[int, float]] | None] = field(default_factory=list)
    finish_reason: str | None = None  # "eos", "stop" or "length", as lmkit.decoding.common.Generation
    tail: str = ""  # the text a stop that began inside a token left before it (Generation.tail)
    cancelled: bool = False  # set by anyone (a client that went away): the sequence leaves at the next step
    room: int = 0  # new tokens it may have: max_new_tokens, or fewer where the context ends
    fed: list[int] = field(default_factory=list)  # the tokens the backend has read for it
    pending: list[int] = field(default_factory=list)  # prompt tokens still to feed (score_prompt)
    streamed: int = 0

    def _emit(self, kind: str, detail=None) -> None:
        if self.on_event is not None:
            self.on_event(self, kind, detail)


@dataclass
class Counters:
    """What the loop has done since it started: backend calls, and how many rows they computed."""

    calls: int = 0  # backend calls: prefills, merges and steps
    prefills: int = 0  # calls at which sequences joined (a prefill, or a merge beside running rows)
    prefill_positions: int = 0  # rows x width of those calls: the joining prompts, padding included
    rows: int = 0  # rows computed, summed over calls
    tokens: int = 0  # new tokens generated
    largest_batch: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class SourcePrompts:
    """An encoder-decoder's backend (Seq2SeqBackend, or an export's) as the Backend the batcher runs, whose
    prompts are the sources: a prefill encodes them and feeds each row's start token, a step is the
    decoder's step, so each row's tokens are those `lmkit generate` gives for its source.

    Sequences that arrive while a batch decodes join it (`merge`): their sources are encoded and their start
    tokens decoded, and their state joins the running rows' (the backend's merge: sources padded to the
    longest, the shorter targets' self-attention caches left-padded and masked). Where the backend cannot
    (`joins_running` False: a decoder without `join`, an export made before lmkit's exports could, a prefix),
    they wait until the batch has ended, and then start together.
    """

    max_length = None  # the sources are bounded by the encoder (checked when read), the targets by max_tokens

    def __init__(self, backend, start_id: int):
        self.backend = backend
        self.start_id = start_id
        self.joins_running = bool(getattr(backend, "joins_rows", False))

    def _starts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Give the backend the prompts (sources, left-padded) and return the start tokens and their mask."""
        mask = attention_mask.astype(np.bool_)
        self.backend.set_sources([row[keep].tolist() for row, keep in zip(input_ids, mask)])
        starts = np.full((len(input_ids), 1), self.start_id, dtype=np.int64)
        return starts, np.ones_like(starts, dtype=np.bool_)

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.backend.prefill(*self._starts(input_ids, attention_mask))

    def merge(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.backend.merge(*self._starts(input_ids, attention_mask))

    def step(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        return self.backend.step(tokens, rows)


class ContinuousBatcher:
    """The decoding loop every request shares; see the module's docstring.

    backend: a lmkit.decoding Backend (OpenedModel.backend(max_new_tokens) with max_new_tokens at
        least any sequence's, for TorchBackend's cache). eos_id, pad_id: the tokenizer's.
    max_batch: most sequences decoded at once; the others wait for a place.
    """

    def __init__(self, backend, *, eos_id: int | None, pad_id: int | None, max_batch: int = 32):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.backend = backend
        self.max_length = backend.max_length
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.max_batch = max_batch
        # A backend without merge (or whose joins_running says it cannot now) takes new rows only when none is running.
        self.joins_running = getattr(backend, "joins_running", callable(getattr(backend, "merge", None)))
        self.counters = Counters()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- the outside: submit, cancel, start, stop --------------------------------------------------------

    def room(self, prompt_length: int, max_new_tokens: int) -> int:
        """How many new tokens a prompt of this length may have (lmkit.decoding.common.new_token_rooms)."""
        if self.max_length is None:
            return max_new_tokens
        return min(max_new_tokens, self.max_length - prompt_length + 1)

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences to join the batch at the next step. Their prompts must fit the context (room >= 1)."""
        for sequence in sequences:
            if not sequence.prompt:
                raise ValueError("a sequence needs at least one prompt token")
            sequence.room = self.room(len(sequence.prompt), sequence.settings.max_new_tokens)
            if sequence.room < 1:
                raise ValueError(f"a prompt of {len(sequence.prompt)} tokens leaves no room in the context of "
                                 f"{self.max_length}")
        with self._condition:
            if self._stopping:
                raise RuntimeError("the engine has stopped")
            self._waiting.extend(sequences)
            self._condition.notify()

    def start(self) -> ContinuousBatcher:
        self._thread = threading.Thread(target=self._loop, name="lmkit-serve-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the loop; sequences still waiting or running get an error event."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join()

    # -- the loop ----------------------------------------------------------------------------------

    def _admit(self, running: int) -> list[Sequence] | None:
        """The waiting sequences that fit beside `running` others; waits while there is nothing to do.
        None when the engine stops."""
        with self._condition:
            while not running and not self._waiting and not self._stopping:
                self._condition.wait()
            if self._stopping:
                return None
            joining = []
            if running and not self.joins_running:
                return joining
            while self._waiting and running + len(joining) < self.max_batch:
                sequence = self._waiting.popleft()
                if not sequence.cancelled:
                    joining.append(sequence)
            return joining

    def _loop(self) -> None:
        batch: list[Sequence] = []  # the backend's rows, in its order
        chosen = np.zeros(0, dtype=np.int64)  # the token each row took last, to feed next
        alive = np.zeros(0, dtype=np.bool_)  # which rows go on
        while True:
            alive &= np.array([not sequence.cancelled for sequence in batch], dtype=np.bool_)
            joining = self._admit(int(alive.sum()))
            if joining is None:
                break
            alive &= np.array([not sequence.cancelled for sequence in batch], dtype=np.bool_)
            kept = [sequence for sequence, going in zip(batch, alive) if going]
            if not kept and not joining:
                batch, chosen, alive = [], chosen[:0], alive[:0]
                continue
            try:
                for sequence, token in zip(kept, chosen[alive]):
                    sequence.fed.append(int(token))
                if joining:
                    for sequence in joining:
                        sequence.fed = list(sequence.prompt[:1] if sequence.settings.score_prompt else sequence.prompt)
                        sequence.pending = list(sequence.prompt[len(sequence.fed):])
                        if sequence.settings.score_prompt:
                            sequence.prompt_logprobs.append(None)  # nothing comes before the first token
                            sequence.prompt_top_logprobs.append(None)
                    input_ids, attention_mask = left_pad([sequence.fed for sequence in joining], self.pad_id)
                    if kept:  # the running rows take their next token, then the new rows join their cache
                        rows = None if alive.all() else np.flatnonzero(alive)
                        logits = np.concatenate([self.backend.step(chosen[alive], rows),
                                                 self.backend.merge(input_ids, attention_mask)])
                        self.counters.calls += 1
                    else:
                        logits = self.backend.prefill(input_ids, attention_mask)
                    batch = kept + joining
                    self.counters.prefills += 1
                    self.counters.prefill_positions += input_ids.size
                else:
                    rows = None if alive.all() else np.flatnonzero(alive)
                    logits = self.backend.step(chosen[alive], rows)
                    batch = kept
                self.counters.calls += 1
                self.counters.rows += len(batch)
                self.counters.largest_batch = max(self.counters.largest_batch, len(batch))
                chosen, alive = self._choose(batch, logits)
            except Exception as error:  # a failing step fails the requests in it; the server goes on
                log.exception("a decoding step failed")
                for sequence in kept + joining:
                    sequence._emit("error", f"decoding failed: {error}")
                batch, chosen, alive = [], chosen[:0], alive[:0]
        with self._condition:
            left = [sequence for sequence, going in zip(batch, alive) if going] + list(self._waiting)
            self._waiting.clear()
        for sequence in left:
            sequence._emit("error", "the server is shutting down")

    def _choose(self, batch: list[Sequence], logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's next token (forced while it has prompt tokens pending), and whether it goes on."""
        log_probs = log_softmax(logits)  # the model's own, as lmkit.decoding scores
        tokens = logits.argmax(axis=1).astype(np.int64)  # greedy rows keep these
        forced = np.array([bool(sequence.pending) for sequence in batch], dtype=np.bool_)
        samplers: dict[Settings, list[int]] = {}
        for i, sequence in enumerate(batch):
            if forced[i]:
                tokens[i] = sequence.pending.pop(0)
            elif sequence.settings.temperature != 0:
                key = Settings(1, sequence.settings.temperature, sequence.settings.top_k, sequence.settings.top_p)
                samplers.setdefault(key, []).append(i)
        for settings, rows in samplers.items():  # rows sampled alike are drawn in one call
            uniform = np.array([batch[i].generator.random() for i in rows])
            tokens[rows] = settings.sampler().choose(logits[rows], uniform)
        wanted = max((sequence.settings.logprobs or 0 for sequence in batch), default=0)
        top = top_k_indices(log_probs, wanted) if wanted else None
        chosen_log_probs = np.take_along_axis(log_probs, tokens[:, None], axis=1)[:, 0]

        alive = np.ones(len(batch), dtype=np.bool_)
        for i, sequence in enumerate(batch):
            settings = sequence.settings
            alternatives = ([(int(t), float(log_probs[i, t])) for t in top[i, :settings.logprobs]]
                            if top is not None and settings.logprobs else [])
            if forced[i]:
                sequence.prompt_logprobs.append(float(chosen_log_probs[i]))
                sequence.prompt_top_logprobs.append(alternatives)
                continue
            token = int(tokens[i])
            sequence.tokens.append(token)
            if settings.logprobs is not None:
                sequence.token_logprobs.append(float(chosen_log_probs[i]))
                sequence.top_logprobs.append(alternatives)
            self.counters.tokens += 1
            if self.eos_id is not None and token == self.eos_id and not settings.ignore_eos:
                reason, cut = "eos", 1
            else:
                cut = int(stop_lengths(np.array([sequence.tokens], dtype=np.int64), settings.stop)[0])
                reason = "stop" if cut else "length" if len(sequence.tokens) == sequence.room else None
            if reason is not None:
                if cut:
                    sequence.tail = stop_tail(sequence.tokens, cut, settings.stop) if reason == "stop" else ""
                    del sequence.tokens[len(sequence.tokens) - cut:]
                    del sequence.token_logprobs[len(sequence.tokens):]
                    del sequence.top_logprobs[len(sequence.tokens):]
                sequence.finish_reason = reason
                alive[i] = False
                ready = len(sequence.tokens)
            else:
                ready = len(sequence.tokens) - partial_stop_length(np.array(sequence.tokens), settings.stop)
            if ready > sequence.streamed:
                start, sequence.streamed = sequence.streamed, ready
                sequence._emit("tokens", (start, ready))
            if reason is not None:
                sequence._emit("done")
        return tokens, alive
