"""Training's matrix products on the CPU through oneDNN rather than MKL.

nn.Linear's product is x @ W.T; torch runs it in float32 on the CPU through MKL's sgemm. On the 2-core
test machine (an AMD EPYC with AVX-512, torch 2.13, 2 threads, Nov 30) oneDNN's matmul ran gpt-mini's
training products 5-25% faster: for 2048 rows, 384 -> 1536 at 212 against 165 GFLOP/s, 1536 -> 384 at
222 against 182; the backward's x-gradient (gy @ W) at 204-219 against 194-198. The weight gradient
(gy.T @ x) was faster in MKL (183-194 against 116-191 GFLOP/s), so it stays there. Whole steps
(fwd+bwd+AdamW, `benchmarks/bench_gpt2.py`'s shapes) in turns with MKL's and transformers': gpt-mini
8 x 256 tokens 1.02-1.05x MKL's speed, gpt2-small 4 x 256 1.05-1.15x.

`linear(x, weight, bias)` is F.linear's product with those kernels where they apply: float32 on the CPU,
plain tensors (not a DTensor shard), outside autocast (which gives F.linear its bf16 products), tracing,
compiling and export (graphs keep the standard operator), and where this torch has oneDNN and it gives
F.linear's values (checked once). Elsewhere it is F.linear. The Trainer makes every nn.Linear of a model
it trains on the CPU a `OneDNNLinear` (`training_layout`), and the tied output layers
(lmkit.nn.tied) use `linear` outside inference mode. Values agree with F.linear's to float rounding
(about 1e-6 relative), not bit for bit; each is deterministic, so an exact resume stays exact.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Product(torch.autograd.Function):
    """x (..., in) @ weight (out, in).T + bias (out,): forward and the x-gradient in oneDNN, the weight's in MKL."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        flat = x.reshape(-1, x.size(-1))
        out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
        return out.view(*x.shape[:-1], weight.size(0))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        flat_grad = grad.reshape(-1, grad.size(-1))
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # weight.t() is a view: oneDNN reads it strided, with no transposed copy made
            grad_x = torch.ops.mkldnn._linear_pointwise(flat_grad, weight.t(), None, "none", [], "").view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = flat_grad.t() @ x.reshape(-1, x.size(-1))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias): x (..., in), weight (out, in), bias (out,) -> (..., out), with the CPU's
    float32 products in oneDNN where they apply (see the module docstring), else F.linear itself."""
    if _applies(x, weight, bias):
        return _Product.apply(x, weight, bias)
    return F.linear(x, weight, bias)


_PLAIN = (Tensor, nn.Parameter)  # not tensor subclasses such as FSDP2's DTensor shards


def _applies(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    # graphs first: while tracing, x.numel() would be read as a constant (and warned about)
    return (not torch.jit.is_tracing() and not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export()
            and x.is_cpu and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.numel() > 0
            and type(x) in _PLAIN and type(weight) in _PLAIN
            and (bias is None or (bias.dtype == torch.float32 and type(bias) in _PLAIN))
            and not torch.is_autocast_enabled("cpu") and _works())



@functools.cache
def _works() -> bool:
    """Whether this torch has oneDNN's linear and it gives F.linear's values and gradients (a build for
    another architecture may have the operator and fail to run it)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x = (torch.arange(12.0).view(3, 4) / 7).requires_grad_()
        weight = (torch.arange(8.0).view(2, 4) / 5).requires_grad_()
        bias = torch.tensor([0.5, -1.0], requires_grad=True)
        out = _Product.apply(x, weight, bias)
        out.sum().backward()
        x2, weight2, bias2 = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
        reference = F.linear(x2, weight2, bias2)
        reference.sum().backward()
        pairs = ((out, reference), (x.grad, x2.grad), (weight.grad, weight2.grad), (bias.grad, bias2.grad))
        return all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in pairs)
    except (AttributeError, RuntimeError):
        return False


class OneDNNLinear(nn.Linear):
    """nn.Linear whose product is `linear`'s: parameters, names and state dict stay nn.Linear's.
    x (..., in_features) -> (..., out_features)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def training_layout(module: nn.Module) -> int:
    """Make every float32 CPU nn.Linear in `module` a OneDNNLinear (the same module, its class changed);
    returns how many changed. Does nothing where oneDNN does not apply (no oneDNN, or it gives other values)."""
    if not _works():
        return 0
    changed = 0
    for layer in module.modules():
        if type(layer) is nn.Linear and layer.weight.is_cpu and layer.weight.dtype == torch.float32:
            layer.__class__ = OneDNNLinear
            changed += 1
    return changed
