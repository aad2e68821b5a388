"""A synthetic corpus of two attributes and the word-count classifier that tells them apart, to measure
how often generations with a prefix carry its attribute (tests/test_prefixes.py, benchmarks/bench_prefixes.py).

Every text is a few clauses "the NOUN is [very] ADJECTIVE", joined by "and"; a text's adjectives all
come from its attribute's set, the rest of its words are shared. A causal LM trained on both halves
continues "the movie is" with either set about half the time; the classifier labels a text by which
set most of its adjectives come from (None when neither, or a tie).
"""
from __future__ import annotations

import random

NOUNS = ["movie", "film", "plot", "story", "actor", "scene", "music", "ending"]
ADJECTIVES = {
    "positive": ["great", "wonderful", "superb", "lovely", "brilliant", "charming"],
    "negative": ["awful", "boring", "terrible", "dull", "dreadful", "tedious"],
}


def make_text(rng: random.Random, attribute: str) -> str:
    clauses = []
    for _ in range(rng.randint(2, 4)):
        very = "very " if rng.random() < 0.3 else ""
        clauses.append(f"the {rng.choice(NOUNS)} is {very}{rng.choice(ADJECTIVES[attribute])}")
    return " and ".join(clauses)


def make_corpus(n_per_attribute: int, seed: int = 0) -> dict[str, list[str]]:
    """{attribute: texts}, n_per_attribute texts of each of the two attributes."""
    rng = random.Random(seed)
    return {attribute: [make_text(rng, attribute) for _ in range(n_per_attribute)] for attribute in ADJECTIVES}


def classify(text: str) -> str | None:
    """The attribute most of the text's adjectives belong to; None when it has none, or as many of each."""
    counts = {attribute: sum(word in words for word in text.split()) for attribute, words in ADJECTIVES.items()}
    best = max(counts, key=counts.get)
    if counts[best] == 0 or list(counts.values()).count(counts[best]) > 1:
        return None
    return best


def attribute_rate(texts: list[str], attribute: str) -> float:
    """The share of `texts` the classifier labels `attribute`."""
    return sum(classify(text) == attribute for text in texts) / len(texts)
