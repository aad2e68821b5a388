"""lmkit.nn.gemv, the few-row kernel a decoding step's products run on: the same values as F.linear,
wherever a layer or the tied head uses it, and oneDNN (or the weight itself) wherever it does not apply."""
from __future__ import annotations

import importlib.util
import platform
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmkit.nn import TiedOutputProjection, decoding_layout, gemv

BUILDABLE = (platform.machine().lower() in ("x86_64", "amd64") and shutil.which("c++") is not None
             and (shutil.which("ninja") is not None or importlib.util.find_spec("ninja") is not None)
             and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))


def test_the_kernel_builds_where_a_compiler_ninja_and_avx2_are():
    # Where they are (this project's machines), a kernel that fails to build is a fault, not a fallback.
    if not BUILDABLE:
        pytest.skip("no C++ compiler, ninja or AVX2 here: lmkit decodes with oneDNN")
    assert gemv.available()


needs_kernel = pytest.mark.skipif(not BUILDABLE, reason="the kernel cannot be built here")


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("out_features, in_features", [(48, 16), (33, 7), (17, 3), (1, 1), (300, 129)])
@pytest.mark.parametrize("bias", [True, False])
def test_blocked_product_equals_linear(rows, out_features, in_features, bias):
    # widths that are not a multiple of the 16-output block, odd input counts (the one-row path pairs them)
    generator = torch.Generator().manual_seed(out_features * 1000 + in_features)
    weight = torch.randn(out_features, in_features, generator=generator)
    b = torch.randn(out_features, generator=generator) if bias else None
    x = torch.randn(rows, 1, in_features, generator=generator)  # a decoding step's (B, 1, C)
    got = gemv.blocked_product(x, gemv.blocked_weight(weight), out_features, b)
    assert got.shape == (rows, 1, out_features)
    torch.testing.assert_close(got, F.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    strided = torch.randn(rows, 5, in_features, generator=generator)[:, -1:]  # a prefill's last positions
    torch.testing.assert_close(gemv.blocked_product(strided, gemv.blocked_weight(weight), out_features, b),
                               F.linear(strided, weight, b), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_layers_and_the_tied_head_use_it_up_to_max_rows_only(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 40), nn.GELU(), nn.Linear(40, 16))
    decoding_layout(model)
    assert model[0].weight_copy.blocked is not None
    embedding = torch.randn(50, 16)
    head = TiedOutputProjection()
    calls = []
    product = gemv.blocked_product
    monkeypatch.setattr(gemv, "blocked_product", lambda *args, **kw: calls.append(1) or product(*args, **kw))
    with torch.inference_mode():
        for rows in (1, 2, 3, gemv.MAX_ROWS, gemv.MAX_ROWS + 1):
            x = torch.randn(rows, 1, 16)
            calls.clear()
            hidden = model(x)
            first, second = model[0], model[2]
            plain = F.linear(F.gelu(F.linear(x, first.weight, first.bias)), second.weight, second.bias)
            torch.testing.assert_close(hidden, plain, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(head(hidden, embedding), F.linear(hidden, embedding), rtol=1e-5, atol=1e-5)
            assert len(calls) == (3 if rows <= gemv.MAX_ROWS else 0), rows
    calls.clear()
    model(torch.randn(1, 16))  # outside inference mode: the weight itself, as training needs
    assert not calls


@needs_kernel
def test_the_blocked_copy_follows_the_weight():
    torch.manual_seed(0)
    model = nn.Linear(16, 8)
    decoding_layout(model)
    x = torch.randn(1, 16)
    with torch.no_grad():
        model.weight.mul_(2)  # bumps the version counter, as an optimizer step or load_state_dict does
    with torch.inference_mode():
        torch.testing.assert_close(model(x), F.linear(x, model.weight, model.bias), rtol=1e-5, atol=1e-6)


def test_lmkit_kernels_0_turns_it_off(monkeypatch):
    monkeypatch.setenv("LMKIT_KERNELS", "0")
    assert gemv._load() is False


def test_a_memory_too_small_for_three_copies_keeps_onednn_alone(monkeypatch):
    import lmkit.nn.layout as layout

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    model = nn.Linear(16, 8)  # 512 bytes of weight: the packed copy fits a quarter of 2.4 kB, both copies do not
    monkeypatch.setattr(layout, "_memory_bytes", lambda: 2400)
    decoding_layout(model)
    assert model.weight_copy.packed is not None and model.weight_copy.blocked is None


@needs_kernel
def test_the_kernel_runs_on_torchs_threads():
    # at::parallel_for's OpenMP pragmas are compiled into the kernel: built without -fopenmp it ran every
    # product on one thread, at half the machine's bandwidth, and gave the right values all the same.
    assert gemv.available()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.ops.lmkit_gemv.threads_used(64) == 2
        torch.set_num_threads(1)
        assert torch.ops.lmkit_gemv.threads_used(64) == 1
    finally:
        torch.set_num_threads(threads)


@needs_kernel
def test_a_build_lock_left_by_a_killed_build_does_not_hang_later_processes(monkeypatch):
    # torch waits on its build lock without end; a build killed with -9 left one, and every later
    # lmkit generate hung without a word. A fresh lock (a build going on now) means oneDNN for this
    # process; a stale one is removed and the kernel loads.
    import os
    import time

    from torch.utils import cpp_extension

    assert gemv.available()  # built and cached: a load below takes no build
    lock = os.path.join(cpp_extension._get_build_directory(gemv.extension_name(), verbose=False), "lock")
    try:
        open(lock, "w").close()
        started = time.monotonic()
        assert gemv._load() is False
        assert time.monotonic() - started < 5 and os.path.exists(lock)
        old = time.time() - gemv.STALE_LOCK_S - 1
        os.utime(lock, (old, old))
        assert gemv._load() is True
        assert not os.path.exists(lock)
    finally:
        if os.path.exists(lock):
            os.remove(lock)
