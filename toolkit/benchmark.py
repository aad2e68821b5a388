"""`lmkit bench`: prefill and decoding speed of models and exports on this machine, side by side.

A decoder (or an export of one) is timed as a generation is: one prefill of B prompts of P tokens
(ms, and prompt tokens per second), then N decoding steps of one token per row through the same
lmkit.decoding Backend the strategies use (ms per step, and new tokens per second). An encoder is
timed as one forward pass over B texts of P tokens; an encoder-decoder (T5, the LSTM translation
models) as a generation from B sources of P tokens, whose prefill encodes them and feeds the start
token. The inputs are random token ids, the same for every model of the same vocabulary (seeded), so
nothing depends on a tokenizer's speed.

The models take turns (one run each per round, in a seeded shuffled order), so a slow spell of a
shared machine hits them all alike; each figure is the median over the rounds. Nothing here
asserts a time: the figures are for the person at the machine.
"""
from __future__ import annotations

import os
import random
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from .decoding.common import prefill as prefill_at_positions
from .errors import LmkitError


@dataclass
class Speed:
    """One model's figures. prefill_ms: the prompt pass (an encoder's whole forward); decode_ms_per_step:
    one new token for every row (None for an encoder); *_tokens_per_s count the batch's tokens."""

    model: str
    runtime: str  # torch (cpu) / onnxruntime (CPUExecutionProvider), and the export's precision
    kind: str
    prefill_ms: float
    prefill_tokens_per_s: float
    decode_ms_per_step: float | None
    decode_tokens_per_s: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def describe_runtime(opened) -> str:
    manifest = getattr(opened, "manifest", None)
    if manifest is None:
        return f"torch ({opened.runtime.device})"
    opened.runtime  # noqa: B018 -- the providers are known once a session is open
    providers = opened.providers or ["?"]
    return f"onnxruntime {manifest.get('dtype', '')} ({providers[0]})".replace("  ", " ")


DEFAULT_PROMPT_TOKENS = 128
FAMILY_TOKENS = 8  # room a default prompt leaves for the tokens a family adds to it (GLM: [gMASK], [S])


def default_prompt_tokens(models: list, new_tokens: int) -> int:
    """DEFAULT_PROMPT_TOKENS, or fewer where a model's context leaves less room (a decoder's prompt, new tokens
    and FAMILY_TOKENS; an encoder's or an encoder-decoder's source): the most every model can take. LmkitError
    when a decoder's context leaves no room for a prompt after --new-tokens."""
    room = [DEFAULT_PROMPT_TOKENS]
    for opened in models:
        limit = opened.max_positions
        if limit is None:
            continue
        if opened.kind == "decoder" and limit - new_tokens < 1:
            raise LmkitError(f"{opened.directory} reads at most {limit} positions, and --new-tokens {new_tokens} "
                             f"leaves none for a prompt; ask for at most {limit - 1}")
        room.append(limit - new_tokens - FAMILY_TOKENS if opened.kind == "decoder" else limit)
    return max(1, min(room))


def busy_machine(threshold: float = 0.75) -> str | None:
    """A line saying that the machine is busy, or None: the load average over the last minute against the cores.

    Other processes take the cores and the memory bandwidth from every run, so each time grows, and unevenly
    (the models take turns, which keeps their ratios closer than their times). None where the platform has
    no load average (Windows).
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = os.cpu_count() or 1
    if load < threshold * cores:
        return None
    return (f"this machine is busy (load average {load:.1f} over the last minute, {cores} cores): other processes slow "
            "every run, so read the figures as rough; on a quiet machine they are steadier")


def _vocab_size(opened) -> int:
    tokenizer = opened.tokenizer
    if tokenizer is None:
        from .opening import no_tokenizer

        raise no_tokenizer(opened.directory, "draw the benchmark's random prompts from")
    return tokenizer.vocab_size


def _runner(opened, *, prompt_tokens: int, new_tokens: int, batch_size: int, seed: int):
    """A function that runs the model once and returns (prefill seconds, decode seconds or None)."""
    kind = opened.kind
    limit = opened.max_positions  # an encoder-decoder's: of a source
    needed = prompt_tokens + (new_tokens if kind == "decoder" else 0)
    if limit is not None and needed > limit:
        asked = (f"--prompt-tokens {prompt_tokens} + --new-tokens {new_tokens} need {needed}: lower them"
                 if kind == "decoder" else f"--prompt-tokens {prompt_tokens} is more: lower it")
        raise LmkitError(f"{opened.directory} reads at most {limit} positions, and {asked}")
    input_ids = random_prompts(opened, batch_size, prompt_tokens, seed)
    attention_mask = np.ones_like(input_ids, dtype=np.bool_)
    if kind == "encoder":
        def run() -> tuple[float, None]:
            start = time.perf_counter()
            opened.features(input_ids, attention_mask)
            return time.perf_counter() - start, None

        return run
    if kind == "encoder-decoder":
        # The prompts are the sources; the prefill encodes them and feeds each row's start token, each step
        # one token per row, as lmkit translate / generate run it (Seq2SeqGenerator).
        sources = input_ids.tolist()
        starts = np.full((batch_size, 1), opened.decoder_start, dtype=np.int64)

        def prefill(backend) -> np.ndarray:
            backend.set_sources(sources)
            return backend.prefill(starts, np.ones_like(starts, dtype=np.bool_))

        return _generation(opened, prefill, new_tokens)
    generator = opened.generator
    if generator is None:
        return _generation(opened, lambda backend: backend.prefill(input_ids, attention_mask), new_tokens)
    # A family that generates its own way (GLM fills blanks): the prompts as it asks for a target (GLM: the
    # text, then [gMASK]), fed as its generation's first prefill (Part A and [S], at GLM's 2-D positions).
    inputs = getattr(generator, "prefill_inputs", None)
    if inputs is None:
        raise LmkitError(f"{opened.directory} generates its own way and its family's generator does not say how "
                         "its generation starts (prefill_inputs), so lmkit bench cannot time it")
    rows, positions = inputs([generator.source_prompt(row) for row in input_ids.tolist()])
    fed = len(rows[0])
    if limit is not None and fed + new_tokens > limit:
        raise LmkitError(f"{opened.directory} reads at most {limit} positions, and --prompt-tokens {prompt_tokens} is "
                         f"fed as {fed} (the family's own tokens added), which with --new-tokens {new_tokens} need "
                         f"{fed + new_tokens}: lower them")
    ids = np.array(rows, dtype=np.int64)
    mask = np.ones_like(ids, dtype=np.bool_)
    return _generation(opened, lambda backend: prefill_at_positions(backend, ids, mask, positions), new_tokens)


def random_prompts(opened, batch_size: int, length: int, seed: int) -> np.ndarray:
    """int64 (batch_size, length) random token ids, seeded: above the special tokens' usual place at the start
    and below the vocabulary's end. For a family that generates its own way, none of its tokenizer's special
    tokens (GLM's blanks would be read as blanks to fill)."""
    rng = np.random.default_rng(seed)
    vocab = _vocab_size(opened)
    low = min(8, vocab - 1)
    ids = rng.integers(low, vocab, size=(batch_size, length), dtype=np.int64)
    if opened.generator is not None:
        special = np.array(sorted(opened.tokenizer.special_ids()), dtype=np.int64)
        if np.isin(np.arange(low, vocab), special).all():
            raise LmkitError(f"{opened.directory}'s vocabulary above id {low} is all special tokens: nothing to "
                             "make a random prompt of")
        while (drawn := np.isin(ids, special)).any():
            ids[drawn] = rng.integers(low, vocab, size=int(drawn.sum()))
    return ids


def _generation(opened, prefill, new_tokens: int):
    """A run of a fresh backend: prefill(backend) -> logits, then new_tokens greedy steps; (prefill s, decode s)."""
    def run() -> tuple[float, float]:
        backend = opened.backend(new_tokens)
        start = time.perf_counter()
        logits = prefill(backend)
        prefilled = time.perf_counter()
        for _ in range(new_tokens):
            logits = backend.step(logits.argmax(-1).astype(np.int64))
        return prefilled - start, time.perf_counter() - prefilled

    return run


# Between turns: each runtime's idle threads spin on after a run (onnxruntime's pool, torch's OpenMP), taking
# the cores from the model timed next. Measured on gpt-mini, 16 new tokens, 2 threads: PyTorch after an export
# 120 ms with no pause, 104 after 10 ms, 71 after 100 (67-70 alone); the export after PyTorch 47, 36, 33.
PAUSE_S = 0.1


def measure(models: list, *, prompt_tokens: int = 128, new_tokens: int = 32, batch_size: int = 1,
            repeats: int = 5, seed: int = 0, progress=None) -> list[Speed]:
    """The speed of each opened model (lmkit.open_model), timed in turns; see the module docstring.

    Raises LmkitError (one line) for a model it cannot time: a prompt (an encoder-decoder's source) beyond
    the context, a model without a tokenizer, a family generator that does not say how its generation starts.
    """
    runners = [_runner(m, prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch_size=batch_size, seed=seed)
               for m in models]
    for run in runners:  # warm-up: first calls allocate, compile kernels, open sessions
        run()
    times: list[list[tuple[float, float | None]]] = [[] for _ in models]
    order = list(range(len(models)))
    for round_ in range(repeats):
        random.Random(round_).shuffle(order)
        for index in order:
            times[index].append(runners[index]())
            if len(models) > 1:
                time.sleep(PAUSE_S)
        if progress is not None:
            progress(round_ + 1)
    speeds = []
    for opened, runs in zip(models, times):
        prefill = statistics.median(r[0] for r in runs)
        decode = None if runs[0][1] is None else statistics.median(r[1] for r in runs) / new_tokens
        speeds.append(Speed(
            model=opened.directory, runtime=describe_runtime(opened), kind=opened.kind,
            prefill_ms=prefill * 1e3, prefill_tokens_per_s=batch_size * prompt_tokens / prefill,
            decode_ms_per_step=None if decode is None else decode * 1e3,
            decode_tokens_per_s=None if decode is None else batch_size / decode))
    return speeds


def table(speeds: list[Speed]) -> str:
    """The figures as a markdown table, with each model's speed relative to the first one's of its kind (an
    encoder's forward pass and a decoder's step are not the same work)."""
    firsts: dict[str, Speed] = {}
    for speed in speeds:
        firsts.setdefault(speed.kind, speed)
    rows = ["| model | runtime | prefill ms | prefill tok/s | decode ms/step | decode tok/s | speed vs first |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for speed in speeds:
        first = firsts[speed.kind]
        if speed.decode_ms_per_step is not None and first.decode_ms_per_step is not None:
            ratio = first.decode_ms_per_step / speed.decode_ms_per_step  # decoding is what a user waits on
        else:
            ratio = first.prefill_ms / speed.prefill_ms
        decode = ("-", "-") if speed.decode_ms_per_step is None else (
            f"{speed.decode_ms_per_step:.2f}", f"{speed.decode_tokens_per_s:,.0f}")
        rows.append(f"| {speed.model} | {speed.runtime} | {speed.prefill_ms:.2f} | "
                    f"{speed.prefill_tokens_per_s:,.0f} | {decode[0]} | {decode[1]} | {ratio:.2f}x |")
    return "\n".join(rows)
