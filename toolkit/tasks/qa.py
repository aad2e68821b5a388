"""Extractive question answering: SQuAD v1.1/v2.0 files, answer spans as token positions and back
to characters, exact match and F1 as the official SQuAD script computes them.

An encoder reads `[CLS] question [SEP] context [SEP]`; a head scores each context token as the
answer's start and end (BERT §4.2-4.3). An answer cut off by --max-length, and a v2.0 question with
no answer, point at [CLS]; at prediction a v2.0 question has no answer when [CLS]'s score beats the
best span's.
"""
from __future__ import annotations

import collections
import json
import os
import re
import string
from dataclasses import dataclass

import numpy as np

from ..data import read_text
from ..errors import DataError

MAX_ANSWER_TOKENS = 30  # the longest span considered at prediction (BERT's run_squad.py)


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, character offset in context); empty: no answer (v2.0)
    labelled: bool = True  # False: no answers and not marked "is_impossible" (a file to predict on)


@dataclass
class QuestionData:
    kind: str
    examples: list[Question]
    labels: tuple[str, ...]
    path: str
    version: str = "2.0"  # which official script scores it: "1.1", or "2.0" (a file with no-answer questions)


def read_squad(path: str, require_labels: bool = True) -> QuestionData:
    """The questions of a SQuAD-format JSON file, each answer checked against its context.

    With require_labels=False (prediction) a question may come without answers.
    """
    if not os.path.isfile(path):
        raise DataError(f"task file {path} does not exist")
    try:
        document = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON (line {error.lineno}: {error.msg}); question answering reads a "
                        'SQuAD file, one JSON document: {"data": [{"paragraphs": [...]}]}') from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataError(f'{path} is not a SQuAD file: it needs {{"data": [{{"paragraphs": [...]}}]}}')
    questions = []
    for article in document["data"]:
        for paragraph in article.get("paragraphs", []):
            context = paragraph.get("context")
            if not isinstance(context, str) or not context:
                raise DataError(f'{path}: a paragraph of "{article.get("title", "?")}" has no "context"')
            for qa in paragraph.get("qas", []):
                questions.append(_question(qa, context, path, require_labels))
    if not questions:
        raise DataError(f"{path} holds no questions")
    declared = str(document.get("version", "")).lstrip("v")
    version = "2.0" if declared.startswith("2") or any(not q.answers and q.labelled for q in questions) else "1.1"
    return QuestionData("question-answering", questions, (), path, version)


def _question(qa: dict, context: str, path: str, require_labels: bool = True) -> Question:
    qid = str(qa.get("id", "?"))
    if not isinstance(qa.get("question"), str) or not qa["question"].strip():
        raise DataError(f'{path}: question {qid} has no "question" text')
    answers = []
    for answer in [] if qa.get("is_impossible") else qa.get("answers", []):
        text, start = answer.get("text"), answer.get("answer_start")
        if not isinstance(text, str) or not isinstance(start, int):
            raise DataError(f'{path}: question {qid} has an answer without "text" and "answer_start"')
        if context[start:start + len(text)] != text:
            found = context.find(text)
            hint = f"; the text occurs at {found}" if found >= 0 else "; the text does not occur in the context"
            raise DataError(f'{path}: question {qid}: answer "{text}" is not at answer_start {start} of its '
                            f'context (which has "{context[start:start + len(text)]}" there){hint}')
        answers.append((text, start))
    if not answers and not qa.get("is_impossible") and require_labels:
        raise DataError(f'{path}: question {qid} has no answers and is not marked "is_impossible" (SQuAD v2.0)')
    return Question(qid, qa["question"], context, tuple(answers), bool(answers or qa.get("is_impossible")))


@dataclass
class EncodedQuestion:
    ids: list[int]
    token_types: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in the context; (0, 0) elsewhere
    context_tokens: list[bool]  # which tokens belong to the context
    start: int  # the answer's first and last token, 0 ([CLS]) for no answer
    end: int


def encode_questions(data: QuestionData, tokenizer, max_length: int):
    """Questions and contexts as one sequence each (the context cut to fit), with the answer's tokens."""
    from tokenizers import Tokenizer as HFTokenizer

    from .inputs import refuse_reversed

    refuse_reversed(tokenizer, "question answering (answer spans by character offsets)")
    truncating = HFTokenizer.from_str(tokenizer.hf_tokenizer.to_str())
    truncating.enable_truncation(max_length, strategy="only_second")
    encoded, cut = [], 0
    for question in data.examples:
        encoding = truncating.encode(question.question, question.context, add_special_tokens=True)
        in_context = [sequence == 1 for sequence in encoding.sequence_ids]
        offsets = [_trimmed(question.context, *span) if inside else (0, 0)
                   for span, inside in zip(encoding.offsets, in_context)]
        start = end = 0
        if question.answers:
            text, first = question.answers[0]
            last = first + len(text)
            tokens = [i for i, (a, b) in enumerate(offsets) if in_context[i] and a < last and b > first]
            if tokens:
                start, end = tokens[0], tokens[-1]
            else:
                cut += 1  # the answer lies beyond what fits: trained as no answer
        encoded.append(EncodedQuestion(list(encoding.ids), list(encoding.type_ids), offsets, in_context, start, end))
    return encoded, cut


def _trimmed(context: str, start: int, end: int) -> tuple[int, int]:
    """A token's character span without the whitespace at its ends.

    Byte-level BPE (GPT-2's offsets, trim_offsets off) and SentencePiece (`▁`) tokens carry the space
    before a word; an answer read from such offsets would start with it (" fox" for "fox").
    """
    while start < end and context[start].isspace():
        start += 1
    while end > start and context[end - 1].isspace():
        end -= 1
    return start, end


def collate_questions(questions: list[EncodedQuestion], pad_id: int) -> dict[str, np.ndarray]:
    """(B, T) ids, mask, segment ids and which positions may answer (context and [CLS]); (B,) start, end."""
    B, T = len(questions), max(len(q.ids) for q in questions)
    input_ids = np.full((B, T), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((B, T), dtype=np.int64)
    attention_mask = np.zeros((B, T), dtype=bool)
    answerable = np.zeros((B, T), dtype=bool)
    for b, q in enumerate(questions):
        n = len(q.ids)
        input_ids[b, :n], token_type_ids[b, :n], attention_mask[b, :n] = q.ids, q.token_types, True
        answerable[b, :n] = q.context_tokens
        answerable[b, 0] = True  # [CLS]: no answer
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            "answerable": answerable, "start_positions": np.array([q.start for q in questions], dtype=np.int64),
            "end_positions": np.array([q.end for q in questions], dtype=np.int64)}


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, question: EncodedQuestion,
              allow_no_answer: bool) -> tuple[int, int] | None:
    """The first and last token of the best-scoring span of the context (None: no answer)."""
    context = [i for i, inside in enumerate(question.context_tokens) if inside]
    best, best_score = None, -np.inf
    if context:
        starts = sorted(context, key=lambda i: -start_logits[i])[:20]
        ends = sorted(context, key=lambda i: -end_logits[i])[:20]
        for s in starts:
            for e in ends:
                if s <= e < s + MAX_ANSWER_TOKENS and start_logits[s] + end_logits[e] > best_score:
                    best, best_score = (s, e), start_logits[s] + end_logits[e]
    if best is None or (allow_no_answer and start_logits[0] + end_logits[0] > best_score):
        return None
    return best


def span_text(question: Question, encoded: EncodedQuestion, span) -> str:
    """The context's exact characters from the span's first token to its last ("" for no answer)."""
    if span is None:
        return ""
    # strip: a span may begin or end at a token of whitespace alone (byte-level "Ġ", "▁"), trimmed empty.
    return question.context[encoded.offsets[span[0]][0]:encoded.offsets[span[1]][1]].strip()


# -- the official SQuAD metrics ---------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lowercase, no punctuation, no articles, single spaces (normalize_answer of both official scripts)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the two answers normalise to the same text (compute_exact; v1.1's exact_match_score)."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def answer_f1(prediction: str, gold: str, version: str = "2.0") -> float:
    """Token-overlap F1 of two answers (compute_f1 of evaluate-v2.0.py; f1_score of evaluate-v1.1.py).

    v2.0: when either normalises to no tokens (a no-answer), 1.0 if both do, else 0.0. v1.1 has no
    such rule: no tokens in common is 0.0, even for two empty answers.
    """
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version == "2.0" and (not predicted or not wanted):
        return float(predicted == wanted)
    common = sum((collections.Counter(predicted) & collections.Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def gold_answers(question: Question, version: str = "2.0") -> list[str]:
    """The answers a prediction is scored against. v2.0 (get_raw_scores) drops gold answers that
    normalise to nothing and scores against [""] (no answer) when none remain; v1.1 keeps them all."""
    texts = [text for text, _ in question.answers]
    if version == "1.1":
        return texts or [""]
    return [text for text in texts if normalize_answer(text)] or [""]


def squad_metrics(predictions: list[str], questions: list[Question], version: str = "2.0") -> dict[str, float]:
    """Exact match and F1, each the best over a question's gold answers, averaged over questions, as the
    official script of `version` ("1.1" or "2.0") computes them (as fractions, where it prints percent).

    v2.0 also reports them over the questions with an answer (has_answer_*) and without (no_answer_*),
    as evaluate-v2.0.py's HasAns_ and NoAns_ figures, when the file has both kinds.
    """
    if version not in ("1.1", "2.0"):
        raise ValueError(f"SQuAD version must be 1.1 or 2.0, got {version!r}")
    exact, f1 = [], []
    for prediction, question in zip(predictions, questions):
        golds = gold_answers(question, version)
        exact.append(max(exact_match(prediction, g) for g in golds))
        f1.append(max(answer_f1(prediction, g, version) for g in golds))
    n = max(len(exact), 1)
    metrics = {"exact_match": sum(exact) / n, "f1": sum(f1) / n}
    if version == "2.0":
        has = [bool(q.answers) for q in questions[:len(exact)]]
        if any(has) and not all(has):
            for name, wanted in (("has_answer", True), ("no_answer", False)):
                chosen = [i for i, h in enumerate(has) if h == wanted]
                metrics[f"{name}_exact_match"] = sum(exact[i] for i in chosen) / len(chosen)
                metrics[f"{name}_f1"] = sum(f1[i] for i in chosen) / len(chosen)
    return metrics
