"""ULMFiT's claim on a synthetic task: the three stages against the same classifier trained from scratch.

    python benchmarks/bench_ulmfit_stages.py [--labelled 100] [--seeds 3] [--lm-steps 600] [--out DIR]
                                             [--backward] [--ulmfit-only]

Texts come from lmkit.synthetic.MarkovSource.english chains: the same 48 English words, each seed
its own transitions. The task: which of two chains (seeds 0 and 1) wrote a document, from
`--labelled` labelled examples; test on 400 others. The "general domain" corpus is unlabelled text
of three other chains (seeds 2-4), the target corpus unlabelled text of the task's two chains. Four
rows, as the paper's ablation (Table 6-7): from scratch; general LM only (stage 1); target LM only
(stage 2 from scratch); stage 1 then stage 2. Every classifier is fine-tuned with the `ulmfit` recipe
(discriminative rates, gradual unfreezing, STLR, concat pooling), once per seed; the LMs are trained
once. Prints test accuracy, mean and spread over the seeds. Nothing is asserted: figures for the notes.

--backward adds §3.4's bidirectional model: a backward LM (tokenizer.reverse) through the same two
LM stages, its own classifier per seed, and the forward and backward classifiers' probabilities
averaged (`lmkit predict FWD BWD`), against the forward classifier alone on the same seeds.
--ulmfit-only leaves out the ablation rows (from scratch, one stage only).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from lmkit.model import compose
from lmkit.synthetic import MarkovSource
from lmkit.tasks.finetune import TaskOptions, finetune
from lmkit.tasks.predict import predict
from lmkit.tokenizers import WordBPEOptions, train_tokenizer
from lmkit.training import train

MODEL = ["decoder.d_embed=64", "decoder.hidden_size=128", "decoder.embed_dropout=0.02", "decoder.input_dropout=0.1",
         "decoder.hidden_dropout=0.1", "decoder.weight_dropout=0.1", "decoder.output_dropout=0.1"]


def write_texts(path: str, sources: list[MarkovSource], per_source: int, seed: int) -> list[tuple[str, int]]:
    rows = [(source.text(doc), label) for label, source in enumerate(sources)
            for doc in source.sample(per_source, seed + 17 * label)]
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n\n".join(text for text, _ in rows) + "\n")
    return rows


def write_task(path: str, rows: list[tuple[str, int]]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(json.dumps({"text": text, "label": "ab"[label]}) + "\n" for text, label in rows)


def report(name: str, accuracies: list[float]) -> None:
    print(f"{name:40s} test accuracy {statistics.mean(accuracies):.3f} +- {statistics.pstdev(accuracies):.3f}  "
          f"{[round(a, 3) for a in accuracies]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lm-steps", type=int, default=600)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--out", default=None)
    parser.add_argument("--backward", action="store_true", help="add the backward and the averaged classifiers")
    parser.add_argument("--ulmfit-only", action="store_true", help="only the stage 1 + stage 2 rows")
    args = parser.parse_args()
    root = args.out or tempfile.mkdtemp(prefix="ulmfit-stages-")
    os.makedirs(root, exist_ok=True)
    task_sources = [MarkovSource.english(seed=0, mean_length=25), MarkovSource.english(seed=1, mean_length=25)]
    general_sources = [MarkovSource.english(seed=s, mean_length=25) for s in (2, 3, 4)]
    general, target = os.path.join(root, "general.txt"), os.path.join(root, "target.txt")
    write_texts(general, general_sources, 1500, seed=100)
    write_texts(target, task_sources, 400, seed=200)
    labelled = write_texts(os.path.join(root, "unused.txt"), task_sources, args.labelled // 2, seed=300)
    test = write_texts(os.path.join(root, "unused2.txt"), task_sources, 200, seed=400)
    train_path, test_path = os.path.join(root, "train.jsonl"), os.path.join(root, "test.jsonl")
    write_task(train_path, labelled)
    write_task(test_path, test)
    tok = os.path.join(root, "tok")
    train_tokenizer("bpe", [general, target], WordBPEOptions(vocab_size=200, special_tokens=("<unk>", "<pad>", "</s>")),
                    progress=False).save(tok)
    lm_args = dict(batch_size=16, seq_len=64, eval_every=0, save_every=0, device="cpu", progress=False)

    def composed(name: str, *extra: str) -> str:
        out = os.path.join(root, name)
        compose("awd-lstm-tiny", [f"tokenizer={tok}", *extra, "decoder.vocab_size=200", *MODEL], out, force=True)
        return out

    started = time.perf_counter()
    target_steps = max(1, args.lm_steps // 3)

    def ulmfit_lms(prefix: str, *extra: str) -> tuple[str, str]:
        """Stage 1 on the general corpus, then stage 2 on the target corpus in a new directory (train --out)."""
        stage1 = composed(f"{prefix}stage1", *extra)
        train(stage1, [general], steps=args.lm_steps, lr=1e-2, warmup=args.lm_steps // 10, **lm_args)
        stage12 = os.path.join(root, f"{prefix}stage12")
        train(stage1, [target], steps=target_steps, recipe="ulmfit-lm", out=stage12, force=True, **lm_args)
        return stage1, stage12

    stage1, stage12 = ulmfit_lms("")
    rows = {"stage 1 + stage 2 (ULMFiT)": stage12}
    if not args.ulmfit_only:
        stage2 = composed("stage2")
        train(stage2, [target], steps=target_steps, recipe="ulmfit-lm", **lm_args)
        rows = {"from scratch": composed("scratch"), "stage 1 (general LM)": stage1,
                "stage 2 only (target LM, no general)": stage2, **rows}
    if args.backward:
        rows["backward stage 1 + stage 2"] = ulmfit_lms("bwd-", "tokenizer.reverse=true")[1]
    lm_seconds = time.perf_counter() - started

    results, classifiers = {}, {}
    for name, model in rows.items():
        accuracies = []
        for seed in range(args.seeds):
            out = os.path.join(root, f"clf-{name.split()[0]}-{name.split()[-1].strip('()')}-{seed}")
            finetune(model, out, train_path, None, TaskOptions(recipe="ulmfit"), epochs=args.epochs, batch_size=16,
                     max_length=128, seed=seed, force=True, progress=False)
            classifiers.setdefault(name, []).append(out)
            _, metrics = predict(out, test_path, progress=False)
            accuracies.append(metrics["accuracy"])
        results[name] = accuracies
        report(name, accuracies)
    if args.backward:  # §3.4: the forward and backward classifiers of each seed, probabilities averaged
        pairs = zip(classifiers["stage 1 + stage 2 (ULMFiT)"], classifiers["backward stage 1 + stage 2"])
        report("forward + backward, averaged", [predict([f, b], test_path, progress=False)[1]["accuracy"]
                                                for f, b in pairs])
    print(f"({args.labelled} labelled examples, {args.seeds} seeds, LMs {args.lm_steps}/{target_steps} steps in "
          f"{lm_seconds:.0f} s; files in {root})")


if __name__ == "__main__":
    main()
