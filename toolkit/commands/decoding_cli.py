"""What `lmkit generate` and `lmkit translate` share: the decoding flags and the strategy options they
make (click only at import); telling an export directory from a model directory is lmkit.opening.is_export.

Both commands import this module and neither imports the other's, except generate -> translate
(a prompt to an encoder-decoder model is a source sentence): the dependency points one way.
"""
from __future__ import annotations

import dataclasses
import logging

import click

# The decoding strategies' options, as `generate` and `translate` both take them; a flag belongs to
# the strategies whose options have its name (--num-beams: beam).
DECODING_FLAGS = (
    click.option("--strategy", help="greedy, beam, sample or another registered one.  [default: the model's, "
                                    "else greedy]"),
    click.option("--max-new-tokens", type=int, help="Most tokens to add to each input.  [default: the model's, else 50]"),
    click.option("--num-beams", type=int, help="beam: hypotheses kept per input.  [default: 4]"),
    click.option("--length-penalty", type=float, help="beam: scores are divided by length ** this.  [default: 1.0]"),
    click.option("--early-stopping/--no-early-stopping", default=None,
                 help="beam: stop once num_beams hypotheses have ended.  [default: no]"),
    click.option("--num-return-sequences", type=int, help="beam: best hypotheses to print.  [default: 1]"),
    click.option("--no-repeat-ngram-size", type=int, help="Never generate an n-gram of this size twice."),
    click.option("--temperature", type=float, help="sample: below 1 sharpens, above 1 flattens.  [default: 1.0]"),
    click.option("--top-k", type=int, help="sample: among the k most likely tokens only."),
    click.option("--top-p", type=float, help="sample: among the most likely tokens that make up this mass."),
    click.option("--seed", type=int, help="sample: seed of the random choices."),
)


def decoding_flags(command):
    """Add DECODING_FLAGS to a click command, in their order."""
    for option in reversed(DECODING_FLAGS):
        command = option(command)
    return command


def decoding_options(default: dict, strategy: str | None, given: dict, host):
    """(strategy name, options): the model's settings ({"strategy", "options"}) overridden by the command line."""

    from ..options import build_options

    name = strategy or default["strategy"]
    options_class = host.component("decoding", name).options_class()
    values = dict(default["options"]) if default["strategy"] == name else {}
    accepted = {f.name for f in dataclasses.fields(options_class)}
    for key in given:
        if key not in accepted:
            takers = [other for other, component in sorted(host.components["decoding"].items())
                      if key in {f.name for f in dataclasses.fields(component.options_class())}]
            hint = f"; it is an option of {', '.join(takers)} (--strategy {takers[0]})" if takers else ""
            raise click.UsageError(f"--{key.replace('_', '-')} does not apply to the {name} strategy{hint}")
    return name, build_options(options_class, {**values, **given}, f"decoding {name}")


class _WarningsToStderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"warning: {record.getMessage()}", err=True)


def show_warnings() -> None:
    """Print lmkit's warnings (a truncated prompt, a continuation cut by the context) on stderr."""
    logger = logging.getLogger("lmkit")
    if not any(isinstance(handler, _WarningsToStderr) for handler in logger.handlers):
        logger.addHandler(_WarningsToStderr(logging.WARNING))


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str, option: str) -> str:
    r"""Backslash escapes typed on a command line as the characters they stand for: `\n`, `\t`, `\r`, `\\`,
    `\xHH`, `\uHHHH`, `\UHHHHHHHH` (a surrogate pair of `\u` escapes is one character) (eval --separator,
    generate --stop: a trial's `--stop '\n'` was the two characters, and never matched). Anything else after
    a backslash, or a lone surrogate, is a usage error naming `option`: a stop taken literally never matches,
    and nothing says why."""
    import re

    def usage(problem: str):
        return click.BadParameter(f"'{text}' {problem}; escapes are \\n, \\t, \\r, \\\\ (a backslash), \\xHH, "
                                  "\\uHHHH and \\UHHHHHHHH", param_hint=option)

    digits = {"x": 2, "u": 4, "U": 8}
    pieces, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            pieces.append(char)
            i += 1
            continue
        escape = text[i + 1:i + 2]
        if escape in ESCAPES:
            pieces.append(ESCAPES[escape])
            i += 2
        elif escape in digits:
            number = text[i + 2:i + 2 + digits[escape]]
            if not re.fullmatch(f"[0-9a-fA-F]{{{digits[escape]}}}", number):
                raise usage(f"has \\{escape} without the {digits[escape]} hex digits it takes")
            if int(number, 16) > 0x10FFFF:
                raise usage(f"has \\{escape}{number}, past the last Unicode character")
            pieces.append(chr(int(number, 16)))
            i += 2 + digits[escape]
        else:
            raise usage(f"holds \\{escape}, which is no escape lmkit reads" if escape else "ends with a lone backslash")
    try:  # a pair of \\u surrogates is one character; half of one is none
        return "".join(pieces).encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise usage("holds half of a UTF-16 surrogate pair, which is no character") from None
