"""CVT against the same tagger trained on the labelled sentences alone (Clark et al. 2018's claim, §4).

The task (lmkit.plugins.cvt.synthetic): entities of made-up names whose type only the context gives;
the labelled sentences use --seen-names names, the dev sentences draw from 2000, of which the last
--held-out appear in no text the model reads (the unlabelled text draws from the rest: a held-out
name is an unknown word, tagged from its context alone), and with probability --distractors a filler
is a name tagged O (a name alone does not make an entity). Both
runs fine-tune the same composed model with the `cvt` recipe for the same number of labelled
batches; the CVT run adds one unlabelled batch after each (so twice the steps). Reported: the best
dev entity F1 (and token accuracy) of each, per seed, and their means.

    python benchmarks/cvt_claim.py --out runs/cvt-claim --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from lmkit.plugins.cvt.synthetic import write_task

MODEL = {"encoder.d_word": 32, "encoder.d_char": 8, "encoder.filters": "[[2, 16], [3, 16]]", "encoder.d_first": 64,
         "encoder.d_second": 32, "encoder.d_projection": 64, "encoder.dropout": 0.3}


def lmkit(*args) -> str:
    # One thread: on a small shared machine, torch's threads spinning against each other make these small
    # LSTMs ~30x slower.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-m", "lmkit", *map(str, args)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr)
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labelled", type=int, default=60, help="labelled sentences")
    parser.add_argument("--seen-names", type=int, default=20, help="names the labelled sentences use")
    parser.add_argument("--held-out", type=int, default=1000, help="of the 2000 names, those only dev sentences use")
    parser.add_argument("--distractors", type=float, default=0.3, help="chance that a filler is a name tagged O")
    parser.add_argument("--bare", type=float, default=0.0,
                        help="chance that a mention has no trigger (names then keep one type; use --distractors 0)")
    parser.add_argument("--unlabeled", type=int, default=20000)
    parser.add_argument("--labelled-steps", type=int, default=400, help="labelled batches of each run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--runs", nargs="+", default=["supervised", "cvt"],
                        choices=["supervised", "cvt", "supervised-long", "multitask"],
                        help="supervised-long: labelled batches only, as many optimizer steps as the CVT run; "
                             "multitask: CVT over this task and a POS-like one (as many labelled sentences) at once, "
                             "as many steps as the CVT run")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    files = write_task(args.out, labelled=args.labelled, unlabeled=args.unlabeled, dev=300, seed=0,
                       seen_names=args.seen_names, held_out=args.held_out, distractors=args.distractors,
                       bare=args.bare)
    pos_dir = os.path.join(args.out, "pos")
    os.makedirs(pos_dir, exist_ok=True)
    pos = write_task(pos_dir, labelled=args.labelled, unlabeled=1, dev=300, seed=1, seen_names=args.seen_names,
                     held_out=args.held_out, distractors=args.distractors, task="pos", bare=args.bare)
    tokenizer = os.path.join(args.out, "tok")
    lmkit("tokenizer", "train", "--kind", "word", "--vocab-size", 4000, "--set",
          'special_tokens=["<pad>","<unk>","<s>","</s>"]', files["unlabeled"], files["train"], "--out", tokenizer,
          "--force")
    results = []
    for seed in args.seeds:
        model = os.path.join(args.out, f"model-{seed}")
        sets = [x for key, value in {"tokenizer": tokenizer, **MODEL}.items() for x in ("--set", f"{key}={value}")]
        lmkit("compose", "cvt-tiny", *sets, "--seed", seed, "--out", model, "--force")
        runs = (("supervised", [], args.labelled_steps), ("cvt", ["--unlabeled", files["unlabeled"]], 2 * args.labelled_steps),
                ("supervised-long", [], 2 * args.labelled_steps))
        runs += (("multitask", ["--unlabeled", files["unlabeled"]], 2 * args.labelled_steps),)
        for name, extra, steps in (run for run in runs if run[0] in args.runs):
            out = os.path.join(args.out, f"{name}-{seed}")
            started = time.perf_counter()
            if name == "multitask":
                data = ["--multitask", f"ner={files['train']},pos={pos['train']}",
                        "--dev", f"ner={files['dev']},pos={pos['dev']}"]
            else:
                data = ["--task", "token-classification", "--train", files["train"], "--dev", files["dev"]]
            record = json.loads(lmkit("finetune", model, "--recipe", "cvt", *data, *extra, "--out", out,
                                      "--steps", steps, "--batch-size", args.batch_size, "--lr", args.lr,
                                      "--eval-every", max(2, steps // 6) // 2 * 2, "--seed", seed, "--force",
                                      "--json"))
            if name == "multitask":  # the NER task's figures (the best step by the mean of both tasks' firsts)
                record = {**record["tasks"]["ner"], "pos_accuracy": record["tasks"]["pos"]["accuracy"],
                          "step": record["step"]}
            row = {"run": name, "seed": seed, "entity_f1": record["entity_f1"], "accuracy": record["accuracy"],
                   "best_step": record["step"], "seconds": round(time.perf_counter() - started, 1),
                   **({"pos_accuracy": record["pos_accuracy"]} if "pos_accuracy" in record else {})}
            results.append(row)
            print(json.dumps(row), flush=True)
    for name in args.runs:
        rows = [r for r in results if r["run"] == name]
        mean = sum(r["entity_f1"] for r in rows) / len(rows)
        each = ", ".join(f"{r['entity_f1']:.4f}" for r in rows)
        print(f"{name:10s} entity F1 mean {mean:.4f} over seeds {[r['seed'] for r in rows]}: {each}")
    with open(os.path.join(args.out, f"results-{'-'.join(args.runs)}.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
