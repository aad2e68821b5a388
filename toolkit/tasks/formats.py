"""Task files: one labelled example per JSONL record or TSV row, checked line by line.

The kind of task says what an example holds:

    classification   one text, or a pair whose order matters (entailment: premise, hypothesis)
    similarity       a pair whose order does not matter (GPT encodes both orders and adds them)
    regression       one text or a pair, with a real-valued label (STS-B)
    multiple-choice  a context and a list of choices; the label is the index of the right one

Texts are found under the first of the usual field names that a file has (text, sentence,
text_a/text_b, sentence1/sentence2, premise/hypothesis, question/sentence), or the ones given.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass

from ..data import read_text
from ..errors import DataError

TASK_KINDS = ("classification", "similarity", "regression", "multiple-choice")
TEXT_FIELDS = (("text_a", "text_b"), ("sentence1", "sentence2"), ("premise", "hypothesis"),
               ("question", "sentence"), ("text",), ("sentence",))


@dataclass(frozen=True)
class Example:
    texts: tuple[str, ...]  # one text or a pair; multiple choice: (context,)
    label: int | float  # index into the label names (or of the right choice), or a real value
    choices: tuple[str, ...] = ()  # multiple choice only


@dataclass
class TaskData:
    kind: str
    examples: list[Example]
    labels: tuple[str, ...]  # label names of a classification; empty for regression and multiple choice
    path: str
    lines: tuple[int, ...] = ()  # the file line (1-based) of each example, for `lmkit predict`'s output


def read_task_file(path: str, kind: str, *, text_fields: tuple[str, ...] = (), label_field: str = "label",
                   labels: tuple[str, ...] = (), require_labels: bool = True) -> TaskData:
    """The examples of a .jsonl or .tsv task file; `labels` declares the label set (else: the file's own).

    With require_labels=False (prediction) an example may lack its label: it gets -1 (NaN for regression).
    """
    if kind not in TASK_KINDS:
        raise DataError(f"unknown task kind '{kind}'; allowed: {', '.join(TASK_KINDS)}")
    if not os.path.isfile(path):
        raise DataError(f"task file {path} does not exist")
    records = list(_records(path))
    if not records:
        header = ("; a .tsv file's first line is its column header (GLUE's: sentence, label), the examples follow it"
                  if path.endswith((".tsv", ".txt")) and read_text(path).strip() else "")
        raise DataError(f"{path} holds no examples{header}")
    fields = text_fields or _guess_text_fields(records[0][1], kind, path)
    lines = tuple(line for line, _ in records)  # one example per record
    raw_labels = []
    examples = []
    for line, record in records:
        where = f"{path} line {line}"
        if kind == "multiple-choice":
            examples.append(_choice_example(record, where, label_field, require_labels, text_fields))
            continue
        texts = tuple(_text(record, name, where) for name in fields)
        if label_field not in record or record[label_field] in ("", None):
            if not require_labels:
                raw_labels.append((where, None))
                examples.append(Example(texts, 0))
                continue
            raise DataError(f'{where} has no "{label_field}"; every example needs its label (name the field '
                            "with --label-field)")
        raw_labels.append((where, record[label_field]))
        examples.append(Example(texts, 0))
    if kind == "multiple-choice":
        counts = {len(e.choices) for e in examples}
        if len(counts) > 1:
            raise DataError(f"{path}: examples have {sorted(counts)} choices; every example of a file needs the "
                            "same number of choices")
        return TaskData(kind, examples, (), path, lines)
    if kind == "regression":
        values = [float("nan") if value is None else _real(value, where, label_field) for where, value in raw_labels]
        return TaskData(kind, [Example(e.texts, v) for e, v in zip(examples, values)], (), path, lines)
    names = tuple(labels) or tuple(sorted({_label_name(value) for _, value in raw_labels if value is not None}))
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for where, value in raw_labels:
        if value is None:
            ids.append(-1)
            continue
        name = _label_name(value)
        if name not in index:
            advice = ("fix the label or declare it (--labels, or a word for it in --verbalizer)" if require_labels else
                      "the model was fine-tuned on those; fix the label, or leave the labels out to predict alone")
            raise DataError(f'{where}: label "{name}" is not one of the declared labels ({", ".join(names)}); {advice}')
        ids.append(index[name])
    if len(names) < 2 and require_labels:
        raise DataError(f"{path} has a single label ({names[0]}); a classifier needs at least two, declare them "
                        "with --labels")
    return TaskData(kind, [Example(e.texts, i) for e, i in zip(examples, ids)], names, path, lines)


def _records(path: str):
    """(line number, dict) for each example of the file."""
    if path.endswith(".jsonl"):
        with io.StringIO(read_text(path)) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path} line {number} is not valid JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path} line {number} is not a JSON object")
                yield number, record
    elif path.endswith((".tsv", ".txt")):
        with io.StringIO(read_text(path), newline="") as handle:
            rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(rows, None)
            if header is None:
                return
            for number, row in enumerate(rows, 2):
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path} line {number} has {len(row)} columns, the header has {len(header)}; "
                                    "a tab inside a text breaks the row (GLUE files have none)")
                yield number, dict(zip(header, row))
    else:
        raise DataError(f"{path}: task files are .jsonl (one JSON object per line) or .tsv (a header row, then "
                        "tab-separated columns)")


def _guess_text_fields(record: dict, kind: str, path: str) -> tuple[str, ...]:
    if kind == "multiple-choice":
        return ()
    for fields in TEXT_FIELDS:
        if all(name in record for name in fields):
            return fields
    if len(record) == 1 and path.endswith((".tsv", ".txt")):  # plain text, its first line taken for a header
        raise DataError(f'{path}: its first line, read as a .tsv header, names one column ("{next(iter(record))[:40]}"); '
                        "a task file starts with a header row such as sentence<TAB>label, or is .jsonl records "
                        '({"text": ..., "label": ...}; text to text: {"input": ..., "target": ...})')
    raise DataError(f"{path}: found none of the usual text fields (text, sentence, text_a and text_b, sentence1 "
                    f"and sentence2, ...) among {', '.join(sorted(record)) or 'no fields'}; name them with "
                    "--text-fields")


def _text(record: dict, name: str, where: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f'{where} has no text in "{name}"; every example needs it')
    return value


def _choice_example(record: dict, where: str, label_field: str, require_labels: bool = True,
                    text_fields: tuple[str, ...] = ()) -> Example:
    """An example of "choices" and the right one's index; its texts the named fields (a cloze pattern's: question,
    premise, ...), else the optional "context"."""
    choices = record.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DataError(f'{where}: "choices" must be a list of at least two non-empty strings')
    if text_fields:
        texts = tuple(_text(record, name, where) for name in text_fields)
        return _labelled_choice(record, where, label_field, require_labels, texts, choices)
    context = record.get("context", "")
    if not isinstance(context, str):
        raise DataError(f'{where}: "context" must be a string')
    return _labelled_choice(record, where, label_field, require_labels, (context,), choices)


def _labelled_choice(record: dict, where: str, label_field: str, require_labels: bool, texts: tuple[str, ...],
                     choices: list[str]) -> Example:
    label = record.get(label_field)
    if label is None and not require_labels:
        return Example(texts, -1, tuple(choices))
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
        raise DataError(f'{where}: "{label_field}" {json.dumps(label)} is not the index of one of the '
                        f'{len(choices)} choices; labels are 0-based indices into "choices"')
    return Example(texts, label, tuple(choices))


def _label_name(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _real(value, where: str, field: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f'{where}: "{field}" {json.dumps(value)} is not a number; a regression needs real-valued '
                        "labels") from None
