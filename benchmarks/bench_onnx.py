"""Greedy decoding at batch 1 on onnxruntime (fp32, int8, int4) against PyTorch and transformers, in one run.

    python benchmarks/bench_onnx.py [--sizes gpt-mini gpt2-small] [--threads 2] [--repeats 7]
                                    [--new-tokens 64] [--work DIR]

For each size, one random GPT-2 (transformers' initialisation, seed 0) is converted to an lmkit
model directory and exported with `lmkit export` (fp32; --quantize int8; --quantize int4, whose
output projection is int8; and int4 with --int4-output --int4-embeddings), so every contender runs
the same weights:

    ort-fp32   lmkit.exports + OrtBackend + lmkit's Greedy, fp32 export
    ort-int8   the same on the int8 export
    ort-int4   the same on the int4 export (blocks int4, output projection int8)
    ort-int4all  the same with the output projection and the embeddings in int4 too
    ort-genai  the fp32 export in the cache layout onnxruntime-genai reads (`--layout genai`, which
               concatenates the past at every step), beside the default fast layout (ort-fp32: fused
               attention over buffers written in place)
    torch      lmkit's TorchBackend + Greedy (PyTorch fp32)
    hf         transformers' GPT2LMHeadModel.generate (PyTorch fp32)

Each run generates --new-tokens tokens after a 16-token prompt (prefill included); ms/token is the
run's time over the new tokens, the median over --repeats runs. The contenders take turns, one run
each per round in a shuffled order, so a slow spell of a shared machine hits them all alike. Ratios
> 1 mean the first named is faster.

Top-1 agreement: the share of positions where the export's most likely next token is PyTorch fp32's,
over 32 prompts of 32 random tokens. A random model's logits are nearly flat (the two most likely
tokens of gpt-mini are within 0.01 at a tenth of positions), so int8's rounding flips many of them;
--trained and --texts measure it where it means something, on a trained model and held-out text.

Threads: torch.set_num_threads(N) and onnxruntime's intra_op_num_threads = N. Nothing is
asserted: the figures are printed for the notes. --work keeps the exports between runs.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

import numpy as np
import torch
from timing import PAUSE_S, session_options  # benchmarks/timing.py

import lmkit.exports
from lmkit.decoding.greedy import Greedy
from lmkit.decoding.options import GreedyOptions
from lmkit.decoding.torch_backend import TorchBackend

SIZES = {
    "gpt-mini": dict(n_layers=6, d_model=384, n_heads=6, vocab_size=8192, max_positions=256),
    "gpt2-small": dict(n_layers=12, d_model=768, n_heads=12, vocab_size=50257, max_positions=1024),
}
PROMPT_TOKENS = 16
VALIDATION_PROMPTS, VALIDATION_TOKENS = 32, 32


# name -> (precision, Int4Options keyword arguments, cache layout)
PRECISIONS = {"fp32": ("fp32", {}, "fast"), "int8": ("int8", {}, "fast"), "int4": ("int4", {}, "fast"),
              "int4all": ("int4", {"output_bits": 4, "embeddings": True}, "fast"), "genai": ("fp32", {}, "genai")}


def build(size: str, work: str, precisions: tuple[str, ...] = tuple(PRECISIONS)):
    """(transformers model, lmkit model directory, {name: export directory}), exporting what is not there yet."""
    import transformers
    from safetensors.torch import save_file

    from lmkit.exports.export import export_model
    from lmkit.exports.manifest import MANIFEST
    from lmkit.exports.precision import Int4Options
    from lmkit.model import compose
    from lmkit.plugins.gpt.hf import config_from_hf, state_dict_from_hf

    torch.manual_seed(0)
    sizes = SIZES[size]  # in transformers' names (transformers 5 no longer maps n_layers, d_model, ...)
    config = transformers.GPT2Config(n_layer=sizes["n_layers"], n_embd=sizes["d_model"], n_head=sizes["n_heads"],
                                      vocab_size=sizes["vocab_size"], n_positions=sizes["max_positions"],
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    root = os.path.join(work, size)
    model_dir = os.path.join(root, "model")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        os.makedirs(root, exist_ok=True)
        state = state_dict_from_hf(hf.state_dict(), config_from_hf(config.to_dict()))
        weights = os.path.join(root, "weights.safetensors")
        save_file({f"decoder.{name}": tensor.contiguous() for name, tensor in state.items()}, weights)
        compose(size, ["decoder.dropout=0.0"], model_dir, weights=weights, force=True)
    exports = {}
    for name in precisions:  # of PRECISIONS
        precision, int4, layout = PRECISIONS[name]
        out = exports[name] = os.path.join(root, name)
        if not os.path.isfile(os.path.join(out, MANIFEST)):
            start = time.perf_counter()
            manifest = export_model(model_dir, out, precision=precision, force=True, int4=Int4Options(**int4),
                                    cache_layout=layout)
            size_mb = sum(entry["size"] for entry in manifest["files"].values()) / 1e6
            report = manifest["validation"]
            print(f"  exported {size} {name} in {time.perf_counter() - start:.0f} s: {size_mb:.0f} MB, "
                  f"max |difference| {report['max_abs_diff']:.2g}, top-1 agreement {report['top1_agreement']:.3f}",
                  flush=True)
    return hf, model_dir, exports


def contenders(hf, model_dir: str, exports: dict, new_tokens: int, threads: int) -> dict:
    from lmkit.model import load_model
    from lmkit.nn import decoding_layout

    greedy = Greedy(GreedyOptions(max_new_tokens=new_tokens))
    decoder = load_model(model_dir)[0].eval().decoder
    decoding_layout(decoder)  # as lmkit's opened models have it (lmkit.nn.layout)

    def on_export(directory):
        exported = lmkit.exports.load(directory, device="cpu", session_options=session_options(threads))
        return lambda prompt: greedy.generate(exported.backend(), [prompt], eos_id=None, pad_id=0)[0].tokens

    @torch.inference_mode()
    def with_transformers(prompt):
        ids = torch.tensor([prompt])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None)
        return out[0, len(prompt):].tolist()

    return {
        **{f"ort-{name}": on_export(directory) for name, directory in exports.items()},
        "torch": lambda prompt: greedy.generate(TorchBackend(decoder, new_tokens), [prompt], eos_id=None,
                                                pad_id=0)[0].tokens,
        "hf": with_transformers,
    }


def time_per_token(runs: dict, prompt: list[int], new_tokens: int, repeats: int) -> dict[str, float]:
    """Median ms per new token of each contender, taking turns."""
    for run in runs.values():
        run(prompt)  # warm-up: first-call allocations, onnxruntime's first-run optimisations
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs.items())
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)  # none always follows the same one (onnxruntime's and torch's threads spin a while)
        for name, run in order:
            start = time.perf_counter()
            run(prompt)
            times[name].append(1e3 * (time.perf_counter() - start) / new_tokens)
            time.sleep(PAUSE_S)  # for the idle threads to stop spinning before the next contender
    return {name: statistics.median(values) for name, values in times.items()}


@torch.inference_mode()
def top1_agreement(model_dir: str, export: str, prompts: list[list[int]], threads: int) -> float:
    """Share of the prompts' positions where the export's most likely next token is PyTorch fp32's."""
    from lmkit.model import load_model

    decoder = load_model(model_dir)[0].eval().decoder
    exported = lmkit.exports.load(export, device="cpu", session_options=session_options(threads))
    graph, session = exported.manifest["graphs"]["model"], exported.export.session("model")
    shapes = {tensor["name"]: tensor["shape"] for tensor in graph["inputs"]}
    empty = {pair["input"]: np.zeros([{"batch_size": 1, "past_sequence_length": 0}.get(size, size)
                                      for size in shapes[pair["input"]]], dtype=np.float32)
             for pair in graph["cache"]}
    agree = total = 0
    for prompt in prompts:
        expected = decoder(torch.tensor([prompt])).argmax(-1)[0].numpy()
        (logits,) = session.run(["logits"], {
            "input_ids": np.array([prompt], dtype=np.int64), "attention_mask": np.ones((1, len(prompt)), dtype=np.int64),
            "position_ids": np.arange(len(prompt), dtype=np.int64)[None], **empty})
        agree += int((logits[0].argmax(-1) == expected).sum())
        total += len(prompt)
    return agree / total


def random_prompts(vocab_size: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab_size, (VALIDATION_PROMPTS, VALIDATION_TOKENS), generator=generator).tolist()


def trained_agreement(model_dir: str, texts: str, work: str, threads: int) -> None:
    """int8 and int4 top-1 agreement of a trained model on held-out text (a .jsonl with "text" fields, or lines)."""
    import json

    from lmkit.exports.export import export_model
    from lmkit.exports.manifest import MANIFEST
    from lmkit.model import load_model

    tokenizer = load_model(model_dir)[1]
    with open(texts, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    documents = [json.loads(line)["text"] if texts.endswith(".jsonl") else line for line in lines]
    context = load_model(model_dir)[0].decoder.config.max_positions
    prompts = [ids[:context] for ids in (tokenizer.encode(text) for text in documents) if ids]
    from lmkit.exports.precision import Int4Options

    for name, (precision, int4, layout) in PRECISIONS.items():
        if precision == "fp32":
            continue
        out = os.path.join(work, f"trained-{name}")
        if not os.path.isfile(os.path.join(out, MANIFEST)):
            export_model(model_dir, out, precision=precision, force=True, int4=Int4Options(**int4), cache_layout=layout)
        share = top1_agreement(model_dir, out, prompts, threads)
        print(f"trained {model_dir}: {name} top-1 agreement with torch fp32 over {sum(map(len, prompts))} positions "
              f"of {len(prompts)} held-out texts: {share:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                        help="the exports to time (fp32 always)")
    parser.add_argument("--work", help="keep the model directories and exports here (reused when present)")
    parser.add_argument("--trained", metavar="MODEL_DIR", help="also measure int8 top-1 agreement on this trained "
                        "model (e.g. lmkit demo's lmkit-demo/model) ...")
    parser.add_argument("--texts", metavar="FILE", help="... over these held-out texts (.jsonl with a text field, "
                        "or one per line; e.g. lmkit-demo/corpus/valid.jsonl)")
    args = parser.parse_args()
    if bool(args.trained) != bool(args.texts):
        parser.error("--trained and --texts go together")
    torch.set_num_threads(args.threads)
    import onnxruntime
    import transformers

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, transformers "
          f"{transformers.__version__}; {args.threads} threads; greedy, batch 1, {PROMPT_TOKENS}-token prompt, "
          f"{args.new_tokens} new tokens; medians of {args.repeats}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as scratch:
        work = args.work or scratch
        for size in args.sizes:
            hf, model_dir, exports = build(size, work, tuple(dict.fromkeys(["fp32", *args.precisions])))
            runs = contenders(hf, model_dir, exports, args.new_tokens, args.threads)
            prompt = torch.randint(0, SIZES[size]["vocab_size"], (PROMPT_TOKENS,),
                                   generator=torch.Generator().manual_seed(0)).tolist()
            tokens = {name: run(prompt) for name, run in runs.items()}
            ms = time_per_token(runs, prompt, args.new_tokens, args.repeats)
            same = tokens["ort-fp32"] == tokens["torch"] == tokens["hf"]
            print(f"{size}: ms/token " + ", ".join(f"{name} {value:.2f}" for name, value in ms.items())
                  + f"; fp32 tokens identical (ort, torch, hf): {same}")
            print(f"{size}: speed-up  " + ", ".join(f"{base}/ort-{name} {ms[base] / ms[f'ort-{name}']:.2f}x"
                                                   for base in ("hf", "torch") for name in exports))
            megabytes = {name: os.path.getsize(os.path.join(path, "model.onnx")) / 1e6 for name, path in exports.items()}
            print(f"{size}: model.onnx MB " + ", ".join(f"{name} {mb:.1f}" for name, mb in megabytes.items()))
            prompts = random_prompts(SIZES[size]["vocab_size"])
            print(f"{size}: top-1 agreement with torch fp32 over {VALIDATION_PROMPTS}x{VALIDATION_TOKENS} positions "
                  "of random tokens: " + ", ".join(
                      f"ort-{name} {top1_agreement(model_dir, path, prompts, args.threads):.4f}"
                      for name, path in exports.items()), flush=True)
        if args.trained:
            trained_agreement(args.trained, args.texts, work, args.threads)

if __name__ == "__main__":
    main()
