"""What differs between kinds of task: the file format, the head, how examples become batches, and
the metrics. `lmkit finetune` and the trainer treat every kind the same way through a `TaskKind`.
"""
from __future__ import annotations

import numpy as np

from ..errors import LmkitError
from . import qa, tokens
from .formats import read_task_file
from .inputs import collate, encode_task
from .metrics import task_metrics

SEQUENCE_KINDS = ("classification", "similarity", "regression", "multiple-choice")
KINDS = (*SEQUENCE_KINDS, "token-classification", "question-answering")


class SequenceKind:
    """One label per example (or per choice): GPT's four transformations, BERT's pair format."""

    head = "sequence-head"

    def __init__(self, name: str, options):
        self.name, self.options = name, options

    def read(self, path: str, labels: tuple[str, ...] = (), require_labels: bool = True):
        o = self.options
        return read_task_file(path, self.name, text_fields=o.text_fields, label_field=o.label_field,
                              labels=labels or o.labels, require_labels=require_labels)

    def head_options(self, data) -> dict:
        single = self.name in ("regression", "multiple-choice")
        return {"task": self.name, "num_labels": 1 if single else len(data.labels), "labels": list(data.labels)}

    def encode(self, data, tokenizer, max_length: int, recipe):
        return encode_task(data, recipe.inputs(tokenizer, max_length))

    def collate(self, encoded, pad_id: int) -> dict[str, np.ndarray]:
        return collate(encoded, pad_id, regression=self.name == "regression")

    def metrics(self, predictions: list, batches: list[dict], encoded, data) -> dict[str, float]:
        gold = np.concatenate([batch["labels"] for batch in batches])
        return task_metrics(self.name, np.concatenate(predictions), gold, len(data.labels))

    def outputs(self, predictions: list, batches: list[dict], encoded, data) -> list[dict]:
        predicted = np.concatenate(predictions)
        if self.name == "regression":
            return [{"value": float(v)} for v in predicted]
        if self.name == "multiple-choice":
            return [{"choice": int(i)} for i in predicted]
        return [{"label": data.labels[int(i)]} for i in predicted]

    def labelled(self, data) -> bool:
        return all(not (e.label == -1 or e.label != e.label) for e in data.examples)  # NaN: no regression label


class TokenKind:
    """A tag per word, from CoNLL files: entity-level F1 (for BIO tags) and token accuracy."""

    head = "token-head"
    name = "token-classification"

    def __init__(self, name: str, options):
        self.options = options

    def read(self, path: str, labels: tuple[str, ...] = (), require_labels: bool = True):
        return tokens.read_conll(path, tag_column=self.options.tag_column, labels=labels or self.options.labels,
                                 require_labels=require_labels)

    def head_options(self, data) -> dict:
        return {"num_labels": len(data.labels), "labels": list(data.labels)}

    def encode(self, data, tokenizer, max_length: int, recipe):
        return tokens.encode_sentences(data, tokenizer, max_length, encoder=recipe.bidirectional)

    def collate(self, encoded, pad_id: int) -> dict[str, np.ndarray]:
        return tokens.collate_sentences(encoded, pad_id)

    def metrics(self, predictions: list, batches: list[dict], encoded, data) -> dict[str, float]:
        predicted_tags, gold_tags, right, total = [], [], 0, 0
        for predicted, batch in zip(predictions, batches):
            for row, labels in zip(predicted, batch["labels"]):
                scored = labels != -100  # one position per word kept
                predicted_tags.append([data.labels[i] for i in row[scored]])
                gold_tags.append([data.labels[i] for i in labels[scored]])
                right += int(np.sum(row[scored] == labels[scored]))
                total += int(scored.sum())
        # entity F1 first: the best checkpoint is chosen by it
        return {**tokens.entity_f1(predicted_tags, gold_tags), "accuracy": right / max(total, 1)}

    def outputs(self, predictions: list, batches: list[dict], encoded, data) -> list[dict]:
        rows = [(row, labels) for predicted, batch in zip(predictions, batches)
                for row, labels in zip(predicted, batch["labels"])]
        return [{"words": list(sentence.words[:len(row[labels != -100])]),
                 "tags": [data.labels[int(i)] for i in row[labels != -100]]}
                for (row, labels), sentence in zip(rows, data.examples)]

    def labelled(self, data) -> bool:
        return all(tag >= 0 for sentence in data.examples for tag in sentence.tags)


class QuestionKind:
    """Extractive QA from SQuAD v1.1/v2.0 files: exact match and F1 of the answer text."""

    head = "span-head"
    name = "question-answering"

    def __init__(self, name: str, options):
        self.options = options
        self.allow_no_answer = False

    def read(self, path: str, labels: tuple[str, ...] = (), require_labels: bool = True):
        data = qa.read_squad(path, require_labels)
        self.allow_no_answer |= any(not q.answers for q in data.examples)
        return data

    def head_options(self, data) -> dict:
        return {"allow_no_answer": self.allow_no_answer}

    def encode(self, data, tokenizer, max_length: int, recipe):
        if not recipe.bidirectional:
            raise LmkitError("extractive question answering reads [CLS] question [SEP] context [SEP] with an "
                             "encoder (BERT family); a decoder answers by generating: see lmkit eval --task")
        return qa.encode_questions(data, tokenizer, max_length)

    def collate(self, encoded, pad_id: int) -> dict[str, np.ndarray]:
        return qa.collate_questions(encoded, pad_id)

    def metrics(self, predictions: list, batches: list[dict], encoded, data) -> dict[str, float]:
        logits = [row for predicted in predictions for row in predicted]  # (T, 2) per question
        answers = []
        for row, question, encoded_question in zip(logits, data.examples, encoded):
            span = qa.best_span(row[:, 0], row[:, 1], encoded_question, self.allow_no_answer)
            answers.append(qa.span_text(question, encoded_question, span))
        return qa.squad_metrics(answers, data.examples)

    def outputs(self, predictions: list, batches: list[dict], encoded, data) -> list[dict]:
        logits = [row for predicted in predictions for row in predicted]
        return [{"id": question.id, "answer": qa.span_text(
                    question, encoded_question, qa.best_span(row[:, 0], row[:, 1], encoded_question,
                                                             self.allow_no_answer))}
                for row, question, encoded_question in zip(logits, data.examples, encoded)]

    def labelled(self, data) -> bool:
        return False  # a question without answers may be unanswerable or unlabelled: no metrics from predict


def task_kind(name: str, options):
    if name in SEQUENCE_KINDS:
        return SequenceKind(name, options)
    if name == "token-classification":
        return TokenKind(name, options)
    if name == "question-answering":
        return QuestionKind(name, options)
    raise LmkitError(f"unknown task kind '{name}'; allowed: {', '.join(KINDS)}")
