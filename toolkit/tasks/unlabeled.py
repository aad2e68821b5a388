"""Unlabelled text for recipes that learn from it (`lmkit finetune --unlabeled`, CVT's): one sentence per
line, words separated by whitespace; blank lines are skipped. A .jsonl file's records give their "text",
read as training data reads it (lmkit.data), each of its lines a sentence."""
from __future__ import annotations

import os

from ..errors import DataError


def read_unlabeled(path: str) -> list[tuple[str, ...]]:
    """The file's sentences as word tuples. DataError when it is missing, not UTF-8 (with the line and the
    byte offset of the first bad byte) or has no words."""
    if not os.path.isfile(path):
        raise DataError(f"--unlabeled {path} does not exist")
    if path.endswith(".jsonl"):  # read as text, its records' braces and field names became words (a trial's)
        from ..data import jsonl_documents

        advice = 'give records with a "text" string, or a text file of one sentence per line'
        lines = [line for text in jsonl_documents(path, "text", advice) for line in text.splitlines()]
        return _sentences(lines, path)
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(f"--unlabeled {path} is not UTF-8: line {line}, byte offset {error.start} (0x{raw[error.start]:02x}); "
                        "convert the file to UTF-8") from None
    return _sentences(text.splitlines(), path)


def _sentences(lines: list[str], path: str) -> list[tuple[str, ...]]:
    sentences = [tuple(words) for words in (line.split() for line in lines) if words]
    if not sentences:
        raise DataError(f"--unlabeled {path} holds no text; give one sentence per line")
    return sentences
