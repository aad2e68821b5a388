"""Entities (chunks) from tag sequences, in every common tag scheme, and entity-level precision, recall, F1.

Two ways to read a tag sequence, both as seqeval (github.com/chakki-works/seqeval) computes them:

- `conlleval` (seqeval's default mode): the chunking of CoNLL-2000's conlleval script, which reads
  IOB1, IOB2, IOE and IOBES leniently: an I- after O or after another type starts an entity, an E-
  or S- ends one. This is what CoNLL-2003 results (BERT §5.3 included) are computed with.
- a strict scheme, `iob1`, `iob2`, `ioe1`, `ioe2`, `iobes` or `bilou` (seqeval's `mode="strict"`
  with that scheme): only an entity that the scheme spells out correctly counts, so a predicted
  `I-PER` with no `B-PER` before it is no entity in IOB2.

`auto` picks from the label set: plain B/I/O tags are read as conlleval does; tags with E-, S-
(IOBES, IOE) or L-, U- (BILOU) are read strictly in the scheme they spell. Labels that are not
chunk tags at all (POS tags: NN, VB) have no entities: `none`, and only token accuracy is reported.
"""
from __future__ import annotations

import re

from ..errors import LmkitError

STRICT = ("iob1", "iob2", "ioe1", "ioe2", "iobes", "bilou")
SCHEMES = ("auto", "conlleval", *STRICT, "none")
_CHUNK_TAG = re.compile(r"^(O|[BIESLU]-.+)$")

# -- conlleval (seqeval's default get_entities) ------------------------------------------------------


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (prev_tag in ("E", "S")
            or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (tag in ("B", "S")
            or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def conlleval_entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) spans, end exclusive, as conlleval (and seqeval's default mode) chunks them."""
    spans, prev_tag, prev_type, begin = set(), "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _ends(prev_tag, tag, prev_type, type_):
            spans.add((prev_type, begin, i))
        if _starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return spans


# -- strict schemes (seqeval's mode="strict") -----------------------------------------------------------

ANY, SAME, DIFF = "*", "same", "diff"
# Per scheme: its prefixes, and (previous prefixes, current prefixes, type condition) patterns for a
# token that starts an entity, continues one, and (as the token after it) ends one: seqeval.scheme.
_P = "IOBESUL"
_SCHEMES = {
    "iob1": ("IOB",
             {("O", "I", ANY), ("I", "I", DIFF), ("B", "I", ANY), ("I", "B", SAME), ("B", "B", SAME)},
             {("B", "I", SAME), ("I", "I", SAME)},
             {("I", "I", DIFF), ("I", "O", ANY), ("I", "B", ANY), ("B", "O", ANY), ("B", "I", DIFF),
              ("B", "B", SAME)}),
    "ioe1": ("IOE",
             {("O", "I", ANY), ("I", "I", DIFF), ("E", "I", ANY), ("E", "E", SAME)},
             {("I", "I", SAME), ("I", "E", SAME)},
             {("I", "I", DIFF), ("I", "O", ANY), ("I", "E", DIFF), ("E", "I", SAME), ("E", "E", SAME)}),
    "iob2": ("IOB",
             {(_P, "B", ANY)},
             {("B", "I", SAME), ("I", "I", SAME)},
             {("I", "O", ANY), ("I", "I", DIFF), ("I", "B", ANY), ("B", "O", ANY), ("B", "I", DIFF),
              ("B", "B", ANY)}),
    "ioe2": ("IOE",
             {("O", "I", ANY), ("O", "E", ANY), ("E", "I", ANY), ("E", "E", ANY), ("I", "I", DIFF),
              ("I", "E", DIFF)},
             {("I", "E", SAME), ("I", "I", SAME)},
             {("E", _P, ANY)}),
    "iobes": ("IOBES",
              {(_P, "B", ANY), (_P, "S", ANY)},
              {("B", "I", SAME), ("B", "E", SAME), ("I", "I", SAME), ("I", "E", SAME)},
              {("S", _P, ANY), ("E", _P, ANY)}),
    "bilou": ("BILOU",
              {(_P, "B", ANY), (_P, "U", ANY)},
              {("B", "I", SAME), ("B", "L", SAME), ("I", "I", SAME), ("I", "L", SAME)},
              {("U", _P, ANY), ("L", _P, ANY)}),
}


def _token(tag: str) -> tuple[str, str]:
    return tag[0], tag[1:].strip("-") or "_"


def _matches(prev: tuple[str, str], token: tuple[str, str], patterns) -> bool:
    return any(prev[0] in before and token[0] in now
               and (condition == ANY or (prev[1] == token[1]) == (condition == SAME))
               for before, now, condition in patterns)


def strict_entities(tags: list[str], scheme: str) -> set[tuple[str, int, int]]:
    """(type, start, end) spans, end exclusive, of the entities `scheme` spells out correctly."""
    allowed, starts, insides, ends = _SCHEMES[scheme]
    tokens = [_token(tag) for tag in tags] + [("O", "_")]
    for tag, (prefix, _) in zip(tags, tokens):
        if prefix not in allowed:
            raise LmkitError(f"tag '{tag}' is not a {scheme.upper()} tag (prefixes {', '.join(allowed)}); "
                             f"choose the scheme the tags are in with --tag-scheme ({', '.join(SCHEMES)})")
    spans, i, prev = set(), 0, ("O", "_")
    while i < len(tokens):
        token = tokens[i]
        if _matches(prev, token, starts):
            end, inside = i + 1, token
            while end < len(tokens) and _matches(inside, tokens[end], insides):
                inside, end = tokens[end], end + 1
            if _matches(tokens[end - 1], tokens[end], ends):
                spans.add((token[1], i, end))
            i = end
        else:
            i += 1
        prev = tokens[i - 1]
    return spans


# -- which scheme, and the metric ---------------------------------------------------------------------


def detect_scheme(labels) -> str:
    """The reading `auto` stands for, from the tag names (see the module docstring)."""
    if not labels or not all(_CHUNK_TAG.match(label) for label in labels):
        return "none"
    prefixes = {label[0] for label in labels} - {"O"}
    if not prefixes:
        return "none"
    for scheme, letters in (("conlleval", "BI"), ("ioe2", "IE"), ("iobes", "BIES"), ("bilou", "BILU")):
        if prefixes <= set(letters):
            return scheme
    raise LmkitError(f"the tags mix the prefixes {', '.join(sorted(prefixes))} of different schemes; name the "
                     f"scheme with --tag-scheme ({', '.join(SCHEMES)})")


def resolve_scheme(scheme: str, labels) -> str:
    """`scheme` as given (auto: detected), checked against the tag names."""
    if scheme not in SCHEMES:
        raise LmkitError(f"unknown --tag-scheme '{scheme}'; choose one of {', '.join(SCHEMES)}")
    if scheme == "auto":
        return detect_scheme(labels)
    if scheme in STRICT:
        strict_entities([label for label in labels if _CHUNK_TAG.match(label)], scheme)  # its prefixes
        bad = [label for label in labels if not _CHUNK_TAG.match(label)]
        if bad:
            raise LmkitError(f"tag '{bad[0]}' is not a chunk tag (O, or a prefix and a type such as B-PER); "
                             "use --tag-scheme none for tags without entities")
    return scheme


def entities(tags: list[str], scheme: str = "conlleval") -> set[tuple[str, int, int]]:
    return conlleval_entities(tags) if scheme == "conlleval" else strict_entities(tags, scheme)


def entity_f1(predicted: list[list[str]], gold: list[list[str]], scheme: str = "conlleval") -> dict[str, float]:
    """Micro-averaged precision, recall and F1 over exact (type, start, end) entities, summed over
    sentences: seqeval's precision_score, recall_score and f1_score (0.0 where a ratio is 0/0)."""
    found = correct = wanted = 0
    for p, g in zip(predicted, gold):
        p_spans, g_spans = entities(p, scheme), entities(g, scheme)
        found, wanted, correct = found + len(p_spans), wanted + len(g_spans), correct + len(p_spans & g_spans)
    precision = correct / found if found else 0.0
    recall = correct / wanted if wanted else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_f1": f1, "entity_precision": precision, "entity_recall": recall}
