"""Known answer (issue #13 part 8): a t5-tiny and the attentional NMT (nmt-tiny), trained the same number of
steps on lmkit's synthetic translation task, compared by corpus BLEU and exact match of their greedy output
on held-out sentences; and the held-out loss of a span-corruption run against the untrained model's.

    python benchmarks/bench_t5_known_answer.py [--steps 400] [--threads 2] [--out DIR]

Nothing is asserted: the figures are for the notes (docs/families/t5.md).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from lmkit.decoding.greedy import Greedy
from lmkit.decoding.options import GreedyOptions
from lmkit.model import compose
from lmkit.opening import open_model
from lmkit.seq2seq import evaluate_bleu
from lmkit.synthetic_translation import TranslationTask, write_task
from lmkit.tokenizers import UnigramOptions, train_tokenizer
from lmkit.training import train

TASK = TranslationTask(0, nouns=8, adjectives=5, verbs=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--span-only", action="store_true", help="only the span-corruption figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.out or tempfile.mkdtemp(prefix="lmkit-t5-known-")
    files = write_task(os.path.join(root, "data"), n_train=4000, n_valid=100, clauses=(1, 2), task=TASK)
    tests = TASK.pairs(100, seed=11, clauses=(1, 2))
    tokenizer = train_tokenizer("unigram", [files["train.src"], files["train.tgt"]],
                                UnigramOptions(vocab_size=300, special_tokens=("<pad>", "</s>", "<unk>", "<s>"),
                                               sentinels=20, template="none"), progress=False)
    tokenizer.save(os.path.join(root, "tok"))
    size = tokenizer.vocab_size
    print(f"{'model':10} {'BLEU':>6} {'exact':>6} {'val loss':>8} {'train s':>8}")
    for name, preset in () if args.span_only else (("nmt-tiny", "nmt-tiny"), ("t5-tiny", "t5-tiny")):
        model_dir = os.path.join(root, name)
        compose(preset, [f"tokenizer={root}/tok", f"encoder.vocab_size={size}", f"decoder.vocab_size={size}"],
                model_dir, force=True)
        started = time.perf_counter()
        record = train(model_dir, data=[files["train.src"], files["train.tgt"]],
                       val_data=[files["valid.src"], files["valid.tgt"]], steps=args.steps, batch_size=32,
                       seq_len=64, lr=3e-3, warmup=20, weight_decay=0.0, grad_clip=1.0, eval_every=0,
                       save_every=0, progress=False)
        seconds = time.perf_counter() - started
        model = open_model(model_dir, device="cpu")
        score, hypotheses = evaluate_bleu(model, Greedy(GreedyOptions(max_new_tokens=60)), tests)
        exact = sum(h == t for h, (_, t) in zip(hypotheses, tests)) / len(tests)
        print(f"{name:10} {score.score:6.2f} {exact:6.1%} {record['val_loss']:8.4f} {seconds:8.1f}", flush=True)
    # Span corruption: the held-out loss of an untrained model (one step at a negligible rate) and of a trained one.
    losses = {}
    for label, steps, lr in (("untrained", 1, 1e-12), (f"after {args.steps} steps", args.steps, 3e-3)):
        model_dir = os.path.join(root, f"t5-span-{steps}")
        compose("t5-tiny", [f"tokenizer={root}/tok", f"encoder.vocab_size={size}", f"decoder.vocab_size={size}",
                            "objectives.0.type=span-corruption"], model_dir, force=True)
        losses[label] = train(model_dir, data=[files["train.src"]], val_data=[files["valid.src"]], steps=steps,
                              batch_size=32, seq_len=64, lr=lr, warmup=0, eval_every=0, save_every=0,
                              progress=False)["val_loss"]
    print("span corruption, held-out loss: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
          + f"; models and data in {root}")

if __name__ == "__main__":
    main()
