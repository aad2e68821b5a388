"""Perplexity of a token stream with a sliding window, so long texts are scored with full context."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Score:
    nll: float  # nats, summed over the scored tokens
    tokens: int  # tokens scored (every token of the stream but the first)
    bytes: int | None = None  # UTF-8 bytes of the text the tokens came from

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def bits_per_token(self) -> float:
        return self.nll / self.tokens / math.log(2)

    @property
    def bits_per_byte(self) -> float | None:
        return self.nll / self.bytes / math.log(2) if self.bytes else None

    def as_dict(self) -> dict:
        return {"perplexity": self.perplexity, "bits_per_token": self.bits_per_token,
                "bits_per_byte": self.bits_per_byte, "nll": self.nll, "tokens": self.tokens, "bytes": self.bytes}


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window; every token after the first is scored once.

    A window reads `context` tokens but scores only those the previous window did not, so each
    scored token sees at least `context - stride` tokens of left context (all of them near the start).
    """
    if not 0 < stride <= context or context < 2:
        raise ValueError(f"stride must be between 1 and the context ({context}), got {stride}")
    spans, scored_until = [], 1
    begin = 0
    while scored_until < n_tokens:
        end = min(begin + context, n_tokens)
        spans.append((begin, end, scored_until))
        scored_until = end
        # The next window starts at least one token before `end`, so its first scored token has
        # context, and no later than needed for the last window to be full.
        begin = min(begin + stride, end - 1, max(n_tokens - context, 0))
    return spans


@torch.inference_mode()
def score_tokens(decoder, tokens: np.ndarray, context: int, stride: int, batch_size: int = 8,
                 device: str = "cpu", progress: bool = False) -> Score:
    """Total NLL of `tokens[1:]` given everything before each, within `context` tokens."""
    from tqdm import tqdm

    if len(tokens) < 2:
        raise ValueError("need at least two tokens to score")
    spans = windows(len(tokens), context, stride)
    total = 0.0
    # disable=None: the bar is drawn only when stderr is a terminal, never into a log.
    bar = tqdm(total=len(tokens) - 1, unit="tok", disable=None if progress else True, desc="eval",
               dynamic_ncols=True, file=sys.stderr)
    # Windows of one length are batched together; only the last one is usually shorter.
    by_length: dict[int, list[tuple[int, int, int]]] = {}
    for span in spans:
        by_length.setdefault(span[1] - span[0], []).append(span)
    for length, group in by_length.items():
        for i in range(0, len(group), batch_size):
            batch = group[i:i + batch_size]
            ids = torch.from_numpy(np.stack([tokens[b:e] for b, e, _ in batch]).astype(np.int64)).to(device)
            log_probs = F.log_softmax(decoder(ids[:, :-1]).float(), dim=-1)  # (N, L-1, V)
            picked = log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (N, L-1): log p(token t | < t)
            for row, (begin, _, first) in enumerate(batch):
                total -= picked[row, first - begin - 1:].sum().item()
                bar.update(length - (first - begin))
    bar.close()
    return Score(nll=total, tokens=len(tokens) - 1)


def score_against_source(decoder, tokenizer, source, documents_path: str, context: int) -> tuple[Score, list[float]]:
    """The model's Score on a .jsonl file written by lmkit.synthetic, and each document's true NLL.

    A leading end-of-text makes the first document's first token predicted like every other one,
    so the model scores exactly the tokens of every document and of its end, as the source does.
    """
    import json

    from .data import load_tokens

    stream = load_tokens(documents_path, tokenizer, what="held-out documents")
    tokens = np.concatenate([[tokenizer.eos_id], np.asarray(stream.tokens, dtype=np.int64)])
    score = score_tokens(decoder, tokens, context=context, stride=context // 2)
    index = {word: i for i, word in enumerate(source.words)}
    with open(documents_path, encoding="utf-8") as handle:
        documents = [[index[w] for w in json.loads(line)["text"].split()] for line in handle]
    return score, [source.nll(d) for d in documents]


@torch.inference_mode()
def score_with_objectives(model, tokens: np.ndarray, context: int, batch_size: int = 8,
                          device: str = "cpu", inputs=None) -> dict[str, Score]:
    """Scores of a model without a decoder, by the objectives that score text (ObjectiveModule.score_text).

    The stream is cut into windows of `context` tokens that do not overlap: a bidirectional model's
    window reads its right context too, so sliding windows would let a token be seen before it is
    scored. Returns {name: Score} per name the objectives give ("forward", "backward" for ELMo).
    inputs: (window starts (B,), width) -> the stack's per-token inputs of those windows by name, numpy
    (lmkit.token_inputs.window_inputs), or None for a stack that reads ids alone.
    """
    n = len(tokens) // context * context
    if n == 0:
        raise ValueError(f"need at least one window of {context} tokens to score, got {len(tokens)}")
    windows_ = torch.from_numpy(np.asarray(tokens[:n], dtype=np.int64).reshape(-1, context)).to(device)
    totals: dict[str, list[float]] = {}
    for start in range(0, len(windows_), batch_size):
        starts = np.arange(start, min(start + batch_size, len(windows_)), dtype=np.int64) * context
        extra = {name: torch.from_numpy(value).to(device)
                 for name, value in (inputs(starts, context) if inputs is not None else {}).items()}
        for objective in model.objectives.values():
            scored = objective.score_text(model, windows_[start:start + batch_size], **extra)
            for name, (nll, count) in (scored or {}).items():
                total = totals.setdefault(name, [0.0, 0])
                total[0] += nll
                total[1] += count
    return {name: Score(nll=nll, tokens=count) for name, (nll, count) in totals.items()}
