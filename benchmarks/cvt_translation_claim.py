"""CVT for translation against the same NMT model trained on the sentence pairs alone (Clark et al. 2018 §3.3).

The task is lmkit.synthetic_translation's (reordering, agreement, a made-up target lexicon): few
sentence pairs (--pairs) and many source sentences without translations (--unlabeled), drawn from the
same language. Every run trains a model composed from nmt-tiny with the same seed, so the primary
model starts from the same weights:

    supervised       --labelled-steps batches of pairs
    cvt              the same, each followed by a batch of unlabelled sources on which the two auxiliary
                     decoders (attention dropout, next word) learn the primary's beam-search output
                     (`lmkit train --unlabeled`, objective cvt-translation): twice the optimizer steps
    supervised-long  batches of pairs only, as many optimizer steps as the cvt run

and is scored by corpus BLEU (sacrebleu, beam search) on --test held-out pairs, `lmkit eval`. Runs go
--jobs at a time, one thread each.

    python benchmarks/cvt_translation_claim.py --out runs/cvt-mt --seeds 0 1 2 --jobs 9
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from lmkit.synthetic_translation import TranslationTask

MODEL = {"encoder.n_layers": 1, "decoder.n_layers": 1}


def lmkit(*args) -> str:
    # One thread each: these small LSTMs run step by step, and threads spinning against each other slow them.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "lmkit", *map(str, args)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"lmkit {' '.join(map(str, args[:2]))}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def write_lines(path: str, lines) -> str:
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(line + "\n" for line in lines)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pairs", type=int, default=300, help="sentence pairs to train on")
    parser.add_argument("--unlabeled", type=int, default=20000, help="source sentences without translations")
    parser.add_argument("--test", type=int, default=300, help="held-out pairs BLEU is measured on")
    parser.add_argument("--nouns", type=int, default=20, help="of the lexicon's 20 nouns (10 adjectives and verbs)")
    parser.add_argument("--labelled-steps", type=int, default=600, help="batches of pairs each run trains on")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--dropout", type=float, default=0.2, help="of the encoder and the decoder")
    parser.add_argument("--num-beams", type=int, default=4, help="of the teacher's beam search")
    parser.add_argument("--cvt-weight", type=float, default=1.0, help="of the auxiliary decoders' loss")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    parser.add_argument("--runs", nargs="+", default=["supervised", "cvt", "supervised-long"],
                        choices=["supervised", "cvt", "supervised-long"])
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    task = TranslationTask(0, nouns=args.nouns)
    # Distinct draws (seed 0: pairs, 1: test, 2: unlabelled), so no test source is among the training text.
    pairs, test = task.pairs(args.pairs, seed=0), task.pairs(args.test, seed=1)
    files = {"train.src": write_lines(os.path.join(args.out, "train.src"), (s for s, _ in pairs)),
             "train.tgt": write_lines(os.path.join(args.out, "train.tgt"), (t for _, t in pairs)),
             "test.src": write_lines(os.path.join(args.out, "test.src"), (s for s, _ in test)),
             "test.tgt": write_lines(os.path.join(args.out, "test.tgt"), (t for _, t in test)),
             "mono.src": write_lines(os.path.join(args.out, "mono.src"),
                                     (s for s, _ in task.pairs(args.unlabeled, seed=2)))}
    tokenizer = os.path.join(args.out, "tok")
    # A word-level vocabulary of both sides: the lexicon's words, each seen in the pairs or the unlabelled sources.
    lmkit("tokenizer", "train", "--kind", "bpe", "--vocab-size", 400, "--set",
          'special_tokens=["<pad>","<unk>","<s>","</s>"]', files["train.src"], files["train.tgt"], files["mono.src"],
          "--out", tokenizer, "--force")
    sets = [x for key, value in {"tokenizer": tokenizer, "encoder.dropout": args.dropout,
                                 "decoder.dropout": args.dropout, **MODEL}.items() for x in ("--set", f"{key}={value}")]
    steps = {"supervised": args.labelled_steps, "cvt": 2 * args.labelled_steps,
             "supervised-long": 2 * args.labelled_steps}

    def run(seed: int, name: str) -> dict:
        out = os.path.join(args.out, f"{name}-{seed}")
        extra = (["--set", f"objectives.cvt-translation.weight={args.cvt_weight}",
                  "--set", f"objectives.cvt-translation.num_beams={args.num_beams}"] if name == "cvt" else [])
        lmkit("compose", "nmt-tiny", *sets, *extra, "--seed", seed, "--out", out, "--force")
        started = time.perf_counter()
        lmkit("train", out, "--data", files["train.src"], "--data", files["train.tgt"],
              *(["--unlabeled", files["mono.src"]] if name == "cvt" else []),
              "--steps", steps[name], "--batch-size", args.batch_size, "--seq-len", 64, "--lr", args.lr,
              "--warmup", 20, "--weight-decay", 0, "--grad-clip", 5, "--val-fraction", 0, "--eval-every", 0,
              "--save-every", 0, "--seed", seed)
        seconds = time.perf_counter() - started
        record = json.loads(lmkit("eval", out, "--data", files["test.src"], "--data", files["test.tgt"], "--json"))
        row = {"run": name, "seed": seed, "bleu": round(record["bleu"], 2), "steps": steps[name],
               "train_seconds": round(seconds, 1)}
        print(json.dumps(row), flush=True)
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run, seed, name) for seed in args.seeds for name in args.runs]
        results = [future.result() for future in futures]
    for name in args.runs:
        rows = [r for r in results if r["run"] == name]
        mean = sum(r["bleu"] for r in rows) / len(rows)
        print(f"{name:16s} BLEU mean {mean:6.2f} over seeds {[r['seed'] for r in rows]}: "
              + ", ".join(f"{r['bleu']:.2f}" for r in rows))
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as handle:
        json.dump({"arguments": vars(args), "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
