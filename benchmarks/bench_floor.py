"""How near this machine's matrix kernels come to its limits, which bound every speed ratio: a decoding
step at batch 1 reads each weight once (memory bandwidth), a training step multiplies large matrices
(arithmetic).

    python benchmarks/bench_floor.py [--threads 2] [--repeats 7] [--rows 1 4]

- decoding: gpt2-small's 49 weight matrices (12 layers of 768 x 2304, 768 x 768, 768 x 3072, 3072 x 768
  and the 50257 x 768 output layer: 498 MB of float32), multiplied one after another by `rows` rows, as
  a step does, through F.linear (MKL, the weight as nn.Linear holds it), oneDNN's packed copy as lmkit
  packs it (lmkit.nn.layout, for 8 rows) and packed for one row, lmkit's own kernel up to its rows
  (lmkit.nn.gemv, where it builds) and onnxruntime's MLAS (one graph of the same products, the kernels
  an export runs). Each in GB/s of weights read and as a multiple of the floor: the weights' bytes at
  the speed of a sum over 1 GB, timed in turns with the products (that speed moves by 2x from run to
  run on the test machine; timed apart, the ratios would compare different machines).
- training: a float32 matrix product of 2048 x 2048 x 2048, in GFLOP/s, what the products of a
  training step (three quarters of one, in torch's profiler) run at best.

What these bound (issue #21): a PyTorch step of gpt2-small at 1.3x the floor needs its products at about
1.2x; an onnxruntime fp32 step 4x faster than transformers' needs a step below the floor whenever
transformers takes less than 4 floors. Timed in turns (benchmarks/timing.py); nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from timing import interleaved, session_options, warn_if_busy  # benchmarks/timing.py

from lmkit.nn import gemv
from lmkit.nn.layout import packed_product, packed_weight

D, FF, LAYERS, VOCAB = 768, 3072, 12, 50257
SHAPES = [(3 * D, D), (D, D), (FF, D), (D, FF)] * LAYERS + [(VOCAB, D)]  # (out, in), a GPT-2 block's order


def mlas_products(weights: list[np.ndarray], rows: int, threads: int, directory: str):
    """A function that runs every product through onnxruntime, as one graph of independent MatMuls."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    nodes, inputs, outputs, initializers = [], [], [], []
    for k, weight in enumerate(weights):
        out_features, in_features = weight.shape
        nodes.append(helper.make_node("MatMul", [f"x{k}", f"w{k}"], [f"y{k}"]))
        inputs.append(helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [rows, in_features]))
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, [rows, out_features]))
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), f"w{k}"))
    graph = helper.make_graph(nodes, "products", inputs, outputs, initializers)
    path = os.path.join(directory, f"products-{rows}.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path,
              save_as_external_data=True, location=f"products-{rows}.data")
    session = onnxruntime.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])
    feeds = {f"x{k}": np.random.randn(rows, weight.shape[1]).astype(np.float32) for k, weight in enumerate(weights)}
    return lambda: session.run(None, feeds)


def decoding(rows: int, weights: list[torch.Tensor], big: torch.Tensor, threads: int, repeats: int,
             directory: str) -> None:
    inputs = {D: torch.randn(rows, D), FF: torch.randn(rows, FF)}
    packed = [packed_weight(w) for w in weights]
    packed_one = ([torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in weights]
                  if packed[0] is not None else [None] * len(weights))
    contenders = {"a sum over 1 GB": big.sum,
                  "F.linear (MKL)": lambda: [F.linear(inputs[w.size(1)], w) for w in weights]}
    if packed[0] is not None:
        contenders["oneDNN packed (lmkit)"] = lambda: [packed_product(inputs[w.size(1)], p)
                                                       for w, p in zip(weights, packed)]
        contenders["oneDNN packed for 1 row"] = lambda: [packed_product(inputs[w.size(1)], p)
                                                         for w, p in zip(weights, packed_one)]
    if rows <= gemv.MAX_ROWS and gemv.available():
        blocked = [gemv.blocked_weight(w) for w in weights]
        contenders["lmkit's kernel (lmkit.nn.gemv)"] = lambda: [gemv.blocked_product(inputs[w.size(1)], b, w.size(0))
                                                              for w, b in zip(weights, blocked)]
    contenders["onnxruntime MLAS"] = mlas_products([w.numpy() for w in weights], rows, threads, directory)
    with torch.inference_mode():
        seconds = interleaved(contenders, repeats)
    megabytes = sum(w.numel() * 4 for w in weights) / 1e6
    bandwidth = big.numel() * 4 / seconds.pop("a sum over 1 GB")
    floor_ms = 1e3 * megabytes * 1e6 / bandwidth
    print(f"  {rows} row{'s' if rows > 1 else ' '}  the floor: {floor_ms:.2f} ms (a sum streams {bandwidth / 1e9:.1f} GB/s)")
    for name, value in seconds.items():
        ms = 1e3 * value
        print(f"  {rows} row{'s' if rows > 1 else ' '}  {name:30} {ms:7.2f} ms  {megabytes / ms:5.1f} GB/s  "
              f"{ms / floor_ms:4.2f}x the floor", flush=True)


def arithmetic(repeats: int) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    seconds = interleaved({"mm": lambda: a @ b}, repeats)["mm"]
    return 2 * 2048**3 / seconds / 1e9


def main() -> None:
    warn_if_busy()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weights = [torch.randn(shape) * 0.02 for shape in SHAPES]
    big = torch.ones(2**28)  # 1 GB, past the last-level cache
    print(f"torch {torch.__version__}, {args.threads} threads; the floor: gpt2-small's {len(weights)} matrices "
          f"read at the speed of a sum over 1 GB, timed in turns with the products")
    with tempfile.TemporaryDirectory(prefix="lmkit-bench-floor-") as directory:
        for rows in args.rows:
            decoding(rows, weights, big, args.threads, args.repeats, directory)
    print(f"float32 matrix product 2048 x 2048 x 2048: {arithmetic(args.repeats):.0f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
