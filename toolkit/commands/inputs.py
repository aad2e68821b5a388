"""The lines a command reads from `--input FILE`, else from stdin (generate, translate, embed; click only at import)."""
from __future__ import annotations

import os
import sys

import click


def input_lines(path: str | None, flag: str, items: str) -> tuple[list[str], str]:
    """(the lines of `path`, or of stdin where it is None, and where they came from: the path or "stdin").

    flag: the option that gives one item on the command line ("--prompt TEXT"), named with --input when
    neither it nor stdin has any; items: what a line holds ("prompts"). A missing file is a DataError,
    a terminal on stdin a usage error; a file that is not UTF-8 is read_text's DataError.
    """
    from ..data import read_text
    from ..errors import DataError

    if path is not None:
        if not os.path.isfile(path):
            raise DataError(f"--input {path} does not exist; give a file of {items}, one per line")
        return read_text(path).splitlines(), path
    if sys.stdin.isatty():
        raise click.UsageError(f"give {flag}, --input FILE, or {items} on stdin, one per line")
    return sys.stdin.read().splitlines(), "stdin"
