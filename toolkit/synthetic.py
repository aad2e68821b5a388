"""A text source whose true entropy is known, to check what a trained model has learnt.

Documents are walks of a random first-order Markov chain over words, ending when the chain moves
to an end-of-document state: made-up words (MarkovSource.random), or real English words whose
successors follow a small grammar, so that a sample reads like (simple) language
(MarkovSource.english). Because text is a one-to-one function of the word sequence,
the exact negative log-likelihood of any held-out document under the true chain is the floor that
no model can beat on average, whatever its tokenizer: a model's perplexity per token is compared
with exp(true NLL / the model's token count) over the same text.
"""
from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass

import numpy as np

# The words of MarkovSource.english by class, and which classes may follow each ("." ends a sentence).
ENGLISH = {
    "article": "the a this every",
    "adjective": "old small green quiet bright cold happy little",
    "noun": "cat dog bird river garden house child teacher city road tree window",
    "verb": "sees finds likes follows watches crosses opens reaches",
    "preposition": "near under behind across",
    "conjunction": "and but",
    "pronoun": "she he it",
    "stop": ".",
}
FOLLOWS = {
    "article": ("adjective", "noun"),
    "adjective": ("adjective", "noun"),
    "noun": ("verb", "preposition", "conjunction", "stop"),
    "verb": ("article", "preposition"),
    "preposition": ("article",),
    "conjunction": ("article", "pronoun"),
    "pronoun": ("verb",),
    "stop": ("article", "pronoun"),
}


@dataclass(frozen=True)
class MarkovSource:
    words: tuple[str, ...]
    start: np.ndarray  # (V,) probability of each first word
    transitions: np.ndarray  # (V, V + 1) next word, or the end of the document in the last column

    @classmethod
    def random(cls, n_words: int = 48, branching: int = 4, mean_length: int = 40,
               seed: int = 0) -> MarkovSource:
        """A chain where each word has `branching` likely successors, so there is structure to learn."""
        if n_words < 2 or not 1 <= branching <= n_words or mean_length < 1:
            raise ValueError("need n_words >= 2, 1 <= branching <= n_words and mean_length >= 1")
        rng = np.random.default_rng(seed)
        words: set[str] = set()
        while len(words) < n_words:
            words.add("".join(rng.choice(list(string.ascii_lowercase), size=rng.integers(2, 7))))
        transitions = np.zeros((n_words, n_words + 1))
        for word in range(n_words):
            successors = rng.choice(n_words, size=branching, replace=False)
            transitions[word, successors] = rng.dirichlet(np.ones(branching))
        end = 1.0 / mean_length  # the length of a document is geometric with this mean
        transitions[:, :n_words] *= 1.0 - end
        transitions[:, n_words] = end
        start = rng.dirichlet(np.ones(n_words))
        return cls(tuple(sorted(words)), start, transitions)

    @classmethod
    def english(cls, branching: int = 4, mean_length: int = 40, seed: int = 0) -> MarkovSource:
        """A chain over 48 real English words: each word's `branching` likely successors are drawn from the
        word classes that may follow it (an article before an adjective or a noun, a verb after a noun,
        ...), so walks read like simple sentences. It is still a first-order chain: its entropy is exact."""
        if branching < 1 or mean_length < 1:
            raise ValueError("need branching >= 1 and mean_length >= 1")
        rng = np.random.default_rng(seed)
        classes = {name: words.split() for name, words in ENGLISH.items()}
        words = [w for name in classes for w in classes[name]]
        index = {w: i for i, w in enumerate(words)}
        n = len(words)
        transitions = np.zeros((n, n + 1))
        for name, members in classes.items():
            allowed = [index[w] for follower in FOLLOWS[name] for w in classes[follower]]
            for word in members:
                successors = rng.choice(allowed, size=min(branching, len(allowed)), replace=False)
                transitions[index[word], successors] = rng.dirichlet(np.ones(len(successors)))
        end = 1.0 / mean_length
        transitions[:, :n] *= 1.0 - end
        transitions[:, n] = end
        # Documents open as sentences do: with an article or a pronoun.
        openers = [index[w] for name in ("article", "pronoun") for w in classes[name]]
        start = np.zeros(n)
        start[openers] = rng.dirichlet(np.ones(len(openers)))
        return cls(tuple(words), start, transitions)

    @property
    def n_words(self) -> int:
        return len(self.words)

    def sample(self, n_documents: int, seed: int) -> list[list[int]]:
        """Word-id sequences of `n_documents` documents."""
        rng = np.random.default_rng(seed)
        cumulative = np.cumsum(self.transitions, axis=1)
        documents = []
        for _ in range(n_documents):
            word = int(rng.choice(self.n_words, p=self.start))
            document = [word]
            while True:
                word = int(np.searchsorted(cumulative[word], rng.random(), side="right"))
                if word >= self.n_words:
                    break
                document.append(word)
            documents.append(document)
        return documents

    def text(self, document: list[int]) -> str:
        return " ".join(self.words[w] for w in document)

    def nll(self, document: list[int]) -> float:
        """The true negative log-likelihood of a document, its end included, in nats."""
        total = -math.log(self.start[document[0]])
        for previous, word in zip(document, document[1:]):
            total -= math.log(self.transitions[previous, word])
        return total - math.log(self.transitions[document[-1], self.n_words])

    def entropy_rate(self) -> float:
        """Nats per symbol (word or end of document) of the endless stream of documents."""
        n = self.n_words
        # After the end state the next symbol is a first word: a chain on n + 1 states.
        chain = np.zeros((n + 1, n + 1))
        chain[:n] = self.transitions
        chain[n, :n] = self.start
        values, vectors = np.linalg.eig(chain.T)
        stationary = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
        stationary /= stationary.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            row_entropy = -np.nansum(np.where(chain > 0, chain * np.log(chain), 0.0), axis=1)
        return float(stationary @ row_entropy)

    def to_json(self) -> dict:
        return {"words": list(self.words), "start": self.start.tolist(), "transitions": self.transitions.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> MarkovSource:
        return cls(tuple(data["words"]), np.asarray(data["start"]), np.asarray(data["transitions"]))


def write_corpus(directory: str, source: MarkovSource, n_train: int, n_valid: int, seed: int = 0) -> dict:
    """train.jsonl and valid.jsonl (one document per line) and source.json; returns a summary."""
    import os

    from .artifacts import atomic_write, atomic_write_json

    os.makedirs(directory, exist_ok=True)
    splits = {"train": source.sample(n_train, seed), "valid": source.sample(n_valid, seed + 1)}
    for name, documents in splits.items():
        with atomic_write(os.path.join(directory, f"{name}.jsonl")) as out:
            for document in documents:
                out.write(json.dumps({"text": source.text(document)}) + "\n")
    atomic_write_json(os.path.join(directory, "source.json"), source.to_json())
    valid = splits["valid"]
    return {
        "entropy_rate_nats_per_symbol": source.entropy_rate(),
        "valid_nll_nats": sum(source.nll(d) for d in valid),
        "valid_documents": len(valid),
        "valid_bytes": sum(len(source.text(d).encode()) for d in valid),
    }
