"""A matrix-vector kernel for decoding one to eight rows on x86 CPUs, compiled the first time it is needed.

A decoding step at batch 1 reads every weight once, so its speed is the memory bandwidth its matrix
products reach. gpt2-small's 49 weight matrices (498 MB) on the 2-core test machine (AVX-512, torch 2.13,
2 threads, `python benchmarks/bench_floor.py`, Nov 30, in turns with a sum over 1 GB that streamed
33-34 GB/s): this kernel (gemv.cpp) read them in 1.04x the sum's time at one row, 1.01x at two and 1.04x at
four; oneDNN's packed products (lmkit.nn.layout) in 1.60x, 1.60x and 1.33x; onnxruntime's MLAS in 1.12x,
1.29x and 1.31x. At eight rows the kernel was still ahead of oneDNN (17.9 against 19.2 ms); at sixteen,
oneDNN is as fast or faster, so from nine rows on it keeps the products (MAX_ROWS).

The kernel reads a copy of the weight blocked as (ceil(out / 16), in, 16), `blocked_weight`: each thread
streams its blocks front to back and keeps a row's 16 sums in registers; rows go four at a time, so a
block is read from memory once and from the core's cache for rows five to eight. It runs on torch's own
thread pool (at::parallel_for, whose OpenMP pragmas are compiled into it: hence -fopenmp, without which it
ran on one thread), so it does not compete with torch's threads as a second BLAS would (numpy's OpenBLAS,
called between torch's operators, ran a gpt2-small step 5x slower for that reason).

It is C++, built with torch.utils.cpp_extension (-O3 -mavx2 -mfma) once per machine and torch version,
about 10 s, then loaded from torch's extensions directory (TORCH_EXTENSIONS_DIR, default
~/.cache/torch_extensions). Where it cannot be built or loaded (no C++ compiler or ninja, a CPU without
AVX2 and FMA, another architecture, a read-only cache) or LMKIT_KERNELS=0 is set, `available()` is False
and lmkit decodes with oneDNN as before. Sums are taken in another order than oneDNN's: values agree to
float rounding (about 1e-7 relative), not bit for bit.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import threading
import time
import warnings

import torch
from torch import Tensor

LANES = 16  # outputs per block: two AVX registers of sums per row
MAX_ROWS = 8  # from 9 rows on, oneDNN's packed products (see the module docstring)
FLAGS = ("-O3", "-mavx2", "-mfma")
# at::parallel_for's OpenMP pragmas are compiled into the kernel: without the flag it runs on one thread
OPENMP_FLAGS = ("-fopenmp",) if torch.backends.openmp.is_available() else ()
SOURCE = os.path.join(os.path.dirname(__file__), "gemv.cpp")

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: bool | None = None  # None: not tried yet in this process


def available() -> bool:
    """Whether the kernel is loaded in this process, building it first where it is not built yet."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                _loaded = _load()
    return _loaded


def _load() -> bool:
    if os.environ.get("LMKIT_KERNELS", "1") == "0" or not _cpu_runs_it():
        return False
    if shutil.which(os.environ.get("CXX", "c++")) is None:  # torch would warn at length, at every run
        logger.info("no C++ compiler: lmkit's decoding kernel is not built; using oneDNN's")
        return False
    # torch's checks of the compiler warn on the root logger and through warnings: a fallback stays quiet
    torch_logger = logging.getLogger("torch.utils.cpp_extension")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension

        name = extension_name()
        if not _build_lock_cleared(cpp_extension._get_build_directory(name, verbose=False)):
            logger.info("another process is building lmkit's decoding kernel; using oneDNN's in this one")
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cpp_extension.load(name, [SOURCE], extra_cflags=list(FLAGS + OPENMP_FLAGS),
                               extra_ldflags=list(OPENMP_FLAGS), is_python_module=False, verbose=False)
        return hasattr(torch.ops.lmkit_gemv, "blocked_linear")
    except Exception as error:  # no ninja, a compiler that fails, a read-only cache: oneDNN serves instead
        logger.info("lmkit's decoding kernel is not available (%s); using oneDNN's", str(error).splitlines()[0])
        return False
    finally:
        torch_logger.setLevel(level)


def extension_name() -> str:
    """The kernel's name in torch's extensions directory: one per source, flags and torch version."""
    with open(SOURCE, "rb") as source:
        digest = hashlib.sha256(source.read() + " ".join(FLAGS + OPENMP_FLAGS).encode() + torch.__version__.encode())
    return f"lmkit_gemv_{digest.hexdigest()[:12]}"


STALE_LOCK_S = 120  # a build takes about 10 s; a lock this old was left by a process killed while building


def _build_lock_cleared(directory: str) -> bool:
    """Whether torch may build or load in `directory` without waiting on another process's lock.

    torch waits for a build's lock file without end, and a process killed mid-build (kill -9, a closed
    terminal, the OOM killer) leaves its lock behind: every later process hung, silently. A lock older
    than STALE_LOCK_S is removed; a younger one is another process building now, and this process
    decodes with oneDNN rather than wait for it.
    """
    lock = os.path.join(directory, "lock")
    try:
        age = time.time() - os.path.getmtime(lock)
    except OSError:  # no lock
        return True
    if age < STALE_LOCK_S:
        return False
    with contextlib.suppress(OSError):
        os.remove(lock)
    return True


def _cpu_runs_it() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return capability in ("AVX2", "AVX512")


def blocked_weight(weight: Tensor) -> Tensor:
    """weight (out, in) float32 -> its blocked copy (ceil(out / 16), in, 16), outputs past `out` zero."""
    out_features, in_features = weight.shape
    padded = torch.nn.functional.pad(weight.detach(), (0, 0, 0, (-out_features) % LANES))
    return padded.t().reshape(in_features, -1, LANES).permute(1, 0, 2).contiguous()


def blocked_product(x: Tensor, blocked: Tensor, out_features: int, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T (+ bias) for x (..., in) of at most MAX_ROWS rows against `blocked_weight(weight)`:
    (..., out_features). Needs available()."""
    flat = x.reshape(-1, x.size(-1))
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    out = torch.ops.lmkit_gemv.blocked_linear(flat, blocked, bias, out_features)
    return out.view(*x.shape[:-1], out_features)
