"""The decoding fast paths change where numbers live, never what they are: the (in, out) weight layout,
the cache's reorder into a second buffer, the tied head's one 2-D product."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmkit.nn import KVCache, TiedOutputProjection, decoding_layout

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 48), nn.GELU(), nn.Linear(48, 16, bias=False), nn.Embedding(10, 16))


@needs_onednn
def test_packed_layout_keeps_values_shapes_and_state_dict():
    from lmkit.nn.layout import PackedLinear

    model = small_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    inputs = torch.randn(8, 3, 16)
    expected = model[:3](inputs)
    assert decoding_layout(model) == 2  # the two Linear layers, not the embedding
    assert isinstance(model[0], PackedLinear) and isinstance(model[0], nn.Linear)
    assert model[0].weight_copy.packed is not None  # packed now, not at the first step
    assert list(model.state_dict()) == list(before)
    for name, tensor in model.state_dict().items():
        assert tensor.shape == before[name].shape and torch.equal(tensor, before[name])
    with torch.inference_mode():
        for shape in ((8, 3, 16), (1, 16), (1, 1, 16), (64, 16)):  # a prefill, one row, beams
            x = torch.randn(*shape)
            torch.testing.assert_close(model[:3](x), _plain(model, x), rtol=1e-5, atol=1e-6)
        last = torch.randn(4, 5, 16)[:, -1:]  # rows that are not contiguous (a prefill's last positions)
        torch.testing.assert_close(model[:3](last), _plain(model, last), rtol=1e-5, atol=1e-6)
    assert torch.equal(model[:3](inputs), expected)  # outside inference mode it is nn.Linear
    assert decoding_layout(model) == 0  # already laid out: nothing changes again


def _plain(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    first, second = model[0], model[2]
    return F.linear(F.gelu(F.linear(x, first.weight, first.bias)), second.weight)


@needs_onednn
def test_packed_copy_is_made_again_when_the_weight_changes_and_not_kept_by_copies(tmp_path):
    import copy

    from safetensors.torch import load_file

    from lmkit.model import save_weights

    model = nn.Linear(8, 4)
    decoding_layout(model)
    x = torch.randn(5, 8)
    with torch.inference_mode():
        model(x)
    packed = model.weight_copy.packed
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(x).square().sum().backward()
    optimizer.step()
    with torch.inference_mode():
        torch.testing.assert_close(model(x), F.linear(x, model.weight, model.bias), rtol=1e-5, atol=1e-6)
    assert model.weight_copy.packed is not packed
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.weight.mul_(3)
    with torch.inference_mode():
        torch.testing.assert_close(twin(x), F.linear(x, twin.weight, twin.bias), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x), F.linear(x, model.weight, model.bias), rtol=1e-5, atol=1e-6)
    save_weights(model, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_file(str(tmp_path / "w.safetensors"))["weight"], model.weight.detach())


@needs_onednn
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace's: the tracer is what is tested
def test_a_trace_under_inference_mode_records_the_plain_product():
    model = nn.Linear(8, 4)
    decoding_layout(model)
    with torch.inference_mode():
        graph = str(torch.jit.trace(model, torch.randn(2, 8)).graph)
    assert "mkldnn" not in graph and "linear" in graph


@pytest.mark.parametrize("why", ["no oneDNN", "too little memory"])
def test_without_packing_weights_get_the_in_out_memory_order(why, monkeypatch):
    import lmkit.nn.layout as layout

    if why == "no oneDNN":
        monkeypatch.setattr(layout, "packed_weight", lambda weight: None)
    else:
        monkeypatch.setattr(layout, "_memory_bytes", lambda: 4 * 1000)  # 1 kB for the copies; they need 6.1
    model = small_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    x = torch.randn(8, 3, 16)
    expected = model[:3](x)
    assert decoding_layout(model) == 2
    assert type(model[0]) is nn.Linear
    for name, tensor in model.state_dict().items():
        assert tensor.shape == before[name].shape and torch.equal(tensor, before[name])
    assert model[0].weight.t().is_contiguous() and not model[0].weight.is_contiguous()
    assert model[3].weight.is_contiguous()
    torch.testing.assert_close(model[:3](x), expected, rtol=1e-5, atol=1e-6)
    assert decoding_layout(model) == 0


def test_decoding_layout_leaves_other_dtypes_alone():
    model = nn.Linear(4, 6).to(torch.bfloat16)
    assert decoding_layout(model) == 0 and model.weight.is_contiguous() and type(model) is nn.Linear


def reference_reorder(tensor: torch.Tensor, rows: torch.Tensor, length: int) -> torch.Tensor:
    return tensor[:, rows, :, :length]


@pytest.mark.parametrize("length", [2, 9])  # filled under a quarter of the cache, and most of it
def test_kv_cache_reorder_matches_a_plain_gather(length):
    torch.manual_seed(0)
    cache = KVCache(2, 4, 3, 10, 5)
    k, v = torch.randn(4, 3, length, 5), torch.randn(4, 3, length, 5)
    for layer in range(2):
        cache.update(layer, k + layer, v - layer)
    cache.advance(length)
    keys, values = cache.keys[:, :, :, :length].clone(), cache.values[:, :, :, :length].clone()
    # a few rows moved (copied alone), most rows moved (a whole gather), none moved, all from one row
    for rows in ([0, 1, 2, 0], [0, 0, 1, 3], [3, 2, 1, 0], [0, 1, 2, 3], [1, 1, 1, 1]):
        rows = torch.tensor(rows)
        keys, values = keys[:, rows], values[:, rows]
        cache.reorder(rows)
        assert torch.equal(cache.keys[:, :, :, :length], keys)
        assert torch.equal(cache.values[:, :, :, :length], values)
    # Decoding goes on in the buffer the reorder left: a new position lands in every row.
    new = torch.randn(4, 3, 1, 5)
    got_k, _ = cache.update(0, new, new)
    assert torch.equal(got_k[:, :, length:], new) and torch.equal(got_k[:, :, :length], keys[0])


def test_kv_cache_reorder_to_another_batch_size():
    cache = KVCache(1, 2, 1, 4, 2)
    cache.update(0, torch.arange(4.0).view(2, 1, 1, 2), torch.zeros(2, 1, 1, 2))
    cache.advance(1)
    cache.reorder(torch.tensor([1, 1, 0]))
    assert cache.batch_size == 3
    assert cache.keys[0, :, 0, 0].tolist() == [[2.0, 3.0], [2.0, 3.0], [0.0, 1.0]]


@pytest.mark.parametrize("packing", [True, False])
def test_tied_head_equals_the_embedding_product(packing, monkeypatch):
    # With oneDNN, every row count runs against a packed copy (or lmkit's kernel's, up to its rows); without
    # either (packing=False: as a torch built without oneDNN where the kernel cannot be built), 1 to 8 rows
    # against a contiguous transposed copy, 9 to 64 as a tall product and more against the embedding itself.
    # Same logits each way.
    import lmkit.nn.layout as layout

    if not packing:
        monkeypatch.setattr(layout, "packed_weight", lambda weight: None)
        monkeypatch.setattr(layout.gemv, "available", lambda: False)
    elif not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    torch.manual_seed(0)
    embedding = torch.randn(50, 12)  # made outside inference mode, so the head keeps its copy
    head = TiedOutputProjection()
    with torch.inference_mode():
        for shape in ((8, 1, 12), (3, 12), (2, 2, 12), (1, 1, 12), (32, 1, 12), (4, 4, 12), (64, 12), (65, 12)):
            h = torch.randn(*shape)
            logits = head(h, embedding)
            assert logits.shape == (*shape[:-1], 50)
            torch.testing.assert_close(logits, h @ embedding.t(), rtol=1e-5, atol=1e-5)
        copy = head._packed.packed if packing else head._copy
        assert copy is not None and (head._copy is None) == packing
        head(torch.randn(4, 12), embedding)
        assert (head._packed.packed if packing else head._copy) is copy  # kept while the embedding is unchanged...
    with torch.no_grad():
        embedding.mul_(2)  # ...and made again once it changes (an optimizer step, load_state_dict)
    with torch.inference_mode():
        h = torch.randn(4, 12)
        torch.testing.assert_close(head(h, embedding), h @ embedding.t(), rtol=1e-5, atol=1e-5)
        assert (head._packed.packed if packing else head._copy) is not copy
    h = torch.randn(4, 12, requires_grad=True)  # training: the embedding itself, gradients flow
    head(h, embedding).sum().backward()
    torch.testing.assert_close(h.grad, embedding.sum(0).expand(4, 12))


@pytest.mark.parametrize("inference", [False, True])
def test_grown_cache_equals_concatenation_and_never_overwrites_another_continuation(inference):
    from lmkit.nn.cache import grow, select_rows

    torch.manual_seed(0)
    with torch.inference_mode(inference):
        past = torch.randn(2, 3, 4, 5)  # (L, B, P, hs), positions on dim 2
        first = grow(past, 1, dim=2)
        first[:, :, 4:] = 1.0
        second = grow(first, 2, dim=2)  # in place, in first's buffer
        second[:, :, 5:] = 2.0
        assert second.data_ptr() == first.data_ptr()
        expected = torch.cat([past, torch.ones(2, 3, 1, 5), torch.full((2, 3, 2, 5), 2.0)], dim=2)
        assert torch.equal(second, expected)
        other = grow(first, 2, dim=2)  # first continued a second time: a copy, second keeps its values
        other[:, :, 5:] = 3.0
        assert other.data_ptr() != first.data_ptr() and torch.equal(second, expected)
        assert torch.equal(other[:, :, :5], expected[:, :, :5])
        for _ in range(40):  # past the buffer's room: it doubles, values stay
            second = grow(second, 1, dim=2)
            second[:, :, -1:] = 5.0
        assert torch.equal(second[:, :, :7], expected) and second.shape[2] == 47
        rows = torch.tensor([2, 2, 0])
        selected = select_rows(second, 1, rows)
        assert torch.equal(selected, second.index_select(1, rows))
        grown = grow(selected, 1, dim=2)  # the selection kept room: in place again
        assert grown.data_ptr() == selected.data_ptr()
        assert torch.equal(select_rows(past, 1, rows), past.index_select(1, rows))  # a plain tensor


@pytest.mark.parametrize("optimizer", ["fused", "foreach", "for-loop"])
def test_copies_follow_every_optimizer_step(optimizer):
    # torch's fused AdamW updates its parameters without bumping their version counters: a GLM fine-tune
    # scored every dev evaluation after the first with the output layer of the first.
    torch.manual_seed(0)
    embedding = nn.Embedding(50, 12)
    model = nn.Sequential(nn.Linear(12, 12), nn.Tanh())
    decoding_layout(model)
    head = TiedOutputProjection()
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[optimizer]
    adamw = torch.optim.AdamW([*model.parameters(), *embedding.parameters()], lr=0.1, **options)
    x = torch.randn(3, 12)
    for _ in range(3):  # evaluate (the copies are made), train a step, evaluate again
        with torch.inference_mode():
            h = model(x)
            torch.testing.assert_close(h, torch.tanh(F.linear(x, model[0].weight, model[0].bias)))
            torch.testing.assert_close(head(h, embedding.weight), F.linear(h, embedding.weight))
        head(model(x), embedding.weight).logsumexp(-1).sum().backward()
        adamw.step()
        adamw.zero_grad()


@pytest.mark.parametrize("rows", [[0, 1, 2, 3], [1, 0, 2, 3], [0, 0, 1, 1], [3, 2, 1, 0], [2, 2, 2, 0]])
def test_reorder_in_place_equals_index_select_and_copies_only_moved_rows(rows):
    # Beam search's reorder of an encoder-decoder's cache: rows that are others' sources are taken out first.
    from lmkit.nn.cache import grow, reorder_rows

    torch.manual_seed(0)
    with torch.inference_mode():
        past = grow(torch.randn(2, 4, 3, 5), 1, dim=2)  # (L, B, P, hs), room for more positions
        past[:, :, 3:] = 7.0
        expected = past.index_select(1, torch.tensor(rows))
        reordered = reorder_rows(past, 1, torch.tensor(rows))
        assert torch.equal(reordered, expected)
        assert reordered.data_ptr() == past.data_ptr()  # in the same buffer, which keeps its room
        assert grow(reordered, 1, dim=2).data_ptr() == past.data_ptr()
        plain = torch.randn(2, 4, 3)  # not from grow: a new tensor, the input untouched
        kept = plain.clone()
        assert torch.equal(reorder_rows(plain, 1, torch.tensor(rows)), kept.index_select(1, torch.tensor(rows)))
        assert torch.equal(plain, kept)
    fewer = torch.tensor(rows[:2])  # finished rows dropped: fewer rows, a new buffer
    assert torch.equal(reorder_rows(reordered, 1, fewer), reordered.index_select(1, fewer))


def test_a_torch_that_packs_but_cannot_multiply_gets_the_in_out_order(monkeypatch):
    # Another CPU architecture's oneDNN may pack a weight and then fail the product: found before the first step.
    import lmkit.nn.layout as layout

    def broken(x, packed, bias=None):
        raise RuntimeError("mkldnn linear is not supported on this platform")

    monkeypatch.setattr(layout, "packed_product", broken)
    model = nn.Linear(8, 4)
    assert decoding_layout(model) == 1 and type(model) is nn.Linear and model.weight.t().is_contiguous()
    with torch.inference_mode():
        model(torch.randn(2, 8))
