"""The layouts of a decoding step's matrix products on the CPU, against PyTorch eager's F.linear on an
nn.Linear weight as it is: what lmkit.nn.layout and lmkit.nn.TiedOutputProjection chose from.

    python benchmarks/bench_layout.py [--threads 2] [--repeats 7] [--rows 1 4 8 32]

Per row count (a decoding step's batch x beams), milliseconds per product and the ratio of F.linear's
time to each layout's (above 1: faster than F.linear):

- layers: every product of a T5-small decoder's six layers (512 x 512, 512 x 2048, 2048 x 512), one
  after another so that no weight is in the cache when it is read, as F.linear(x, W) with W (out, in)
  row-major, with W as (in, out) memory, and against a oneDNN-packed copy (lmkit.nn.decoding_layout: the
  packed copy, or the (in, out) order where torch has no oneDNN);
- head: T5's tied output layer, 32128 x 512, as F.linear(h, E), h @ E.T copied contiguous,
  (E @ h.T).T, and against a oneDNN-packed copy (what TiedOutputProjection uses).

Timed in turns (benchmarks/timing.py); nothing is asserted.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import interleaved, warn_if_busy  # benchmarks/timing.py

from lmkit.nn.layout import packed_product, packed_weight

D, FF, LAYERS, VOCAB = 512, 2048, 6, 32128


def contenders(rows: int, weights: list, embedding: torch.Tensor) -> tuple[dict, dict]:
    """The layers' and the head's contenders at `rows` rows; the head's run its product 10 times a call."""
    inputs = {D: torch.randn(rows, D), FF: torch.randn(rows, FF)}
    input_major = [w.t().contiguous().t() for w in weights]
    packs = [packed_weight(w) for w in weights]  # as lmkit packs them, for any row count
    h, embedding_t, head_pack = inputs[D], embedding.t().contiguous(), packed_weight(embedding)
    layers = {
        "F.linear": lambda: [F.linear(inputs[w.size(1)], w) for w in weights],
        "(in, out) memory": lambda: [F.linear(inputs[w.size(1)], w) for w in input_major],
        "oneDNN packed": lambda: [packed_product(inputs[w.size(1)], p) for w, p in zip(weights, packs)],
    }
    head = {
        "F.linear": lambda: [F.linear(h, embedding) for _ in range(10)],
        "contiguous (d, vocab)": lambda: [h @ embedding_t for _ in range(10)],
        "(E @ h.T).T": lambda: [(embedding @ h.t()).t() for _ in range(10)],
        "oneDNN packed": lambda: [packed_product(h, head_pack) for _ in range(10)],
    }
    return layers, head


def main() -> None:
    warn_if_busy()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 32])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [(D, D)] * 8 + [(FF, D), (D, FF)]  # self- and cross-attention's q, k, v, o; the feed-forward
    weights = [torch.randn(out, inp) for _ in range(LAYERS) for out, inp in shapes]
    embedding = torch.randn(VOCAB, D)
    print(f"{args.threads} threads, torch {torch.__version__}, oneDNN {torch.backends.mkldnn.is_available()}; "
          "ms per product (layers: all 60 of them), and F.linear's time over each")
    for rows in args.rows:
        layers, head = contenders(rows, weights, embedding)
        with torch.inference_mode():
            for what, functions, calls in (("layers", layers, 1), ("head", head, 10)):
                seconds = interleaved(functions, args.repeats, shuffle=True)
                base = seconds["F.linear"]
                print(f"{rows:3} rows, {what:6} " + "  ".join(f"{name} {1e3 * t / calls:.2f} ms ({base / t:.2f}x)"
                                                             for name, t in seconds.items()), flush=True)


if __name__ == "__main__":
    main()
