"""What differs between kinds of task: the file format, the head, how examples become batches, and
the metrics. `lmkit finetune` and the trainer treat every kind the same way through a `TaskKind`.
"""
from __future__ import annotations

import numpy as np

from ..errors import LmkitError
from . import chunks, qa, tokens
from .formats import read_task_file
from .inputs import collate, encode_task
from .metrics import task_metrics

SEQUENCE_KINDS = ("classification", "similarity", "regression", "multiple-choice")
KINDS = (*SEQUENCE_KINDS, "token-classification", "question-answering", "text-to-text")


def head_predict(model, head: str, batch):
    """The task head's predictions of one batch, on the host (float32 where they are scores)."""
    prediction = model.objectives[head].predict(model, batch)
    if prediction.is_floating_point():  # scores, maybe bf16, which numpy lacks
        prediction = prediction.float()
    return prediction.cpu().numpy()


class HeadKind:
    """What the kinds with a task head share: the head reads the feature stack (an encoder-decoder's decoder
    is left behind), the examples are read the way the stack's task recipe says."""

    keeps_decoder = False
    averages = False  # whether several models' scores can be averaged (average())

    def reader(self, model, tokenizer):
        """What encode() needs of the fine-tuned model: its head's task recipe."""
        return model.objectives[self.head].recipe

    def predict(self, model, batch):
        return head_predict(model, self.head, batch)

    def average(self, scores: list[np.ndarray]) -> np.ndarray:
        """Scores (examples, ...) of several models of one task combined into one model's scores; only the kinds
        whose examples every model scores alike (one row per example) can be averaged."""
        raise LmkitError(f"the predictions of several {self.name} models cannot be averaged (each reads its own "
                         "tokens); predict with one model")


class SequenceKind(HeadKind):
    """One label per example (or per choice): GPT's four transformations, BERT's pair format."""

    head = "sequence-head"
    averages = True

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

    def collate(self, encoded, pad_id: int, token_inputs: dict | None = None) -> dict[str, np.ndarray]:
        return collate(encoded, pad_id, regression=self.name == "regression", token_inputs=token_inputs)

    def metrics(self, predictions: list, batches: list[dict], encoded, data) -> dict[str, float]:
        gold = np.concatenate([batch["labels"] for batch in batches])
        return task_metrics(self.name, np.concatenate(predictions), gold, len(data.labels))

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """The head's prediction from its scores, as its predict() gives it (lmkit.objectives.heads)."""
        return scores if self.name == "regression" else scores.argmax(-1)

    def baseline(self, batches: list[dict], encoded, data, train) -> dict:
        """The dev metrics of one answer for every example, learnt from the training labels alone: the
        majority class (or right choice); for regression, the training mean. A model should beat it."""
        gold = [e.label for e in train.examples]
        if self.name == "regression":
            value, predicts = float(np.mean(gold)), f"{float(np.mean(gold)):.4g} (the training mean)"
        else:
            value = int(np.bincount(np.asarray(gold, dtype=np.int64)).argmax())  # ties: the first label
            predicts = (f"choice {value}" if self.name == "multiple-choice" else repr(data.labels[value])) + (
                " (the majority in training)")
        constant = [np.full(len(batch["labels"]), value, dtype=np.float32 if self.name == "regression" else np.int64)
                    for batch in batches]
        return {"predicts": predicts, **self.metrics(constant, batches, encoded, data)}

    def outputs(self, scores: list, batches: list[dict], encoded, data) -> list[dict]:
        """Per example: its file line, the prediction, and the probability of every label (or choice)."""
        scores = np.concatenate(scores)
        lines = data.lines or range(1, len(scores) + 1)
        if self.name == "regression":
            return [{"line": line, "value": float(v)} for line, v in zip(lines, scores)]
        probabilities = softmax(scores)
        if self.name == "multiple-choice":
            return [{"line": line, "choice": int(p.argmax()), "probabilities": [round(float(x), 6) for x in p]}
                    for line, p in zip(lines, probabilities)]
        return [{"line": line, "label": data.labels[int(p.argmax())],
                 "probabilities": {name: round(float(x), 6) for name, x in zip(data.labels, p)}}
                for line, p in zip(lines, probabilities)]

    def labelled(self, data) -> bool:
        return all(not (e.label == -1 or e.label != e.label) for e in data.examples)  # NaN: no regression label

    def average(self, scores: list[np.ndarray]) -> np.ndarray:
        """(examples, labels) scores of several models -> the log of their mean probabilities, whose softmax is
        that mean (ULMFiT §3.4 averages a forward and a backward classifier's predictions); regression: the mean
        value. Every model's scores are for the same examples in the same order."""
        if self.name == "regression":
            return np.mean(np.stack(scores), axis=0)
        mean = np.mean(np.stack([softmax(s) for s in scores]), axis=0)
        return np.log(np.maximum(mean, np.finfo(np.float64).tiny)).astype(np.float32)


class TokenKind(HeadKind):
    """A tag per word, from CoNLL files: entity-level F1 (in the tags' scheme, chunks.py) and token accuracy."""

    head = "token-head"
    name = "token-classification"

    def __init__(self, name: str, options):
        self.options = options
        self.scheme = None  # how tags become entities (chunks.SCHEMES), resolved from the labels on reading

    def read(self, path: str, labels: tuple[str, ...] = (), require_labels: bool = True):
        data = self._read(path, labels, require_labels)
        if self.scheme is None:
            self.scheme = chunks.resolve_scheme(self.options.tag_scheme, data.labels)
        return data

    def _read(self, path: str, labels: tuple[str, ...], require_labels: bool):
        return tokens.read_conll(path, tag_column=self.options.tag_column, labels=labels or self.options.labels,
                                 require_labels=require_labels)

    def head_options(self, data) -> dict:
        return {"num_labels": len(data.labels), "labels": list(data.labels), "tag_scheme": self.scheme}

    def encode(self, data, tokenizer, max_length: int, recipe):
        return tokens.encode_sentences(data, tokenizer, max_length, encoder=recipe.bidirectional)

    def collate(self, encoded, pad_id: int, token_inputs: dict | None = None) -> dict[str, np.ndarray]:
        return tokens.collate_sentences(encoded, pad_id, token_inputs)

    def metrics(self, predictions: list, batches: list[dict], encoded, data) -> dict[str, float]:
        predicted_tags, gold_tags, right, total = [], [], 0, 0
        for predicted, batch in zip(predictions, batches):
            for row, labels in zip(predicted, batch["labels"]):
                scored = labels != -100  # one position per word kept
                predicted_tags.append([data.labels[i] for i in row[scored]])
                gold_tags.append([data.labels[i] for i in labels[scored]])
                right += int(np.sum(row[scored] == labels[scored]))
                total += int(scored.sum())
        accuracy = {"accuracy": right / max(total, 1)}
        if self.scheme == "none":  # tags without entities (POS): token accuracy is the metric
            return accuracy
        # entity F1 first: the best checkpoint is chosen by it
        return {**chunks.entity_f1(predicted_tags, gold_tags, self.scheme), **accuracy}

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return scores.argmax(-1)

    def baseline(self, batches: list[dict], encoded, data, train) -> dict:
        """The dev metrics of tagging every word with the training file's most frequent tag (O, mostly)."""
        counts = np.bincount(np.asarray([t for s in train.examples for t in s.tags], dtype=np.int64),
                             minlength=len(data.labels))
        tag = int(counts.argmax())
        constant = [np.full(batch["labels"].shape, tag, dtype=np.int64) for batch in batches]
        return {"predicts": f"{data.labels[tag]!r} for every word (the majority in training)",
                **self.metrics(constant, batches, encoded, data)}

    def outputs(self, scores: list, batches: list[dict], encoded, data) -> list[dict]:
        """Per sentence: its first line, its words (those kept), the tag of each and that tag's probability."""
        rows = [(row, labels) for predicted, batch in zip(scores, batches)
                for row, labels in zip(predicted, batch["labels"])]
        lines = data.lines or range(1, len(rows) + 1)
        out = []
        for (row, labels), sentence, line in zip(rows, data.examples, lines):
            probabilities = softmax(row[labels != -100])  # (words kept, tags)
            out.append({"line": line, "words": list(sentence.words[:len(probabilities)]),
                        "tags": [data.labels[int(p.argmax())] for p in probabilities],
                        "probabilities": [round(float(p.max()), 6) for p in probabilities]})
        return out

    def labelled(self, data) -> bool:
        return all(tag >= 0 for sentence in data.examples for tag in sentence.tags)


class QuestionKind(HeadKind):
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

    def collate(self, encoded, pad_id: int, token_inputs: dict | None = None) -> dict[str, np.ndarray]:
        # Questions are not spelled: a stack with per-token inputs (ELMo) reads its vocabulary's spelling here.
        return qa.collate_questions(encoded, pad_id)

    def metrics(self, predictions: list, batches: list[dict], encoded, data) -> dict[str, float]:
        logits = [row for predicted in predictions for row in predicted]  # (T, 2) per question
        answers = []
        for row, question, encoded_question in zip(logits, data.examples, encoded):
            span = qa.best_span(row[:, 0], row[:, 1], encoded_question, self.allow_no_answer)
            answers.append(qa.span_text(question, encoded_question, span))
        return qa.squad_metrics(answers, data.examples, data.version)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return scores  # (B, T, 2): spans are chosen with the offsets, in metrics() and outputs()

    def baseline(self, batches: list[dict], encoded, data, train) -> dict:
        """The dev metrics of answering nothing to every question (SQuAD v2.0's no-answer baseline)."""
        return {"predicts": "no answer to every question", **qa.squad_metrics([""] * len(data.examples),
                                                                            data.examples, data.version)}

    def outputs(self, scores: list, batches: list[dict], encoded, data) -> list[dict]:
        """Per question: its index in the file, its id, the answer text ("" for none) and the answer's
        score, its start and end logits added (BERT §4.2)."""
        logits = [row for predicted in scores for row in predicted]
        out = []
        for index, (row, question, encoded_question) in enumerate(zip(logits, data.examples, encoded)):
            span = qa.best_span(row[:, 0], row[:, 1], encoded_question, self.allow_no_answer)
            start, end = span if span is not None else (0, 0)
            out.append({"index": index, "id": question.id, "answer": qa.span_text(question, encoded_question, span),
                        "score": round(float(row[start, 0] + row[end, 1]), 6)})
        return out

    def labelled(self, data) -> bool:
        return all(question.labelled for question in data.examples)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, computed in float64."""
    shifted = np.asarray(scores, dtype=np.float64)
    shifted = np.exp(shifted - shifted.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def task_kind(name: str, options):
    if name in SEQUENCE_KINDS:
        return SequenceKind(name, options)
    if name == "token-classification":
        return TokenKind(name, options)
    if name == "question-answering":
        return QuestionKind(name, options)
    if name == "text-to-text":
        from .text_to_text import TextToTextKind

        return TextToTextKind(name, options)
    raise LmkitError(f"unknown task kind '{name}'; allowed: {', '.join(KINDS)}")
