"""BERT-family encoder forward in lmkit (PyTorch and onnxruntime fp32 / int8) against transformers, in one run.

    python benchmarks/bench_bert.py [--threads 2] [--repeats 5] [--sizes minilm,bert-base] [--work DIR]

Every contender gets the same weights: transformers' BertModel with its random init, imported with
`lmkit import-hf` and exported with `lmkit export` (fp32, and int8 with per-channel weights).
Times are medians of interleaved runs (a, b, c, d, a, b, ...), in ms per forward pass of a
batch of B x 128 tokens; "speed-up" is transformers' time over the contender's. The cosine is
that of mean-pooled sentence vectors against transformers' fp32 ones, the worst over the batch.
Nothing is asserted: the figures are printed for the notes.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from timing import interleaved, session_options, warn_if_busy  # benchmarks/timing.py

SIZES = {  # all-MiniLM-L6-v2's shape, and BERT-Base
    "minilm": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
VOCAB, TOKENS, BATCHES = 30522, 128, (1, 32)


def build(size: str, work: str, threads: int):
    """(transformers model, lmkit encoder, fp32 export, int8 export) of one size, made once in `work`."""
    import transformers

    import lmkit.exports
    from lmkit.commands.import_hf import import_hf
    from lmkit.exports.export import export_model
    from lmkit.exports.manifest import MANIFEST
    from lmkit.model import load_model
    from lmkit.nn import decoding_layout

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, **SIZES[size], hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    hf = transformers.BertModel(config).eval()
    root = os.path.join(work, size)
    source, model_dir = os.path.join(root, "hf"), os.path.join(root, "model")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        hf.save_pretrained(source)
        tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
        with open(os.path.join(source, "vocab.txt"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(tokens) + "\n")
        import_hf(source, model_dir, force=True)
    exports = {}
    for precision in ("fp32", "int8"):
        out = exports[precision] = os.path.join(root, precision)
        if not os.path.isfile(os.path.join(out, MANIFEST)):
            start = time.perf_counter()
            manifest = export_model(model_dir, out, precision=precision, force=True)
            report = manifest["validation"]
            print(f"  exported {size} {precision} in {time.perf_counter() - start:.0f} s, max |difference| "
                  f"{report['max_abs_diff']:.2g}", flush=True)
        options = session_options(threads)
        exports[precision] = lmkit.exports.load(out, device="cpu", session_options=options)
    encoder = load_model(model_dir)[0].encoder
    decoding_layout(encoder)  # as lmkit embed's opened models have it (lmkit.nn.layout)
    return hf, encoder, exports["fp32"], exports["int8"]


def mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (states * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)


def contenders(hf, encoder, fp32, int8, ids: np.ndarray, mask: np.ndarray) -> dict:
    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)

    @torch.inference_mode()
    def with_transformers():
        return hf(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.numpy()

    @torch.inference_mode()
    def with_lmkit():
        return encoder(t_ids, t_mask.bool()).last_hidden_state.numpy()

    return {"transformers": with_transformers, "lmkit-torch": with_lmkit,
            "lmkit-ort-fp32": lambda: fp32.encode(ids, mask)["last_hidden_state"],
            "lmkit-ort-int8": lambda: int8.encode(ids, mask)["last_hidden_state"]}


def main() -> None:
    warn_if_busy()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="minilm,bert-base")
    parser.add_argument("--work", help="where the models and exports are kept between runs  [default: a temp dir]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or tempfile.mkdtemp(prefix="lmkit-bench-bert-")
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} repeats, work in {work}")
    rows = []
    for size in args.sizes.split(","):
        hf, encoder, fp32, int8 = build(size, work, args.threads)
        for batch in BATCHES:
            rng = np.random.default_rng(batch)
            ids = rng.integers(5, VOCAB, size=(batch, TOKENS), dtype=np.int64)
            mask = np.ones((batch, TOKENS), dtype=np.int64)
            if batch > 1:  # some padding, as a real batch has
                mask[::2, TOKENS * 3 // 4:] = 0
            runs = contenders(hf, encoder, fp32, int8, ids, mask)
            reference = mean_pool(runs["transformers"](), mask)
            times = {name: 1e3 * seconds for name, seconds in interleaved(runs, args.repeats, shuffle=True).items()}
            for name, ms in times.items():
                vectors = mean_pool(runs[name](), mask)
                cosine = ((vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1)
                          / np.linalg.norm(reference, axis=1)).min()
                rows.append((size, f"{batch}x{TOKENS}", name, ms, times["transformers"] / ms, cosine))
    print("\n| size | batch | contender | ms | speed-up vs transformers | sentence cosine |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for size, batch, name, ms, ratio, cosine in rows:
        print(f"| {size} | {batch} | {name} | {ms:.1f} | {ratio:.2f}x | {cosine:.4f} |")


if __name__ == "__main__":
    main()
