"""Knowledge neurons (Dai et al. 2022) measured: suppressing a fact's neurons against as many random ones.

    python benchmarks/measure_knowledge_neurons.py [--steps 3000] [--facts 24] [--threads 2] [--out DIR]

Trains a bert-tiny (MLM only) on synthetic facts, each person living in one of eight cities, stated
in three phrasings; then for each fact finds its knowledge neurons from the three prompts (20-step
integrated gradients, threshold 0.2, share 0.7, as `lmkit neurons` does) and prints the mean relative
change of P(answer) when those neurons are suppressed (set to 0), when they are amplified (doubled),
and when as many random neurons of the same layers are suppressed, and the same as changes of the
answer's log-odds, which a probability near 1 does not hide. Nothing is asserted: these are
the figures for the notes.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import tempfile

import torch

from lmkit.model import compose, load_model
from lmkit.plugins.neurons.attribution import attributions, probability_with, shared_neurons
from lmkit.plugins.neurons.queries import make_queries
from lmkit.tokenizers import WordPiece, WordPieceOptions
from lmkit.training import train

CITIES = "paris rome oslo lima cairo delhi tokyo quito".split()
PHRASINGS = ("{person} lives in {city} .", "the home of {person} is {city} .", "{person} is a resident of {city} .")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--facts", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.out or tempfile.mkdtemp(prefix="lmkit-neurons-")
    rng = random.Random(0)
    people = [f"person{i}" for i in range(args.facts)]
    home = {person: rng.choice(CITIES) for person in people}
    corpus = os.path.join(root, "facts.txt")
    with open(corpus, "w", encoding="utf-8") as handle:
        for _ in range(200):
            handle.write("\n".join(p.format(person=person, city=home[person])
                                   for person in people for p in PHRASINGS) + "\n\n")
    WordPiece.train([corpus], WordPieceOptions(vocab_size=200), progress=False).save(f"{root}/tok")
    model_dir = os.path.join(root, "bert")
    vocab = 200
    compose("bert-tiny", [f"tokenizer={root}/tok", f"encoder.vocab_size={vocab}", "encoder.max_positions=32",
                          'objectives=[{type = "masked-lm"}]'], model_dir)
    train(model_dir, corpus, steps=args.steps, batch_size=32, seq_len=16, warmup=100, lr=2e-3, eval_every=0,
          progress=True)
    model, tokenizer, _ = load_model(model_dir)
    changes = {"suppressed": [], "amplified": [], "random suppressed": []}
    odds = {name: [] for name in changes}  # a saturated P (near 1) hides changes its log-odds show
    counts, right = [], 0
    for person in people:
        prompts = [p.format(person=person, city="[MASK]") for p in PHRASINGS]
        queries = make_queries(model, tokenizer, prompts, home[person])
        neurons, _ = shared_neurons([attributions(model, q, 20) for q in queries])
        counts.append(len(neurons))
        d_ff = attributions(model, queries[0], 1).shape[1]
        decoys = [(layer, rng.randrange(d_ff)) for layer, _ in neurons]
        for q in queries:
            base = probability_with(model, q, [], 1.0)
            right += base > 0.5
            if not neurons:
                continue
            for name, edited, factor in (("suppressed", neurons, 0.0), ("amplified", neurons, 2.0),
                                         ("random suppressed", decoys, 0.0)):
                after = probability_with(model, q, edited, factor)
                changes[name].append(after / base - 1)
                odds[name].append(log_odds(after) - log_odds(base))
    print(f"{len(people)} facts x {len(PHRASINGS)} prompts; P(answer) > 0.5 on {right} of "
          f"{len(people) * len(PHRASINGS)}; neurons per fact: mean {statistics.mean(counts):.1f}, "
          f"none for {counts.count(0)} facts")
    for name, values in changes.items():
        print(f"{name:18} mean change of P(answer) {100 * statistics.mean(values):+7.1f}%  "
              f"(median {100 * statistics.median(values):+.1f}%); log-odds {statistics.mean(odds[name]):+.3f} "
              f"(median {statistics.median(odds[name]):+.3f}), {len(values)} prompts")


def log_odds(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


if __name__ == "__main__":
    main()
