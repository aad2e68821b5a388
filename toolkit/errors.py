"""The errors lmkit raises on purpose.

Each one carries a message that fits on one line and says what is wrong and what to do. The CLI
prints it as `error: <message>` and exits 1 (2, as for click's usage errors, where the command line
itself has the wrong form: `exit_code`); everything else is a bug and shows as an internal error
(with the traceback under LMKIT_DEBUG=1).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class LmkitError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 1


class SpecError(LmkitError):
    """A spec (TOML file, preset or --set override) names something that does not exist or fits."""


class AssignmentError(SpecError):
    """A KEY=VALUE flag (--set, --schedule-set, ...) that is not KEY=VALUE: a usage error."""

    exit_code = 2


class PluginError(LmkitError):
    """A plugin is missing, broken, or claims a name another plugin already has."""


class ArtifactError(LmkitError):
    """A model, tokenizer or export directory is missing, truncated, corrupt or unsafe."""


class DataError(LmkitError):
    """Training or evaluation data cannot be read as text."""


class MissingDependency(LmkitError):
    """An optional dependency (torch, onnxruntime, matplotlib) is needed but not installed."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, or an empty string when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def one_of(choices: Iterable[str], limit: int = 12) -> str:
    """A short, readable list of allowed names for an error message."""
    names = sorted(str(c) for c in choices)
    if not names:
        return "none are registered"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def require_torch(what: str = "this command"):
    """Import torch, or fail in one line saying how to install it."""
    try:
        import torch
    except ImportError:
        raise MissingDependency(
            f"{what} needs PyTorch, which is not installed; install it with: "
            "pip install -c constraints.txt 'lmkit-toolkit[torch]'"
        ) from None
    return torch
