"""How linear weights are laid out for inference on the CPU.

A decoding step multiplies a few rows (one token per row: batch x beams) by every weight of the model,
so its speed is how fast the matrix-product kernels stream weights from memory. Measured at 2 threads,
weights read one after another so that none is in the cache when it is read, as in a decoding step
(`python benchmarks/bench_layout.py`: a T5-small decoder's 60 products; the tied head of 32128 x 512),
milliseconds per pass:

    rows                                   1      4      8     32
    layers  F.linear, weight (out, in)   8.9   12.9    9.9   16.4
            weight as (in, out) memory   7.3   12.7   11.7   17.9
            oneDNN-packed copy           4.7    3.9    5.5   10.4
    head    F.linear(h, embedding)       6.1   10.0    9.6   14.2
            oneDNN-packed copy           1.6    1.7    2.4    5.4

oneDNN (torch.ops.mkldnn, which torch.compile's CPU backend uses for frozen weights) packs a weight into
the blocked order its kernels read, once; the packed copy serves every row count (one packed for 8 rows
ran 1 to 512 rows as fast as one packed for each). So `decoding_layout` gives each linear layer of a
model opened for inference such a copy (`PackedLinear`), and `TiedOutputProjection` keeps one of the
embedding it multiplies by. The copy doubles the memory those weights take; where that would pass a
quarter of the machine's memory, or where torch has no oneDNN, the weights are instead laid out as
(in, out) memory in place (MKL's second-best order above, which costs nothing). For one to eight rows
(greedy decoding at batch 1 to 8, beams of one source) lmkit's own kernel reads a second, blocked copy
faster than oneDNN does (lmkit.nn.gemv, where it can be built; the copies then take three times the
weights' memory, and the kernel's are left out where they would pass the quarter).

A copy is used under torch.inference_mode() only, for float32 on the CPU, and made again when its weight
changes (an optimizer step or load_state_dict bumps the weight's version counter); training, tracing for
export and other devices use the weight itself. Values agree with F.linear's to float rounding (about
1e-7 relative), not bit for bit.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from . import gemv

PACKED_FOR_ROWS = 8  # oneDNN packs for a row count; measured: 8 to 64 alike, 1 slower at 8 rows and more


def packed_weight(weight: Tensor) -> Tensor | None:
    """weight (out, in) packed by oneDNN for its matrix products, or None where torch cannot (no oneDNN in
    this build, a dtype other than float32, or a build that lacks or refuses the packing)."""
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_FOR_ROWS)
    except (AttributeError, RuntimeError):
        return None


def packed_product(x: Tensor, packed: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T (+ bias) for x (..., in) against `packed_weight(weight)`: (..., out)."""
    flat = x.reshape(-1, x.size(-1))  # oneDNN takes a 2-D input; (B, 1, C) as (B, C), not B products
    out = torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [], "")
    return out.view(*x.shape[:-1], out.size(-1))


def weight_identity(weight: Tensor) -> tuple:
    """What tells a weight's values apart from what they were: its storage, version counter, dtype and shape.

    The version counter is what in-place changes bump, but torch's fused optimizers (AdamW(fused=True), as
    lmkit trains with on the CPU and CUDA) update their parameters without bumping it (torch 2.13): a copy
    kept by it alone went stale, and a GLM fine-tune scored its dev set with the step-16 output layer at
    every later evaluation. So every fused step bumps its parameters' counters (_bump_fused_parameters).
    """
    return weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape)


def _bump_fused_parameters(optimizer, args, kwargs) -> None:
    """An optimizer post-step hook, for every optimizer in the process: a fused step's parameters changed."""
    for group in optimizer.param_groups:
        if group.get("fused"):
            for parameter in group["params"]:
                torch.autograd.graph.increment_version(parameter)


register_optimizer_step_post_hook(_bump_fused_parameters)


class PackedCopy:
    """A weight's copies laid out for the CPU's kernels, kept while the weight is unchanged and made again
    when it changes: oneDNN's packed copy, and, with `blocked`, the copy lmkit's few-row kernel
    reads (lmkit.nn.gemv) where that kernel is available.

    `product(x, weight, bias)` multiplies through them, or is None where the weight itself is to be used:
    outside inference mode, off the CPU, a dtype other than float32, while tracing or compiling (the
    copies are no part of a graph), or for an inference tensor (a model built or loaded under
    torch.inference_mode(), whose parameters have no version counter to tell a change by).
    """

    def __init__(self, blocked: bool = True):
        self.packed: Tensor | None = None
        self.blocked: Tensor | None = None
        self.wants_blocked = blocked
        self._made_from: tuple | None = None

    def product(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor | None:
        """x (..., in) @ weight.T (+ bias) -> (..., out) through a copy, or None (see the class docstring)."""
        if (not torch.is_inference_mode_enabled() or x.device.type != "cpu" or x.dtype != torch.float32
                or weight.dtype != torch.float32 or weight.is_inference() or torch.jit.is_tracing()
                or torch.compiler.is_compiling()):
            return None
        self.of(weight)
        rows = x.numel() // max(x.size(-1), 1)
        if self.blocked is not None and 1 <= rows <= gemv.MAX_ROWS:
            return gemv.blocked_product(x, self.blocked, weight.size(0), bias)
        if self.packed is not None:
            return packed_product(x, self.packed, bias)
        return None

    def of(self, weight: Tensor) -> Tensor | None:
        """The packed copy of `weight` (the copies made now if it changed since), or None where it cannot be packed."""
        source = weight_identity(weight)
        if source != self._made_from:
            self.packed = packed_weight(weight)
            self.blocked = gemv.blocked_weight(weight) if self.wants_blocked and gemv.available() else None
            self._made_from = source
        return self.packed

    def __deepcopy__(self, memo) -> PackedCopy:
        return PackedCopy(self.wants_blocked)  # a copied module's weight is another tensor: copies are made again

    def __getstate__(self) -> dict:
        return {"packed": None, "blocked": None, "wants_blocked": self.wants_blocked, "_made_from": None}


class PackedLinear(nn.Linear):
    """nn.Linear that multiplies by laid-out copies of its weight under inference mode on the CPU (PackedCopy).

    Made from an nn.Linear by `decoding_layout` (the same module, its class changed): parameters, names and
    state dict stay nn.Linear's, and outside inference mode it is nn.Linear. x (..., in_features) ->
    (..., out_features).
    """

    weight_copy: PackedCopy

    def forward(self, x: Tensor) -> Tensor:
        product = self.weight_copy.product(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias) if product is None else product


def decoding_layout(module: nn.Module) -> int:
    """Lay every float32 CPU nn.Linear in `module` out for inference; returns how many changed.

    Each becomes a PackedLinear with its packed copy made now, or, without oneDNN or where the copies
    would pass a quarter of the machine's memory, keeps its weight with (in, out) memory order (w becomes
    w.t().contiguous().t(): values, shape and names unchanged). Safe to call again: a layer already laid
    out is left alone. Weights on other devices or in other dtypes, and inference tensors, are left as they are.
    """
    linears = [linear for linear in module.modules() if type(linear) is nn.Linear and not linear.weight.is_inference()
               and linear.weight.device.type == "cpu" and linear.weight.dtype == torch.float32]
    weight_bytes = sum(linear.weight.numel() * 4 for linear in linears)
    budget = _memory_bytes() // 4
    pack = weight_bytes <= budget and _packing_works()
    blocked = 2 * weight_bytes <= budget  # the few-row kernel's copies too (lmkit.nn.gemv)
    changed = 0
    with torch.no_grad():
        for linear in linears:
            if pack:
                linear.__class__ = PackedLinear
                linear.weight_copy = PackedCopy(blocked)
                linear.weight_copy.of(linear.weight)
                changed += 1
            elif not linear.weight.t().is_contiguous():
                linear.weight.data = linear.weight.data.t().contiguous().t()
                changed += 1
    return changed


def _packing_works() -> bool:
    """Whether this torch packs a weight and multiplies by it correctly: a build whose oneDNN packs but cannot
    run the product (another CPU architecture) gets the (in, out) order instead of an error at the first step."""
    weight, x = torch.arange(12.0).view(3, 4) / 7, torch.arange(8.0).view(2, 4) / 5
    packed = packed_weight(weight)
    if packed is None:
        return False
    try:
        with torch.inference_mode():
            return bool(torch.allclose(packed_product(x, packed), F.linear(x, weight), rtol=1e-4, atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


def _memory_bytes() -> int:
    """The machine's physical memory, or a size that allows any model where the platform does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 1 << 62
