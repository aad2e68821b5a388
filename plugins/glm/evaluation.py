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


def document_items(document: list[int], context: int) -> list[tuple[list[int], list[int], bool]]:
    """A document cut into spans that fit `context` positions, each after the text before it (as much as fits)."""
    room = max((context - 2) // 2, 1)  # half the positions for the text written, half for what it follows
    items = []
    for start in range(0, max(len(document), 1), room):
        text = document[start:start + room]
        items.append((document[max(0, start - room):start], text, start + room >= len(document)))
    return items


def perplexity(nll: float, tokens: int) -> float:
    return math.exp(nll / tokens)
