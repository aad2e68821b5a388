"""lmkit.nn.onednn: training's CPU products in oneDNN give F.linear's values and gradients, the same
every time, and F.linear itself wherever oneDNN does not apply (autocast, tracing, other dtypes)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmkit.nn import onednn

needs_onednn = pytest.mark.skipif(not onednn._works(), reason="this torch has no working oneDNN linear")


def _calls(monkeypatch) -> list:
    calls = []
    apply = onednn._Product.apply
    monkeypatch.setattr(onednn._Product, "apply", lambda *args: calls.append(1) or apply(*args))
    return calls


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7), (1, 1, 7), (4, 6, 7)])
@pytest.mark.parametrize("out_features", [1, 13, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_are_linears(shape, out_features, bias, monkeypatch):
    calls = _calls(monkeypatch)
    generator = torch.Generator().manual_seed(out_features + len(shape))
    x = torch.randn(*shape, generator=generator, requires_grad=True)
    weight = torch.randn(out_features, shape[-1], generator=generator, requires_grad=True)
    b = torch.randn(out_features, generator=generator, requires_grad=True) if bias else None
    grad = torch.randn(*shape[:-1], out_features, generator=generator)
    out = onednn.linear(x, weight, b)
    assert calls
    out.backward(grad)
    leaves = [x, weight] + ([b] if bias else [])
    got = [out.detach()] + [t.grad for t in leaves]
    copies = [t.detach().clone().requires_grad_() for t in leaves]
    reference = F.linear(*copies)
    reference.backward(grad)
    for value, expected in zip(got, [reference.detach()] + [t.grad for t in copies]):
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_it_is_deterministic():
    # an exact resume replays a step and expects the same bits
    torch.manual_seed(0)
    x, weight, bias = torch.randn(512, 96), torch.randn(192, 96, requires_grad=True), torch.randn(192, requires_grad=True)
    results = []
    for _ in range(2):
        weight.grad = bias.grad = None
        out = onednn.linear(x, weight, bias)
        out.square().sum().backward()
        results.append((out.detach(), weight.grad.clone(), bias.grad.clone()))
    for first, second in zip(*results):
        assert torch.equal(first, second)


@needs_onednn
@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_autocast_tracing_and_other_dtypes_use_f_linear(monkeypatch):
    calls = _calls(monkeypatch)
    x, weight = torch.randn(3, 8), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn.linear(x, weight).dtype == torch.bfloat16  # autocast's own bf16 product
    assert onednn.linear(x.double(), weight.double()).dtype == torch.float64
    torch.jit.trace(lambda x: onednn.linear(x, weight), (x,), check_trace=False)
    assert onednn.linear(torch.randn(0, 8), weight).shape == (0, 4)
    assert not calls
    onednn.linear(x, weight)
    assert calls


def test_without_onednn_it_is_f_linear(monkeypatch):
    monkeypatch.setattr(onednn, "_works", lambda: False)
    calls = _calls(monkeypatch)
    x, weight = torch.randn(3, 8), torch.randn(4, 8)
    assert torch.equal(onednn.linear(x, weight), F.linear(x, weight))
    model = nn.Sequential(nn.Linear(8, 4))
    assert onednn.training_layout(model) == 0 and type(model[0]) is nn.Linear
    assert not calls


@needs_onednn
def test_training_layout_keeps_names_and_state_and_leaves_other_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4), nn.Linear(4, 4).double())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 8)
    before = model[:3](x)
    assert onednn.training_layout(model) == 2
    assert [type(layer) for layer in model] == [onednn.OneDNNLinear, nn.GELU, onednn.OneDNNLinear, nn.Linear]
    assert model.state_dict().keys() == state.keys()
    torch.testing.assert_close(model[:3](x), before, rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(model[:3](x), before, rtol=1e-5, atol=1e-6)
