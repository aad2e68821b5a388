"""The decoder-only cache layouts: which decoders get the fast one, and the fused operator's semantics.

The fast layout's parity with PyTorch (greedy, beam search with in-place reordering, sampling,
padded batches, prefixes) is tested where the default export is used: test_export, test_prefixes,
test_batch_independence and the conformance suite; the genai layout's in test_genai and test_export.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lmkit.exports.decoder_only import buffer_layout_applies  # noqa: E402
from lmkit.exports.fused_attention import group_query_attention  # noqa: E402


def decoder_of(preset: str, *overrides: str):
    from lmkit.model import build_model
    from lmkit.registry import get_host
    from lmkit.spec import apply_overrides, load_source, resolve

    host = get_host()
    model = build_model(resolve(apply_overrides(load_source(preset, host), list(overrides)), host), seed=0)
    return model.decoder


def why_not(decoder, **windows) -> str | None:
    config = decoder.config
    layers = {layer: config.band_width for layer, banded in enumerate(getattr(decoder, "banded", ())) if banded}
    return buffer_layout_applies(decoder, n_layers=config.n_layers, head_dim=config.d_model // config.n_heads,
                                 max_length=getattr(config, "max_positions", None), windows=layers)


def test_plain_causal_decoders_get_the_fast_layout():
    assert why_not(decoder_of("gpt2-tiny")) is None
    assert why_not(decoder_of("gpt-tiny")) is None  # GPT (2018): post-LN, the same attention


def test_the_others_keep_the_genai_layout_and_say_why():
    assert "window" in why_not(decoder_of("gpt3-tiny"))
    assert "multiple of 8, and it is 12" in why_not(decoder_of("gpt2-tiny", "decoder.n_heads=4", "decoder.d_model=48"))


def test_the_fast_layout_is_chosen_from_the_plan_and_written_in_the_manifest(tiny_gpt2):
    """The exporter asks for a layout, the dimensions say which one the graph has."""
    from lmkit.exports.decoder_only import decoder_only_plan
    from lmkit.model import load_model

    model = load_model(tiny_gpt2)[0].eval()
    config = model.decoder.config
    sizes = dict(n_layers=config.n_layers, n_heads=config.n_heads, head_dim=16, vocab_size=config.vocab_size,
                 max_length=config.max_positions)
    fast = decoder_only_plan(model, **sizes, cache_layout="buffer")
    assert fast.dimensions["cache_layout"] == "buffer" and fast.graphs[0].shared_cache
    assert fast.graphs[0].inputs[3].shape == ("batch_size", 4, config.max_positions, 16)
    concat = decoder_only_plan(model, **sizes)
    assert "cache_layout" not in concat.dimensions and not concat.graphs[0].shared_cache


def onnxruntime_gqa(num_heads: int, head_dim: int, scale: float = 0.0):
    """An onnxruntime session of one GroupQueryAttention node, as the fast graphs have it."""
    from onnx import TensorProto, helper

    C = num_heads * head_dim
    float_input = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in (
        ("query", ["B", "T", C]), ("key", ["B", "T", C]), ("value", ["B", "T", C]),
        ("past_key", ["B", num_heads, "M", head_dim]), ("past_value", ["B", num_heads, "M", head_dim]))]
    node = helper.make_node("GroupQueryAttention", ["query", "key", "value", "past_key", "past_value", "seqlens_k",
                                                    "total", "", "", "", "bias"], ["output", "present_key",
                                                                                   "present_value"],
                            domain="com.microsoft", num_heads=num_heads, kv_num_heads=num_heads, scale=scale)
    graph = helper.make_graph([node], "gqa", [
        *float_input, helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["B"]),
        helper.make_tensor_value_info("total", TensorProto.INT32, []),
        helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["b", "h", "T", "S"])], [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, ["B", "T", C]),
        *(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", num_heads, "M", head_dim])
          for name in ("present_key", "present_value"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch, new, past, t5", [(3, 5, 0, False), (3, 1, 6, False), (1, 4, 6, False),
                                                  (3, 1, 6, True), (2, 3, 0, True)])
def test_the_custom_op_computes_what_onnxruntime_does(batch, new, past, t5):
    """The torch op the export traces and onnxruntime's node agree: causal attention, the bias, the scale, the
    new keys/values at their offset and the buffers beyond left as they were. GPT's graphs give a padding bias
    (B, 1, T, total) and the default scale; T5's, a bias per head (1, nh, T, total) and scale 1."""
    heads, head_dim, capacity = 2, 8, 16
    rng = np.random.default_rng(0)
    total = past + new
    q, k, v = (rng.standard_normal((batch, new, heads * head_dim)).astype(np.float32) for _ in range(3))
    past_key, past_value = (rng.standard_normal((batch, heads, capacity, head_dim)).astype(np.float32)
                            for _ in range(2))
    mask = np.ones((batch, total), dtype=bool)
    if t5:  # T5's relative position bias, one per head, no padding; unscaled
        bias = rng.standard_normal((1, heads, new, total)).astype(np.float32)
        scale = 1.0
    else:
        mask[0, :2] = False  # a left-padded row
        bias = np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :].repeat(new, axis=2)
        bias[:, 0, np.arange(new), np.arange(past, total)] = 0.0  # a padded query sees itself (as in PyTorch)
        scale = 0.0
    seqlens = np.full(batch, total - 1, dtype=np.int32)
    inputs = dict(query=q, key=k, value=v, past_key=past_key, past_value=past_value, seqlens_k=seqlens,
                  total=np.array(total, dtype=np.int32), bias=bias)
    session = onnxruntime_gqa(heads, head_dim, scale)
    binding = session.io_binding()  # the buffers shared, as lmkit's runtime runs the graph
    shared = {name: ort.OrtValue.ortvalue_from_numpy(inputs[name].copy()) for name in ("past_key", "past_value")}
    for name, value in inputs.items():
        if name in shared:
            binding.bind_ortvalue_input(name, shared[name])
        else:
            binding.bind_cpu_input(name, value)
    binding.bind_output("output", "cpu")
    binding.bind_ortvalue_output("present_key", shared["past_key"])
    binding.bind_ortvalue_output("present_value", shared["past_value"])
    session.run_with_iobinding(binding)
    output = binding.get_outputs()[0].numpy()
    expected = group_query_attention(*(torch.from_numpy(inputs[name]) for name in (
        "query", "key", "value", "past_key", "past_value", "seqlens_k", "total", "bias")), heads, scale)
    real = mask[:, past:]  # a padded query's output is never used
    np.testing.assert_allclose(output[real], expected[0].numpy()[real], atol=1e-5)
    np.testing.assert_allclose(shared["past_key"].numpy(), expected[1].numpy(), atol=1e-6)
    np.testing.assert_allclose(shared["past_value"].numpy(), expected[2].numpy(), atol=1e-6)
    # The buffers beyond the filled part are untouched: written in place, nothing else.
    np.testing.assert_array_equal(shared["past_key"].numpy()[:, :, total:], past_key[:, :, total:])
