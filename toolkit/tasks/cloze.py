"""Fine-tuning as cloze (Schick and Schütze 2021's PET; GLM, Du et al. 2022 §2.3): a pattern and a verbalizer.

A classification example x becomes a cloze question c(x) by a pattern holding one blank, and each
label y is a word v(y), the verbalizer's; the model scores a label by the probability of its word in
the blank, and p(y | x) = p(v(y) | c(x)) / sum_y' p(v(y') | c(x)), trained with cross-entropy:

    --pattern "{text} Is it good? [MASK]"      {field}: a text field of the task file, [MASK]: the blank
    --verbalizer "0=no,1=yes"                  label=word for every label, in label order

A multiple choice (--task multiple-choice) takes --pattern alone: each example's choices are the
candidates written into the blank, and the right one's index is the label.

This module reads and checks the options (nothing here knows a model); a stack family that can
score words in a blank brings the task recipe that does it (its stack's `cloze_recipe`: GLM's
`glm-cloze`), which takes the options `pattern`, `words` (the word of each label, in label order),
`multi_token` and `choices` (True for a multiple choice).
"""
from __future__ import annotations

import dataclasses
import string

from ..errors import LmkitError

BLANK = "[MASK]"  # what a pattern writes for the blank; the recipe reads it as its model's mask token
MULTI_TOKEN = ("sum", "mean")  # how a word of several tokens is scored: its tokens' log-probabilities summed or averaged


def pattern_fields(pattern: str) -> tuple[str, ...]:
    """The text fields a pattern reads, in the order they first appear; a one-line error for a bad pattern."""
    try:
        parts = list(string.Formatter().parse(pattern))
    except ValueError as error:
        raise LmkitError(f"--pattern {pattern!r} is not a pattern ({error}); write the fields as {{text}} and a "
                         "literal brace as {{ or }}") from None
    fields = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name or name.isdigit() or spec or conversion or not name.replace("_", "").replace("-", "").isalnum():
            raise LmkitError(f"--pattern {pattern!r}: {{{name}{'!' + conversion if conversion else ''}"
                             f"{':' + spec if spec else ''}}} is not a field; name a text field of the task file, "
                             "e.g. {text} or {premise}")
        if name not in fields:
            fields.append(name)
    literal = "".join(text for text, *_ in parts)
    blanks = literal.count(BLANK)
    if blanks != 1:
        raise LmkitError(f"--pattern {pattern!r} has {'no' if not blanks else blanks} {BLANK}; a cloze pattern holds "
                         f"exactly one {BLANK}, where the label's word goes (e.g. \"{{text}} Is it good? {BLANK}\")")
    if not fields:
        raise LmkitError(f"--pattern {pattern!r} reads no text; name the text field(s) of the task file in braces, "
                         "e.g. \"{text} Is it good? [MASK]\"")
    return tuple(fields)


def pieces(pattern: str) -> list[tuple[str, str | None]]:
    """The pattern as (literal text, the field after it or None), in order."""
    return [(text, name) for text, name, _, _ in string.Formatter().parse(pattern)]


def parse_verbalizer(text: str) -> dict[str, str]:
    """'0=no,1=yes' -> {'0': 'no', '1': 'yes'}, in the order given; a one-line error for a bad one."""
    words: dict[str, str] = {}
    for item in text.split(","):
        label, equals, word = item.partition("=")
        label, word = label.strip(), word.strip()
        if not equals or not label or not word:
            raise LmkitError(f"--verbalizer {text!r}: {item.strip()!r} is not label=word; write each label and its "
                             "word, comma-separated, e.g. \"0=no,1=yes\"")
        if label in words:
            raise LmkitError(f"--verbalizer {text!r} gives label {label!r} twice; give each label one word")
        words[label] = word
    repeated = sorted({w for w in words.values() if list(words.values()).count(w) > 1})
    if repeated:
        raise LmkitError(f"--verbalizer {text!r} gives the word {repeated[0]!r} to several labels, which the model "
                         "then cannot tell apart; give each label its own word")
    return words


def cloze_task_options(options):
    """TaskOptions (lmkit.tasks.finetune) of a cloze run, checked: the pattern's fields become the text fields
    and the verbalizer's labels the label set (its order the label order), unless --labels declares it. A
    multiple-choice run has no verbalizer: each example's choices are written into the blank in turn."""
    if options.kind == "multiple-choice":
        if options.pattern is None:
            raise LmkitError("fine-tuning a multiple choice as cloze needs --pattern, e.g. --pattern "
                             "\"{context} [MASK]\" (each choice is written into the [MASK])")
        if options.verbalizer:
            raise LmkitError("--verbalizer gives each label a word; a multiple choice writes each example's own "
                             "choices into the blank: leave --verbalizer out")
        if options.labels:
            raise LmkitError("--labels names a classifier's labels; a multiple choice's label is the index of the "
                             "right choice: leave --labels out")
        if options.multi_token is not None and options.multi_token not in MULTI_TOKEN:
            raise LmkitError(f"--multi-token {options.multi_token!r} is not one of {', '.join(MULTI_TOKEN)}")
        fields = pattern_fields(options.pattern)
        if options.text_fields and tuple(options.text_fields) != fields:
            raise LmkitError(f"--text-fields {','.join(options.text_fields)} and the pattern's fields "
                             f"{','.join(fields)} differ; the pattern names the fields it reads: leave --text-fields "
                             "out")
        return dataclasses.replace(options, text_fields=fields)
    if options.pattern is None or not options.verbalizer:
        missing = "--verbalizer" if options.pattern is not None else "--pattern"
        raise LmkitError(f"fine-tuning as cloze needs both --pattern and --verbalizer; {missing} is missing "
                         "(e.g. --pattern \"{text} Is it good? [MASK]\" --verbalizer \"0=no,1=yes\")")
    if options.kind != "classification":
        raise LmkitError(f"--pattern and --verbalizer fine-tune a classification (or, --pattern alone, a multiple "
                         f"choice) as cloze; --task {options.kind} is not one of them: leave them out, or give --task "
                         "classification")
    fields = pattern_fields(options.pattern)
    if options.text_fields and tuple(options.text_fields) != fields:
        raise LmkitError(f"--text-fields {','.join(options.text_fields)} and the pattern's fields "
                         f"{','.join(fields)} differ; the pattern names the fields it reads: leave --text-fields out")
    words = parse_verbalizer(options.verbalizer)
    if options.labels:
        missing = [label for label in options.labels if label not in words]
        if missing:
            raise LmkitError(f"--verbalizer has no word for label {missing[0]!r}; give every label of --labels a "
                             f"word (label=word)")
        unknown = [label for label in words if label not in options.labels]
        if unknown:
            raise LmkitError(f"--verbalizer names label {unknown[0]!r}, which is not among --labels "
                             f"({', '.join(options.labels)}); leave it out or declare it")
    if len(words) < 2:
        raise LmkitError(f"--verbalizer {options.verbalizer!r} names one label; a classifier needs at "
                         "least two")
    if options.multi_token is not None and options.multi_token not in MULTI_TOKEN:
        raise LmkitError(f"--multi-token {options.multi_token!r} is not one of {', '.join(MULTI_TOKEN)}")
    return dataclasses.replace(options, text_fields=fields, labels=tuple(options.labels) or tuple(words))


def recipe_options(options, labels: tuple[str, ...]) -> dict:
    """The options a cloze recipe is built with: the pattern, each label's word in label order, multi_token; a
    multiple choice has no words (its choices are the candidates) and is scored by the sum unless told (THUDM/GLM's
    multi-token cloze, length penalty 0)."""
    if options.kind == "multiple-choice":
        return {"pattern": options.pattern, "words": [], "multi_token": options.multi_token or "sum",
                "choices": True}
    words = parse_verbalizer(options.verbalizer)
    return {"pattern": options.pattern, "words": [words[label] for label in labels],
            "multi_token": options.multi_token}
