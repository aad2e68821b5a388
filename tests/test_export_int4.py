"""`lmkit export --quantize int4`: onnxruntime's MatMulNBitsQuantizer, the blocks in 4 bits, the output
projection in 8 (4 with --int4-output), the embeddings in 4 with --int4-embeddings; validated like int8."""
import json
import os

import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from lmkit.exports.manifest import MANIFEST  # noqa: E402


@pytest.fixture(scope="module")
def int4_exports(tiny_gpt2, tiny_gpt2_export, tmp_path_factory):
    """The CLI's int4 export, and the fp32 export's graph quantized with everything in 4 bits."""
    from conftest import run_cli

    from lmkit.exports.precision import Int4Options, to_int4

    root = tmp_path_factory.mktemp("int4")
    result = run_cli("export", tiny_gpt2, "--out", root / "int4", "--quantize", "int4", "--license", "mit")
    assert result.code == 0, result.err
    assert "top-1 agreement" in result.err
    os.makedirs(root / "all")
    to_int4(os.path.join(tiny_gpt2_export, "model.onnx"), str(root / "all" / "model.onnx"),
            Int4Options(output_bits=4, embeddings=True))
    return {"int4": str(root / "int4"), "all": str(root / "all")}


def weight_ops(directory):
    """{op_type: [bits, ...]} of the graph's quantized nodes, and the plain MatMuls that read a weight."""
    model = onnx.load(os.path.join(directory, "model.onnx"))
    initializers = {tensor.name for tensor in model.graph.initializer}
    ops = {}
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized", "Gather"):
            bits = next((a.i for a in node.attribute if a.name == "bits"), None)
            ops.setdefault(node.op_type, []).append(bits)
        if node.op_type == "MatMul" and node.input[1] in initializers:
            ops.setdefault("MatMul with a weight", []).append(None)
    return ops


def test_blocks_int4_output_projection_int8(int4_exports):
    ops = weight_ops(int4_exports["int4"])
    # 2 layers x (qkv, attention out, fc, mlp out) in 4 bits, the tied output projection (its own copy) in 8
    assert sorted(ops["MatMulNBits"]) == [4] * 8 + [8]
    assert "MatMul with a weight" not in ops and "GatherBlockQuantized" not in ops
    manifest = json.load(open(os.path.join(int4_exports["int4"], MANIFEST)))
    assert manifest["dtype"] == "int4"
    assert manifest["quantization"]["output_projection"] == "int8"
    assert manifest["quantization"]["embeddings"] == "fp32"
    assert manifest["validation"]["top1_agreement"] >= 0.5
    assert "license: mit" in open(os.path.join(int4_exports["int4"], "README.md")).read()  # the model card's


def test_int4_output_and_embeddings_on_request(int4_exports):
    ops = weight_ops(int4_exports["all"])
    assert sorted(ops["MatMulNBits"]) == [4] * 9
    assert len(ops["GatherBlockQuantized"]) == 2 and "Gather" not in ops  # token and position tables
    sizes = {name: os.path.getsize(os.path.join(path, "model.onnx")) for name, path in int4_exports.items()}
    assert sizes["all"] < sizes["int4"]


def test_the_int4_export_generates_without_torch(int4_exports, run):
    result = run("generate", int4_exports["int4"], "--prompt", "the cat", "--max-new-tokens", "5", "--json")
    assert result.code == 0, result.err
    assert len(json.loads(result.out)[0]["tokens"]) == 5


def test_int4_flags_need_int4(tiny_gpt2, run, tmp_path):
    result = run("export", tiny_gpt2, "--out", tmp_path / "x", "--quantize", "int8", "--int4-embeddings")
    assert result.code != 0 and "--quantize int4" in result.err and not (tmp_path / "x").exists()
