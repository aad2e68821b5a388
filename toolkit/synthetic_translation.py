"""A synthetic translation task where attention, beam search and source reversal all matter.

The source language is English-like, subject-verb-object: "the big cat sees the dogs". The target
language is a deterministic translation of it that
  - reorders: adjectives follow their noun, and the verb goes to the end of its clause (SOV), past
    the object, so the alignment crosses;
  - agrees: each target noun has a gender (from the lexicon, invisible in the source); its
    determiner and adjective take the gender and number endings of the noun, and the verb takes the
    number of the subject, which may be several words back;
  - has one made-up word per source word, so nothing can be copied.
"the big cat sees the dogs" -> "lo miruko fasto dos bi gunesen lo runo": a system has to look up
words, move them and inflect them. Clauses join with "and" ("e"), so sentences grow long: a model
that squeezes a sentence into one vector (Seq2Seq without attention) falls behind on long ones.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

NOUNS = ("cat", "dog", "bird", "fish", "horse", "king", "queen", "child", "farmer", "teacher",
         "house", "tree", "river", "stone", "apple", "book", "ship", "city", "garden", "wolf")
ADJECTIVES = ("big", "small", "red", "old", "young", "happy", "quiet", "green", "fast", "dark")
VERBS = ("see", "like", "follow", "find", "help", "watch", "know", "carry", "paint", "call")

_SYLLABLES = ("ka", "lo", "mi", "ru", "te", "si", "no", "ga", "fa", "bo", "ne", "du", "pe", "vi", "zo",
              "ha", "ri", "mu", "ke", "sa", "to", "li", "wa", "de")


def _made_up_words(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words: set[str] = set()
    out = []
    while len(out) < count:
        word = "".join(rng.choice(_SYLLABLES, size=2))
        if word not in words:
            words.add(word)
            out.append(word)
    return out


@dataclass(frozen=True)
class TranslationTask:
    """The lexicon of the two languages; `pairs` draws sentence pairs from it."""

    seed: int = 0
    # How much of the lexicon to use: fewer words make a task a tiny model learns in seconds.
    nouns: int = len(NOUNS)
    adjectives: int = len(ADJECTIVES)
    verbs: int = len(VERBS)

    def __post_init__(self):
        if not (1 <= self.nouns <= len(NOUNS) and 1 <= self.adjectives <= len(ADJECTIVES)
                and 1 <= self.verbs <= len(VERBS)):
            raise ValueError(f"the lexicon has {len(NOUNS)} nouns, {len(ADJECTIVES)} adjectives and {len(VERBS)} verbs")
        words = _made_up_words(len(NOUNS) + len(ADJECTIVES) + len(VERBS), self.seed)
        nouns = words[:len(NOUNS)]
        adjectives = words[len(NOUNS):len(NOUNS) + len(ADJECTIVES)]
        verbs = words[len(NOUNS) + len(ADJECTIVES):]
        rng = np.random.default_rng(self.seed + 1)
        object.__setattr__(self, "noun", dict(zip(NOUNS, nouns)))
        object.__setattr__(self, "gender", dict(zip(NOUNS, rng.integers(0, 2, len(NOUNS)).tolist())))
        object.__setattr__(self, "adjective", dict(zip(ADJECTIVES, adjectives)))
        object.__setattr__(self, "verb", dict(zip(VERBS, verbs)))

    # -- one clause ----------------------------------------------------------------------------------

    def _noun_phrase(self, rng) -> tuple[str, bool, str | None]:
        noun = NOUNS[rng.integers(self.nouns)]
        plural = bool(rng.random() < 0.4)
        adjective = ADJECTIVES[rng.integers(self.adjectives)] if rng.random() < 0.5 else None
        return noun, plural, adjective

    def _source_np(self, phrase) -> list[str]:
        noun, plural, adjective = phrase
        return ["the"] + ([adjective] if adjective else []) + [noun + ("s" if plural else "")]

    def _target_np(self, phrase) -> list[str]:
        noun, plural, adjective = phrase
        gender = self.gender[noun]
        determiner = (("lo", "la"), ("los", "las"))[plural][gender]
        words = [determiner, self.noun[noun] + ("sen" if plural else "")]
        if adjective:  # the adjective follows the noun and agrees with it in gender and number
            words.append(self.adjective[adjective] + ("o", "a")[gender] + ("s" if plural else ""))
        return words

    def clause(self, rng) -> tuple[list[str], list[str]]:
        subject, obj = self._noun_phrase(rng), self._noun_phrase(rng)
        verb = VERBS[rng.integers(self.verbs)]
        source = self._source_np(subject) + [verb + ("" if subject[1] else "s")] + self._source_np(obj)
        # SOV: the verb ends the clause and agrees with the subject's number.
        target = self._target_np(subject) + self._target_np(obj) + [self.verb[verb] + ("n" if subject[1] else "t")]
        return source, target

    def pairs(self, count: int, seed: int, clauses: tuple[int, int] = (1, 2)) -> list[tuple[str, str]]:
        """`count` (source, target) sentence pairs of clauses[0] to clauses[1] clauses each."""
        rng = np.random.default_rng([self.seed, seed])
        out = []
        for _ in range(count):
            source, target = [], []
            for k in range(int(rng.integers(clauses[0], clauses[1] + 1))):
                s, t = self.clause(rng)
                if k:
                    source.append("and")
                    target.append("e")
                source += s
                target += t
            out.append((" ".join(source), " ".join(target)))
        return out


def write_task(directory: str, n_train: int = 4000, n_valid: int = 200, clauses: tuple[int, int] = (1, 2),
               seed: int = 0, task: TranslationTask | None = None) -> dict:
    """train.src/train.tgt and valid.src/valid.tgt (one sentence per line) in `directory`."""
    task = task or TranslationTask(seed)
    os.makedirs(directory, exist_ok=True)
    files = {}
    for split, count, offset in (("train", n_train, 0), ("valid", n_valid, 1)):
        pairs = task.pairs(count, seed=offset, clauses=clauses)
        for side, index in (("src", 0), ("tgt", 1)):
            path = os.path.join(directory, f"{split}.{side}")
            with open(path, "w", encoding="utf-8") as out:
                out.writelines(pair[index] + "\n" for pair in pairs)
            files[f"{split}.{side}"] = path
    return files
