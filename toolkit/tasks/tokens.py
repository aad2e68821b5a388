"""Token classification (NER, POS, chunking): CoNLL files and word-to-subword labels (entity-level F1:
chunks.py).

A CoNLL file has one word per line with its columns separated by whitespace (the word first, the
tag in `--tag-column`, the last by default) and a blank line between sentences; `-DOCSTART-` lines
are skipped. A word's tag goes to its first subword token in an encoder, as in BERT's NER
experiments (§5.3), and to its last in a left-to-right decoder, the first token that has read the
whole word; the other subwords, and special tokens, are not scored (label -100).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from ..data import read_text
from ..errors import DataError


@dataclass(frozen=True)
class TaggedSentence:
    words: tuple[str, ...]
    tags: tuple[int, ...]  # indices into the tag names


@dataclass
class TaggedData:
    kind: str
    examples: list[TaggedSentence]
    labels: tuple[str, ...]  # tag names
    path: str
    lines: tuple[int, ...] = ()  # the file line (1-based) of each sentence's first word


def read_conll(path: str, *, tag_column: int = -1, labels: tuple[str, ...] = (),
               require_labels: bool = True) -> TaggedData:
    """Sentences of a CoNLL file; `labels` declares the tag set (else: the file's own, sorted).

    With require_labels=False (prediction) a file of words alone is read too; its tags are -1.
    """
    if not os.path.isfile(path):
        raise DataError(f"task file {path} does not exist")
    if path.endswith((".jsonl", ".json")):  # read as CoNLL, a record's last word became its "tag" (a trial's)
        raise DataError(f"{path} is JSON; token classification reads CoNLL files: a word and its tag per line, "
                        "a blank line between sentences")
    sentences, words, tags, width = [], [], [], None
    with io.StringIO(read_text(path)) as handle:
        for number, line in enumerate(handle, 1):
            columns = line.split()
            if not columns or columns[0] == "-DOCSTART-":
                if words:
                    sentences.append((tuple(words), tuple(tags), number))
                words, tags = [], []
                continue
            if width is None:
                width = len(columns)
                if width < 2 and require_labels:
                    raise DataError(f"{path} line {number} has one column; CoNLL lines hold a word and its tag")
            if len(columns) != width:
                raise DataError(f"{path} line {number} has {len(columns)} columns, the lines before have {width}; "
                                "token classification reads CoNLL files, a word and its tag on every line and a "
                                "blank line between sentences")
            try:
                tag = columns[tag_column] if width > 1 else None
            except IndexError:
                raise DataError(f"{path}: --tag-column {tag_column} is beyond the {width} columns") from None
            words.append(columns[0])
            tags.append((tag, number))
    if words:
        sentences.append((tuple(words), tuple(tags), None))
    if not sentences:
        raise DataError(f"{path} holds no sentences")
    names = tuple(labels) or tuple(sorted({tag for _, tags, _ in sentences for tag, _ in tags if tag is not None}))
    index = {name: i for i, name in enumerate(names)}
    examples = []
    for words, tags, _ in sentences:
        for tag, number in tags:
            if tag is not None and tag not in index:
                advice = ("fix it or declare it with --labels" if require_labels else
                          "the model was fine-tuned on those; fix the tag, or leave the tags out to predict alone")
                raise DataError(f'{path} line {number}: tag "{tag}" is not one of the declared tags '
                                f'({", ".join(names)}); {advice}')
        examples.append(TaggedSentence(words, tuple(-1 if tag is None else index[tag] for tag, _ in tags)))
    return TaggedData("token-classification", examples, names, path,
                      tuple(tags[0][1] for _, tags, _ in sentences))


@dataclass
class EncodedSentence:
    ids: list[int]
    token_types: list[int]
    labels: list[int]  # per token: the word's tag at its first subword, else -100
    words: int  # words kept (the others were cut to fit)
    spellings: list[str] | None = None  # per token, what it spells (lmkit.token_inputs.spell)


def encode_sentences(data: TaggedData, tokenizer, max_length: int, *, encoder: bool):
    """Each sentence as token ids with per-token labels, and how many sentences lost words to fit.

    Every word gets exactly one scored position, however many tokens it yields: a word that yields
    none (only a zero-width space, say, which the normalizer removes) is read as the unknown token,
    so that it keeps its place and the words after it keep their tags. Only --max-length drops
    words, from the end; `EncodedSentence.words` counts those kept. DataError when a word yields
    no tokens and the tokenizer has no unknown token to stand for it.
    """
    from tokenizers import Tokenizer as HFTokenizer

    from ..token_inputs import spell
    from .inputs import refuse_reversed

    refuse_reversed(tokenizer, "token classification (tags aligned to words)")
    truncating = HFTokenizer.from_str(tokenizer.hf_tokenizer.to_str())
    truncating.enable_truncation(max_length)
    stand_in = _unknown_word(tokenizer)
    encoded, cut = [], 0
    for sentence in data.examples:
        words = list(sentence.words)
        encoding = tokenizer.hf_tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False)
        empty = set(range(len(words))) - set(encoding.word_ids)
        if empty:
            if stand_in is None:
                word = words[min(empty)]
                raise DataError(f"{data.path}: the word {word!r} yields no tokens and the tokenizer has no unknown "
                                "token to stand for it; remove the word or use a tokenizer with one")
            words = [stand_in if i in empty else word for i, word in enumerate(words)]
        encoding = truncating.encode(words, is_pretokenized=True, add_special_tokens=encoder)
        word_ids = encoding.word_ids
        labels = []
        for i, word in enumerate(word_ids):
            neighbour = word_ids[i - 1] if encoder else (word_ids[i + 1] if i + 1 < len(word_ids) else None)
            scored = word is not None and (word != neighbour or (encoder and i == 0))
            labels.append(sentence.tags[word] if scored else -100)
        kept = len({w for w in word_ids if w is not None})
        cut += kept < len(sentence.words)
        spelled = spell(tokenizer, encoding, words, pretokenized=True)
        encoded.append(EncodedSentence(list(encoding.ids), list(encoding.type_ids), labels, kept, spelled))
    return encoded, cut


def _unknown_word(tokenizer) -> str | None:
    """The unknown token's text, if it reads back as that one token when given as a word; else None."""
    unk = tokenizer.special_tokens.get("unk")
    if unk is None:
        return None
    ids = tokenizer.hf_tokenizer.encode([unk], is_pretokenized=True, add_special_tokens=False).ids
    return unk if ids == [tokenizer.unk_id] else None


def collate_sentences(sentences: list[EncodedSentence], pad_id: int, token_inputs: dict | None = None
                      ) -> dict[str, np.ndarray]:
    """(B, T) ids, mask, segment ids, tag labels and LM labels, padded on the right; with token_inputs, the
    stack's per-token inputs from the spellings (lmkit.token_inputs)."""
    from ..token_inputs import batch_inputs

    B, T = len(sentences), max(len(s.ids) for s in sentences)
    input_ids = np.full((B, T), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((B, T), dtype=np.int64)
    attention_mask = np.zeros((B, T), dtype=bool)
    labels = np.full((B, T), -100, dtype=np.int64)
    for b, sentence in enumerate(sentences):
        n = len(sentence.ids)
        input_ids[b, :n], token_type_ids[b, :n] = sentence.ids, sentence.token_types
        attention_mask[b, :n], labels[b, :n] = True, sentence.labels
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            "labels": labels, "lm_labels": np.where(attention_mask, input_ids, -100),
            **batch_inputs(token_inputs, [s.spellings for s in sentences], T)}
