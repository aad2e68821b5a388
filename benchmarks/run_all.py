"""Every benchmark in one run: the machine, the library versions, and each benchmark's figures, written as
markdown and JSON.

    python benchmarks/run_all.py [--out DIR] [--threads 2] [--only NAME ...] [--claims] [--full]

Speed benchmarks run by default, each in its own process, one after the other (never two at once:
they would share the cores), with the short settings below unless --full; --claims adds the
scripts that check a paper's claim by training (minutes to an hour each). Each benchmark prints its
own table of ratios against transformers and PyTorch eager (side by side in its one run); this
script gathers them with the command that produced each, its wall time and exit status, into
DIR/benchmarks.md and DIR/benchmarks.json, led by a table of every ratio the benchmarks record
(timing.record: bench_gpt2, bench_t5). Nothing is asserted.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))

# name: (arguments with the short settings, arguments with --full); {threads} is filled in.
SPEED = {
    "bench_gpt2": (["--quick", "--threads", "{threads}"], ["--threads", "{threads}"]),
    "bench_t5": (["--quick", "--threads", "{threads}"], ["--threads", "{threads}"]),
    "bench_onnx": (["--sizes", "gpt-mini", "--threads", "{threads}"], ["--threads", "{threads}"]),
    "bench_bert": (["--sizes", "minilm", "--threads", "{threads}"], ["--threads", "{threads}"]),
    "bench_sparse": (["--lengths", "1024", "2048", "--threads", "{threads}"], ["--threads", "{threads}"]),
    "bench_glm": (["--quick", "--threads", "{threads}"], ["--threads", "{threads}"]),
    "bench_elmo": (["--preset", "elmo-tiny", "--threads", "{threads}"], ["--threads", "{threads}"]),
    "bench_ulmfit": (["--size", "tiny", "--threads", "{threads}"], ["--threads", "{threads}"]),
    "bench_floor": (["--repeats", "5", "--threads", "{threads}"], ["--threads", "{threads}"]),
}
CLAIMS = {
    "bench_seq2seq_reversal": [],
    "bench_t5_known_answer": [],
    "bench_ulmfit_stages": [],
    "elmo_features": [],
    "cvt_claim": [],
    "measure_noisytune": [],
    "measure_knowledge_neurons": [],
}


def machine() -> dict:
    """What the figures were measured on."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        if names:
            info["processor"] = names[0]
    except OSError:
        pass
    for package in ("lmkit-toolkit", "torch", "onnxruntime", "onnxruntime-gpu", "transformers", "numpy"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def run(name: str, arguments: list[str], ratios_file: str) -> dict:
    command = [sys.executable, os.path.join(HERE, f"{name}.py"), *arguments]
    print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    # Benchmarks that know their ratios add them to this file (timing.record): the summary table.
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "LMKIT_BENCH_RECORD": ratios_file})
    seconds = time.perf_counter() - start
    print(done.stdout, file=sys.stderr, flush=True)
    return {"name": name, "command": "python " + " ".join([os.path.relpath(command[1]), *arguments]),
            "exit_status": done.returncode, "seconds": round(seconds, 1), "output": done.stdout,
            "error": done.stderr[-2000:] if done.returncode else ""}


def read_ratios(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def markdown(info: dict, results: list[dict], ratios: list[dict]) -> str:
    lines = [f"# lmkit benchmarks, {info['date']}", "", "| machine | |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in info.items() if key != "date"]
    if ratios:  # above 1: lmkit is faster
        lines += ["", "| benchmark | measure | against | ratio |", "| --- | --- | --- | ---: |"]
        lines += [f"| {r['benchmark']} | {r['measure']} | {r['against']} | {r['ratio']:.2f} |" for r in ratios]
    lines += ["", "| benchmark | command | status | seconds |", "| --- | --- | --- | ---: |"]
    lines += [f"| [{r['name']}](#{r['name'].replace('_', '-')}) | `{r['command']}` | "
              f"{'ok' if r['exit_status'] == 0 else 'failed (' + str(r['exit_status']) + ')'} | {r['seconds']} |"
              for r in results]
    for r in results:
        lines += ["", f"## {r['name']}", "", f"`{r['command']}`", "", "```", r["output"].rstrip(), "```"]
        if r["error"]:
            lines += ["", "Failed:", "", "```", r["error"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmark-results", help="where benchmarks.md and .json go")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these benchmarks only (names as above)")
    parser.add_argument("--claims", action="store_true", help="also the scripts that check papers' claims")
    parser.add_argument("--full", action="store_true", help="the speed benchmarks' full settings")
    args = parser.parse_args()
    plan = {name: [a.format(threads=args.threads) for a in (full if args.full else short)]
            for name, (short, full) in SPEED.items()}
    if args.claims:
        plan.update(CLAIMS)
    if args.only:
        unknown = sorted(set(args.only) - set(SPEED) - set(CLAIMS))
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join([*SPEED, *CLAIMS])}")
        plan = {name: arguments for name, arguments in {**plan, **CLAIMS}.items() if name in args.only}
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **machine(),
            "threads": args.threads}
    os.makedirs(args.out, exist_ok=True)
    ratios_file = os.path.join(args.out, "ratios.jsonl")
    if os.path.exists(ratios_file):
        os.remove(ratios_file)
    results = [run(name, arguments, ratios_file) for name, arguments in plan.items()]
    ratios = read_ratios(ratios_file)
    with open(os.path.join(args.out, "benchmarks.json"), "w") as handle:
        json.dump({"machine": info, "ratios": ratios, "benchmarks": results}, handle, indent=2)
    with open(os.path.join(args.out, "benchmarks.md"), "w") as handle:
        handle.write(markdown(info, results, ratios))
    print(os.path.join(args.out, "benchmarks.md"))
    sys.exit(1 if any(r["exit_status"] for r in results) else 0)


if __name__ == "__main__":
    main()
