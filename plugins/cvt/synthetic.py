"""A synthetic tagging task whose tags are computable from context, for CVT's tests and benchmark (torch-free).

Sentences mix filler words with entities of one or two words drawn from a large pool of made-up
names; an entity's type is given only by the trigger word before it ("mr" PER, "in" LOC, "at" ORG)
and a filler after it, never by the name itself (every name appears with every type). Tagging a
name the labelled sentences never showed needs its context, which is what CVT's unlabelled
sentences teach the auxiliary views and, through the shared encoder, the primary module.
"""
from __future__ import annotations

import random

TRIGGERS = {"mr": "PER", "in": "LOC", "at": "ORG"}
FILLER = ("the", "a", "said", "went", "saw", "and", "then", "today", "we", "they", "met", "with", "of", "to", "was")


# A part-of-speech-like second task over the same sentences (multi-task CVT): names are N, whether entities or not.
POS = {"the": "D", "a": "D", "said": "V", "went": "V", "saw": "V", "met": "V", "was": "V", "and": "C", "then": "C",
       "today": "R", "we": "PR", "they": "PR", "with": "P", "of": "P", "to": "P", "in": "P", "at": "P", "mr": "T"}


def pos_tags(words: list[str]) -> list[str]:
    return [POS.get(word, "N") for word in words]


def names(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    letters = "bcdfghjklmnprstvz"
    vowels = "aeiou"
    made = set()
    while len(made) < count:
        made.add("".join(rng.choice(letters) + rng.choice(vowels) for _ in range(rng.randint(2, 3))))
    return sorted(made)


def name_type(name: str) -> str:
    """The type a name always has when `bare` mentions are on (PER, LOC or ORG, fixed by its spelling)."""
    return sorted(set(TRIGGERS.values()))[sum(map(ord, name)) % 3]


def sentence(rng: random.Random, pool: list[str], scheme: str = "BIO", distractors: float = 0.0,
             bare: float = 0.0) -> tuple[list[str], list[str]]:
    """One sentence: (words, tags) with 1-3 entities, tags in BIO or BIOES. With probability `distractors` a
    filler after the first of a run is a name from the pool tagged O: a name alone does not make an entity.
    With `bare` > 0 every name has one type (name_type) that its trigger agrees with, and with probability
    `bare` a mention comes without its trigger: its type is then known only from other mentions of the name."""
    words, tags = [], []
    for _ in range(rng.randint(1, 3)):
        for i in range(rng.randint(1, 3)):
            # never right after an entity, where a name would read as its next word
            words.append(rng.choice(pool) if i and distractors and rng.random() < distractors else rng.choice(FILLER))
            tags.append("O")
        if bare:
            first = rng.choice(pool)
            kind = name_type(first)
            if rng.random() >= bare:
                words.append(next(t for t, k in TRIGGERS.items() if k == kind))
                tags.append("O")
        else:
            first = None
            trigger = rng.choice(sorted(TRIGGERS))
            words.append(trigger)
            tags.append("O")
            kind = TRIGGERS[trigger]
        length = rng.randint(1, 2)
        for i in range(length):
            words.append(first if i == 0 and first is not None else rng.choice(pool))
            if scheme == "BIOES":
                tags.append(("S-" if length == 1 else "B-" if i == 0 else "E-") + kind)
            else:
                tags.append(("B-" if i == 0 else "I-") + kind)
    words.append(rng.choice(FILLER))
    tags.append("O")
    return words, tags


def write_task(directory: str, *, labelled: int = 300, unlabeled: int = 20000, dev: int = 200, n_names: int = 2000,
               seen_names: int = 100, seed: int = 0, scheme: str = "BIO", held_out: int = 0,
               distractors: float = 0.0, task: str = "ner", bare: float = 0.0) -> dict[str, str]:
    """train.conll (names from a small seen pool), dev.conll (names from the whole pool) and raw.txt (names from
    the pool less its last `held_out`, which only dev sentences use: names no text the model reads has shown).
    task "pos" tags the words with POS's classes in place of entities."""
    import os

    if not 0 <= held_out <= n_names - seen_names:
        raise ValueError(f"held_out must be in [0, n_names - seen_names], got {held_out}")
    rng = random.Random(seed)
    pool = names(n_names, seed)
    seen, readable = pool[:seen_names], pool[:n_names - held_out]
    files = {"train": os.path.join(directory, "train.conll"), "dev": os.path.join(directory, "dev.conll"),
             "unlabeled": os.path.join(directory, "raw.txt")}
    for name, count, from_pool in (("train", labelled, seen), ("dev", dev, pool)):
        with open(files[name], "w", encoding="utf-8") as handle:
            for _ in range(count):
                words, tags = sentence(rng, from_pool, scheme, distractors, bare)
                if task == "pos":
                    tags = pos_tags(words)
                handle.write("".join(f"{w} {t}\n" for w, t in zip(words, tags)) + "\n")
    with open(files["unlabeled"], "w", encoding="utf-8") as handle:
        for _ in range(unlabeled):
            handle.write(" ".join(sentence(rng, readable, scheme, distractors, bare)[0]) + "\n")
    return files
