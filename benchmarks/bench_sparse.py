"""GPT-3's banded attention layer against a dense one: time and peak memory as the sequence grows.

    python benchmarks/bench_sparse.py [--threads 2] [--repeats 3] [--lengths 1024 2048 4096 8192]

One self-attention layer of GPT-3 Small (768 wide, 12 heads, batch 1), forward in inference mode,
three ways:

    dense    causal SDPA over all T keys (is_causal: torch's fused kernel, the fastest dense form)
    masked   the band the naive way: SDPA with a (T, T) band mask, so every score is still computed
    banded   lmkit.nn.BandedSelfAttention: blocks of w queries against 2w keys, O(T * w)

Times are medians over repeats, timed in turns (dense, masked, banded, dense, ...) so that load on
the machine hits all alike. Peak memory is the growth of the process's peak resident set
(VmHWM) over one forward pass, in a fresh interpreter per layer and length, after the layer and
its input exist and one warm-up pass has run: the layer's working memory (scores, masks, chunks,
projections), not its weights. Linux only (it reads /proc/self). Nothing is asserted: the figures
are printed for the notes.
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys

import torch
from timing import interleaved, warn_if_busy  # benchmarks/timing.py

N_EMBD, N_HEAD, BAND = 768, 12, 256
KINDS = ("dense", "masked", "banded")


def layer(kind: str, T: int):
    """A function running one forward pass of `kind` on a fresh (1, T, 768) input."""
    from lmkit.nn import BandedSelfAttention, SelfAttention, band_attention_mask

    torch.manual_seed(0)
    x = torch.randn(1, T, N_EMBD)
    if kind == "banded":
        attention = BandedSelfAttention(N_EMBD, N_HEAD, BAND).eval()
        # Built once per forward pass of the model and shared by its banded layers, so counted here.
        return lambda: attention(x, band_attention_mask(None, T, 0, BAND))
    attention = SelfAttention(N_EMBD, N_HEAD, causal=True).eval()
    if kind == "dense":
        return lambda: attention(x)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return lambda: attention(x, (j <= i) & (j > i - BAND))  # (T, T) mask, built per pass as a model would


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (resident now) or VmHWM (peak resident)."""
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+)", status.read()).group(1))


def peak_memory_child(kind: str, T: int, threads: int) -> None:
    """In a fresh interpreter: print how far the resident set rose above its level during one forward pass.

    After a warm-up pass, the peak (VmHWM) is reset to the current resident set (Linux: write 5 to
    /proc/self/clear_refs), so what it reaches next is this pass's working memory alone.
    """
    torch.set_num_threads(threads)
    with torch.inference_mode():
        run = layer(kind, T)
        run()  # warm-up: one-time allocations (thread pools, kernels) are not the layer's
        gc.collect()
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        before = _status_kib("VmRSS")
        run()
        after = _status_kib("VmHWM")
    print(json.dumps({"bytes": (after - before) * 1024}))


def peak_memory(kind: str, T: int, threads: int) -> int:
    done = subprocess.run([sys.executable, __file__, "--memory-child", kind, str(T), "--threads", str(threads)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["bytes"]


def main() -> None:
    warn_if_busy()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--memory-child", nargs=2, metavar=("KIND", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child[0], int(args.memory_child[1]), args.threads)
        return

    torch.set_num_threads(args.threads)
    print(f"one attention layer, {N_EMBD} wide, {N_HEAD} heads, batch 1, band {BAND}, forward, "
          f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    header = ("T", "dense ms", "masked ms", "banded ms", "dense MB", "masked MB", "banded MB",
              "time dense/banded", "mem dense/banded")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    rows = []
    for T in args.lengths:
        with torch.inference_mode():
            times = interleaved({kind: layer(kind, T) for kind in KINDS}, args.repeats)
        memory = {kind: peak_memory(kind, T, args.threads) for kind in KINDS}
        rows.append((T, times, memory))
        print(" | ".join([
            str(T), *(f"{times[kind] * 1e3:.1f}" for kind in KINDS), *(f"{memory[kind] / 2**20:.1f}" for kind in KINDS),
            f"{times['dense'] / times['banded']:.2f}x", f"{memory['dense'] / max(memory['banded'], 1):.2f}x",
        ]), flush=True)
    T, times, memory = rows[-1]
    print(f"\nat T = {T}: banded takes {times['banded'] / times['dense']:.2f} of dense's time "
          f"({times['banded'] / times['masked']:.3f} of the band-masked dense layer's) and "
          f"{memory['banded'] / max(memory['dense'], 1):.2f} of its peak memory "
          f"({memory['banded'] / max(memory['masked'], 1):.3f} of the masked layer's)")
    if len(rows) > 1:
        (T0, t0, m0), (T1, t1, m1) = rows[0], rows[-1]
        growth = T1 / T0
        print(f"from T = {T0} to {T1} ({growth:g}x): dense time x{t1['dense'] / t0['dense']:.1f}, banded time "
              f"x{t1['banded'] / t0['banded']:.1f}; banded memory x{m1['banded'] / max(m0['banded'], 1):.1f}")


if __name__ == "__main__":
    main()
