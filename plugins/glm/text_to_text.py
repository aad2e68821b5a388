"""GLM fine-tuned to write a target after a source (Du et al. 2022 §2.3, "text generation"): the
`glm-text-to-text` objective of `lmkit finetune --task text-to-text`.

"For text generation tasks, the given context constitutes the Part A of the input, with a mask token
appended at the end. The model generates the text of Part B autoregressively." Every (input, target)
pair of a task file (lmkit.tasks.text_to_text) is one [gMASK] span, the one a left-to-right
generation writes (lmkit.plugins.glm.evaluation.span_inputs):

    input : x1 ... xm [gMASK] | [S] y1 ... yn          x: the source, y: the target
    pos1  : 0  ...  m-1   m   |  m   m ...  m
    pos2  : 0  ...  0     0   |  1   2 ... n+1
    target:                   | y1  y2 ... [E]         the loss: these n + 1 tokens only

Generation asks the same question (BlankFilling.source_prompt: the source, then [gMASK]) and fills the
blank, so `lmkit predict`, `lmkit eval --task` and `lmkit generate` of the fine-tuned model, and of its
export, read a source as training did.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lmkit.errors import SpecError
from lmkit.objectives.base import ObjectiveModule
from lmkit.training.arguments import TrainingError

from .config import END, GENERATION_MASK, START, TextToTextOptions

IGNORE = -100


def fit_pair(source: list[int], target: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """(source, target, whether either was cut) so that source, [gMASK], [S] and the target take at most
    max_length positions: the target keeps at least half of what is left after [gMASK] and [S] (all of it when
    it is shorter), the source the rest; each keeps its beginning."""
    room = max_length - 2
    if len(source) + len(target) <= room:
        return source, target, False
    kept = min(len(target), max(room - len(source), room // 2))
    return source[:room - kept], target[:kept], True


def pair_inputs(source: list[int], target: list[int], ids: dict[str, int]):
    """(input ids (L,), positions (2, L), labels (L,)) of one pair, as in the module docstring."""
    a = len(source) + 1  # Part A: the source and [gMASK]
    input_ids = [*source, ids[GENERATION_MASK], ids[START], *target]
    pos1 = list(range(a)) + [a - 1] * (len(target) + 1)
    pos2 = [0] * a + list(range(1, len(target) + 2))
    labels = [IGNORE] * a + [*target, ids[END]]  # [S] predicts y1, ..., yn predicts [E]
    return (np.asarray(input_ids, dtype=np.int64), np.asarray([pos1, pos2], dtype=np.int64),
            np.asarray(labels, dtype=np.int64))


def collate_pairs(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded input_ids, position_ids (B, 2, T), attention_mask and labels of pair_inputs() rows."""
    n, T = len(rows), max(len(ids) for ids, _, _ in rows)
    batch = {"input_ids": np.full((n, T), pad_id, dtype=np.int64),
             "position_ids": np.zeros((n, 2, T), dtype=np.int64),
             "attention_mask": np.zeros((n, T), dtype=bool),
             "labels": np.full((n, T), IGNORE, dtype=np.int64)}
    for row, (ids, positions, labels) in enumerate(rows):
        L = len(ids)
        batch["input_ids"][row, :L], batch["position_ids"][row, :, :L] = ids, positions
        batch["position_ids"][row, 1, L:] = 1  # padding is no Part A (masked out all the same)
        batch["attention_mask"][row, :L] = True
        batch["labels"][row, :L] = labels
    return batch


class GLMTextToText(ObjectiveModule):
    """Cross-entropy of each target (and the [E] that ends it) written as a [gMASK] span after its source, averaged
    over the batch's target tokens; the source is never predicted. Batches come from lmkit finetune's
    text-to-text task (lmkit.tasks.text_to_text), through encode_pair() and collate()."""

    models_language = True  # the mean cross-entropy of the targets' tokens

    def __init__(self, options: TextToTextOptions):
        super().__init__(options)

    @classmethod
    def for_model(cls, options: TextToTextOptions, model):
        from .model import GLMDecoder

        if model.encoder is not None or not isinstance(model.decoder, GLMDecoder):
            raise SpecError("objectives: glm-text-to-text trains a GLM decoder alone; the spec needs [decoder] "
                            "type = \"glm\" and no encoder")
        return cls(options)

    @classmethod
    def batches(cls, context):
        raise TrainingError("glm-text-to-text trains on (input, target) pairs: fine-tune with lmkit finetune --task "
                            "text-to-text --train FILE.jsonl (lmkit train pre-trains with blank-infilling)")

    # -- what lmkit.tasks.text_to_text asks of a decoder's text-to-text objective ---------------------------------

    def special_ids(self, tokenizer) -> dict[str, int]:
        from .data import special_ids

        return special_ids(tokenizer)

    def encode_pair(self, source: list[int], target: list[int], max_length: int, ids: dict[str, int]):
        """(one example for collate(), whether it was cut to max_length)."""
        source, target, cut = fit_pair(source, target, max_length)
        return pair_inputs(source, target, ids), cut

    def collate(self, examples, pad_id: int) -> dict[str, np.ndarray]:
        return collate_pairs(examples, pad_id)

    @staticmethod
    def prompts(batch: dict) -> list[list[int]]:
        """The prompt of each row of a collated batch (its Part A: the source and [gMASK]), which generation fills."""
        part_a = (batch["position_ids"][:, 1] == 0) & batch["attention_mask"].bool()
        return [row[keep].tolist() for row, keep in zip(batch["input_ids"].cpu(), part_a.cpu())]

    def forward(self, model, batch: dict) -> torch.Tensor:
        states = model.decoder.hidden_states(batch["input_ids"], None, batch["attention_mask"], batch["position_ids"])
        labels = batch["labels"]
        picked = labels != IGNORE
        logits = model.decoder.logits(states[picked])  # (N, V): only the targets go through the vocabulary
        return F.cross_entropy(logits.float(), labels[picked])
