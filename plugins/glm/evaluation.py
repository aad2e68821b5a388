"""How well GLM writes text left to right: the cross-entropy of [gMASK] spans (Du et al. 2022 §2.3).

Left-to-right generation with GLM is a document-level blank: Part A is the context and [gMASK], Part B
is [S] followed by the text, and the targets are the text and [E], which ends it. Scoring a whole
document so (an empty context) gives the same number of predicted tokens as a left-to-right model
that reads `eos doc eos doc ...` (each document's tokens and the end after it), so the perplexities
compare; the known-entropy test scores the second half of each held-out document given the first.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lmkit.errors import LmkitError


def span_inputs(context: list[int], text: list[int], ids: dict[str, int], end: bool = True):
    """(input ids, positions (2, L), targets) of `text` written as a [gMASK] span after `context`;
    end: whether [E] is a target after the text (the text ends there)."""
    a = len(context) + 1  # Part A: the context and [gMASK]
    input_ids = [*context, ids["[gMASK]"], ids["[S]"], *text]
    pos1 = list(range(a)) + [a - 1] * (len(text) + 1)
    pos2 = [0] * a + list(range(1, len(text) + 2))
    targets = [-100] * a + list(text) + ([ids["[E]"]] if end else [])
    if not end:
        input_ids, pos1, pos2 = input_ids[:-1], pos1[:-1], pos2[:-1]
    return input_ids, np.array([pos1, pos2], dtype=np.int64), targets


@torch.inference_mode()
def score_spans(decoder, items: list[tuple[list[int], list[int], bool]], ids: dict[str, int], *, batch_size: int = 8,
                device: str = "cpu") -> tuple[float, int]:
    """(total NLL in nats, tokens predicted) of each (context, text, ends) written as a [gMASK] span."""
    total, count = 0.0, 0
    for first in range(0, len(items), batch_size):
        rows = [span_inputs(c, t, ids, e) for c, t, e in items[first:first + batch_size]]
        width = max(len(r[0]) for r in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        positions = torch.zeros(len(rows), 2, width, dtype=torch.long)
        positions[:, 1] = 1  # padding is no Part A (and masked out all the same)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        targets = torch.full((len(rows), width), -100, dtype=torch.long)
        for row, (x, p, y) in enumerate(rows):
            input_ids[row, :len(x)], positions[row, :, :len(x)] = torch.tensor(x), torch.from_numpy(p)
            mask[row, :len(x)] = True
            # the target of position t is predicted there: Part B's input [S] x1 .. predicts x1 .. [E]
            targets[row, :len(y)] = torch.tensor(y)
        input_ids, positions, mask, targets = (t.to(device) for t in (input_ids, positions, mask, targets))
        states = decoder.hidden_states(input_ids, None, mask, positions)
        picked = targets != -100
        logits = decoder.logits(states[picked]).float()
        total += F.cross_entropy(logits, targets[picked], reduction="sum").item()
        count += int(picked.sum())
    return total, count


def document_items(document: list[int], context: int, stride: int | None = None) -> list[tuple[list[int], list[int], bool]]:
    """A document cut into spans of `stride` tokens (default: half of what a window writes), each written after
    as much of the text before it as fits `context` positions: the text before, [gMASK], [S], the span. So, as
    lmkit eval's sliding window, every token is scored once, seeing at least context - 2 - stride before it."""
    stride = stride or max((context - 2) // 2, 1)
    if not 1 <= stride <= context - 2:
        raise LmkitError(f"--stride {stride} does not fit GLM's windows of {context} positions: [gMASK] and [S] take "
                         f"two, so a window writes at most {context - 2} tokens; give --stride {context - 2} or less")
    before = context - 2 - stride
    items = []
    for start in range(0, max(len(document), 1), stride):
        text = document[start:start + stride]
        items.append((document[max(0, start - before):start], text, start + stride >= len(document)))
    return items


def perplexity(nll: float, tokens: int) -> float:
    return math.exp(nll / tokens)


# -- infilling against left to right (§3.3 of the known answer: GLM sees both sides of a blank) ------


def blank_samples(texts: list[list[int]], ids: dict[str, int], options, seed: int = 0):
    """One token-level blank-infilling sample per text (lmkit.plugins.glm.data.Blanker), text i drawn from
    np.random.default_rng([seed, i]): the same blanks for every model scored on them."""
    from dataclasses import replace

    from .data import Blanker

    token_only = replace(options, token_weight=1.0, sentence_weight=0.0, document_weight=0.0)
    blanker = Blanker(token_only, ids)
    return [blanker(np.asarray(text, dtype=np.int64), np.zeros(1, dtype=np.int64), np.random.default_rng([seed, i]))
            for i, text in enumerate(texts)]


@torch.inference_mode()
def infilling_nll(decoder, samples, end_id: int, *, batch_size: int = 16, device: str = "cpu") -> tuple[float, int]:
    """(NLL in nats, tokens) of the blanks' tokens as GLM fills them: Part A (the text, each blank one [MASK]),
    the spans in Part B after the ones before them; the [E] that ends each span is not counted, so the
    positions scored are the blanked tokens of the text and nothing else."""
    total, count = 0.0, 0
    for first in range(0, len(samples), batch_size):
        rows = samples[first:first + batch_size]
        width = max(len(s.input_ids) for s in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        positions = torch.zeros(len(rows), 2, width, dtype=torch.long)
        positions[:, 1] = 1  # padding is no Part A
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        targets = torch.full((len(rows), width), -100, dtype=torch.long)
        for row, s in enumerate(rows):
            L = len(s.input_ids)
            input_ids[row, :L], positions[row, :, :L] = torch.from_numpy(s.input_ids), torch.from_numpy(s.position_ids)
            mask[row, :L] = True
            targets[row, :L] = torch.from_numpy(np.where(s.labels == end_id, -100, s.labels))
        input_ids, positions, mask, targets = (t.to(device) for t in (input_ids, positions, mask, targets))
        picked = targets != -100
        states = decoder.hidden_states(input_ids, None, mask, positions)
        total += F.cross_entropy(decoder.logits(states[picked]).float(), targets[picked], reduction="sum").item()
        count += int(picked.sum())
    return total, count


@torch.inference_mode()
def left_to_right_nll(decoder, texts: list[list[int]], samples, bos_id: int, *, device: str = "cpu"):
    """(NLL in nats, tokens) of the same blanked tokens read by a left-to-right model: each given every token
    of its text before it (and the text's start token), none after it."""
    total, count = 0.0, 0
    for text, sample in zip(texts, samples):
        if not sample.spans:  # a text too short for 15% to be a token has no blank
            continue
        places = np.concatenate([np.arange(a, b) for a, b in sample.spans])  # the blanked tokens' places
        input_ids = torch.tensor([[bos_id, *text[:-1]]], device=device)  # input t predicts text[t]
        logits = decoder(input_ids)[0].float()  # (n, V)
        where = torch.from_numpy(places).to(device)
        total += F.cross_entropy(logits[where], torch.tensor(text, device=device)[where], reduction="sum").item()
        count += len(places)
    return total, count
