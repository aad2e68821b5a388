"""NoisyTune (Wu et al. 2022) measured: dev accuracy with and without the perturbation, several seeds.

    python benchmarks/measure_noisytune.py [--seeds 5] [--noise 0.15] [--threads 2] [--out DIR]

Pretrains a bert-tiny and a gpt-tiny briefly on text of the tasks' words, then fine-tunes them on
two synthetic tasks (RUNS: a text's mood, from the majority of its mood words among filler, as
classification; the mood of two texts together, as similarity; 10% of the labels flipped so
that no run reaches 100%) once per seed with `--noisy-tune 0` and once with `--noisy-tune NOISE`, and
prints the mean and spread of the best dev accuracy. Nothing is asserted:
the paper's gains are small, and these are the figures for the notes, whatever they show.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile

import torch

from lmkit.model import compose
from lmkit.tasks.finetune import TaskOptions, finetune
from lmkit.tokenizers import WordBPE, WordBPEOptions, WordPiece, WordPieceOptions
from lmkit.training import train

GOOD = "sun joy gift smile warm kind bright calm".split()
BAD = "rain pain loss frown cold cruel dark storm".split()
FILLER = "the a of and to in on at with by".split()
# (preset, task, lr): at the recipes' rates for these widths neither tiny model learns the tasks in 10
# epochs (each predicts the majority class, and noise or not changes nothing); these rates do learn.
RUNS = [("bert-tiny", "mood", 2e-3), ("bert-tiny", "pairs", 2e-3), ("gpt-tiny", "mood", 5e-3)]


def mood(rng: random.Random) -> tuple[str, int]:
    """Nine words, about half filler; the label is whether good words outnumber bad ones."""
    words = [rng.choice(FILLER) if rng.random() < 0.5 else rng.choice(GOOD + BAD) for _ in range(9)]
    return " ".join(words), int(sum(w in GOOD for w in words) > sum(w in BAD for w in words))


def noisy(label: int, rng: random.Random) -> int:
    return 1 - label if rng.random() < 0.1 else label  # 10% flipped: no run reaches 100%


def example(task: str, rng: random.Random) -> dict:
    """"mood": one text's mood; "pairs": the mood of two texts together (a similarity task)."""
    text, label = mood(rng)
    if task == "mood":
        return {"text": text, "label": noisy(label, rng)}
    other = mood(rng)[0]
    words = f"{text} {other}".split()
    together = int(sum(w in GOOD for w in words) > sum(w in BAD for w in words))
    return {"text_a": text, "text_b": other, "label": noisy(together, rng)}


def write(path: str, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def pretrain(root: str, preset: str, corpus: str, steps: int) -> str:
    model_dir = os.path.join(root, preset)
    stack = "decoder" if preset.startswith("gpt") else "encoder"
    tokenizer = os.path.join(root, f"tok-{stack}")
    if stack == "decoder":
        WordBPE.train([corpus], WordBPEOptions(vocab_size=120, min_frequency=1), progress=False).save(tokenizer)
    else:  # BERT's [CLS] [SEP] [MASK] [PAD]
        WordPiece.train([corpus], WordPieceOptions(vocab_size=120), progress=False).save(tokenizer)
    compose(preset, [f"tokenizer={tokenizer}", f"{stack}.vocab_size=120", f"{stack}.max_positions=48"], model_dir)
    train(model_dir, corpus, steps=steps, batch_size=16, seq_len=32, warmup=10, lr=3e-3, eval_every=0,
          progress=False)
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.out or tempfile.mkdtemp(prefix="lmkit-noisytune-")
    rng = random.Random(0)
    corpus = os.path.join(root, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as handle:
        handle.write("\n".join(mood(rng)[0] for _ in range(3000)))
    print(f"{'model':10} {'task':6} {'kind':14} {'noise':>6} {'mean acc':>9} {'stdev':>7}  per seed")
    pretrained = {}
    for preset, task, lr in RUNS:
        if preset not in pretrained:
            pretrained[preset] = pretrain(root, preset, corpus, args.pretrain_steps)
        kind = "classification" if task == "mood" else "similarity"
        train_file = write(os.path.join(root, f"{task}-train.jsonl"), [example(task, rng) for _ in range(320)])
        dev_file = write(os.path.join(root, f"{task}-dev.jsonl"), [example(task, rng) for _ in range(400)])
        for noise in (0.0, args.noise):
            scores = []
            for seed in range(args.seeds):
                out = os.path.join(root, f"{preset}-{task}-{noise}-{seed}")
                record = finetune(pretrained[preset], out, train_file, dev_file,
                                  TaskOptions(kind=kind, noisy_tune=noise), epochs=10, batch_size=16, lr=lr,
                                  seed=seed, progress=False)
                scores.append(record["accuracy"])
            print(f"{preset:10} {task:6} {kind:14} {noise:6.2f} {statistics.mean(scores):9.4f} "
                  f"{statistics.stdev(scores):7.4f}  " + " ".join(f"{s:.3f}" for s in scores), flush=True)


if __name__ == "__main__":
    main()
