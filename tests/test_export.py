"""lmkit export / inspect and the runtime: parity, manifest, precision, Triton layout, untrusted directories."""
import hashlib
import json
import os
import random
import re
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import lmkit.exports  # noqa: E402
from lmkit.decoding.beam import BeamSearch  # noqa: E402
from lmkit.decoding.greedy import Greedy  # noqa: E402
from lmkit.decoding.options import BeamSearchOptions, GreedyOptions  # noqa: E402
from lmkit.decoding.torch_backend import TorchBackend  # noqa: E402
from lmkit.errors import ArtifactError, LmkitError  # noqa: E402
from lmkit.exports.export import export_model  # noqa: E402
from lmkit.exports.manifest import MANIFEST  # noqa: E402
from lmkit.exports.validation import THRESHOLDS, Threshold  # noqa: E402
from lmkit.model import load_model  # noqa: E402

PROMPTS = ["the cat sat on", "dog", "a mat ran far away quickly"]


def make_tiny_gpt2(tmp_path_factory) -> str:
    """A 2-layer, 64-wide GPT-2 over a 300-token BPE, its weights spread out so its outputs vary."""
    from safetensors.torch import load_file, save_file

    from lmkit.model import compose
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions

    root = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    words = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "far", "away", "quickly", "home"]
    corpus = root / "text.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)) + "\n")
    tokenizer = ByteLevelBPE.train([str(corpus)], ByteLevelBPEOptions(vocab_size=300), progress=False)
    tokenizer.save(str(root / "tok"))
    overrides = ["decoder.n_layers=2", f"decoder.vocab_size={tokenizer.vocab_size}", f"tokenizer={root / 'tok'}"]
    compose("gpt2-tiny", overrides, str(root / "init"))
    # At initialisation every logit is within a hair of the others and greedy repeats one token;
    # spread weights make the parity tests compare varied tokens and real ties are unlikely.
    generator = torch.Generator().manual_seed(0)
    weights = {name: tensor + 0.3 * torch.randn(tensor.shape, generator=generator)
               for name, tensor in load_file(str(root / "init" / "model.safetensors")).items()}
    save_file(weights, str(root / "weights.safetensors"))
    compose("gpt2-tiny", overrides, str(root / "m0"), weights=str(root / "weights.safetensors"))
    return str(root / "m0")


@pytest.fixture(scope="module")
def model_dir(tiny_gpt2):
    return tiny_gpt2


@pytest.fixture(scope="module")
def exported(tiny_gpt2_export):
    return tiny_gpt2_export


def read_manifest(directory) -> dict:
    with open(os.path.join(directory, MANIFEST)) as handle:
        return json.load(handle)


def write_manifest(directory, manifest: dict) -> None:
    with open(os.path.join(directory, MANIFEST), "w") as handle:
        json.dump(manifest, handle)


def rehash(directory, name: str) -> None:
    """Record a file's current hash in the manifest, as an attacker who rewrites both would."""
    manifest = read_manifest(directory)
    path = os.path.join(directory, name)
    manifest["files"][name] = {"sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
                               "size": os.path.getsize(path)}
    write_manifest(directory, manifest)


@pytest.fixture
def copy(exported, tmp_path):
    """A private copy of the export to damage."""
    target = str(tmp_path / "export")
    shutil.copytree(exported, target)
    return target


# -- export and manifest -----------------------------------------------------------------------


def test_fp32_export_has_a_complete_manifest(exported, model_dir):
    manifest = read_manifest(exported)
    # The fast layout by default: no genai_config.json, and the manifest says why.
    assert sorted(os.listdir(exported)) == ["README.md", MANIFEST, "model.onnx", "tokenizer.json",
                                           "tokenizer_config.json"]
    assert "--layout genai" in manifest["genai"]["reason"] and manifest["genai"]["config"] is None
    assert manifest["dimensions"]["cache_layout"] == "buffer"
    assert manifest["format"] == "lmkit-onnx" and manifest["lmkit_version"] == "0.1.0"
    assert (manifest["architecture"], manifest["dtype"], manifest["opset"]) == ("decoder-only", "fp32", 18)
    assert manifest["exporter"] == {"name": "decoder.gpt2", "plugin": "gpt"}
    graph = manifest["graphs"]["model"]
    inputs = {t["name"]: t for t in graph["inputs"]}
    outputs = {t["name"]: t for t in graph["outputs"]}
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs["attention_mask"]["shape"] == ["batch_size", "past_sequence_length + sequence_length"]
    # Buffers of the whole context (64 positions), the filled part given by the attention mask.
    assert inputs["past_key_values.1.value"] == {"name": "past_key_values.1.value", "dtype": "float32",
                                                 "shape": ["batch_size", 4, 64, 16]}
    vocab = manifest["dimensions"]["vocab_size"]
    assert outputs["logits"]["shape"] == ["batch_size", "sequence_length", vocab]
    assert outputs["present.0.key"]["shape"] == ["batch_size", 4, 64, 16]
    assert graph["cache"][1] == {"input": "past_key_values.0.value", "output": "present.0.value"}
    assert manifest["special_tokens"] == {"bos": 0, "eos": 0, "pad": 0}  # <|endoftext|> plays every role
    assert manifest["generation"] == {"strategy": "greedy",
                                      "options": {"max_new_tokens": 50, "no_repeat_ngram_size": 0}}
    for name, entry in manifest["files"].items():
        data = open(os.path.join(exported, name), "rb").read()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_the_genai_layout_concatenates_its_cache_and_writes_genai_config(tiny_gpt2_genai_export):
    manifest = read_manifest(tiny_gpt2_genai_export)
    assert sorted(os.listdir(tiny_gpt2_genai_export)) == ["README.md", "genai_config.json", MANIFEST, "model.onnx",
                                                          "tokenizer.json", "tokenizer_config.json"]
    assert "cache_layout" not in manifest["dimensions"] and manifest["genai"] == {"config": "genai_config.json"}
    graph = manifest["graphs"]["model"]
    inputs = {t["name"]: t for t in graph["inputs"]}
    outputs = {t["name"]: t for t in graph["outputs"]}
    assert inputs["past_key_values.1.value"]["shape"] == ["batch_size", 4, "past_sequence_length", 16]
    assert outputs["present.0.key"]["shape"] == ["batch_size", 4, "past_sequence_length + sequence_length", 16]
    ops = {node.op_type for node in onnx.load(os.path.join(tiny_gpt2_genai_export, "model.onnx")).graph.node}
    assert "GroupQueryAttention" not in ops and "Concat" in ops


def test_the_fast_layout_attends_with_the_fused_operator(exported):
    nodes = onnx.load(os.path.join(exported, "model.onnx")).graph.node
    fused = [node for node in nodes if node.op_type == "GroupQueryAttention"]
    assert len(fused) == 2 and all(node.domain == "com.microsoft" for node in fused)  # one per layer
    # Nothing concatenates a layer's past with its new keys/values any more.
    assert not any(node.op_type == "Concat" and "past_key_values" in " ".join(node.input) for node in nodes)


def test_parity_is_measured_on_three_shape_sets_and_within_1e_4(exported):
    report = read_manifest(exported)["validation"]
    shapes = {(s["batch_size"], s["new_tokens"], s["past_tokens"]) for s in report["shape_sets"]}
    assert len(shapes) >= 3
    assert {b for b, _, _ in shapes} == {1, 3} and {n for _, n, _ in shapes} == {1, 17}
    assert {p for _, _, p in shapes} == {0, 9}
    assert report["threshold"] == {"max_abs_diff": 1e-4, "max_rel_diff": 1e-5}
    assert 0 < report["max_abs_diff"] <= 1e-4
    assert report["top1_agreement"] == 1.0
    for shape_set in report["shape_sets"]:
        assert set(shape_set["max_abs_diff"]) == {"logits", "present.*.key", "present.*.value"}


def test_graph_has_symbolic_axes_and_stores_each_weight_once(exported, model_dir):
    graph = onnx.load(os.path.join(exported, "model.onnx"))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.graph.input, *graph.graph.output]}
    assert dims["input_ids"] == ["batch_size", "sequence_length"]
    assert dims["present.1.key"] == ["batch_size", 4, 64, 16]  # a buffer of the whole context
    assert not any(node.metadata_props for node in graph.graph.node)  # no paths of the exporting machine
    model, _, _ = load_model(model_dir)
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    # The tied embedding (wte, also the output projection) is stored once.
    assert os.path.getsize(os.path.join(exported, "model.onnx")) < 1.1 * weight_bytes


def test_an_axis_fixed_by_the_exporter_stops_the_export(exported):
    from lmkit.exports.convert import ExportError, name_dimensions
    from lmkit.exports.graphs import Graph, TensorInfo

    graph = onnx.load(os.path.join(exported, "model.onnx"))
    graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3  # the example's length, baked in
    manifest = read_manifest(exported)["graphs"]["model"]
    plan = Graph("model", module=None, example=(), validation=[],
                 inputs=[TensorInfo(t["name"], t["dtype"], tuple(t["shape"])) for t in manifest["inputs"]],
                 outputs=[TensorInfo(t["name"], t["dtype"], tuple(t["shape"])) for t in manifest["outputs"]])
    with pytest.raises(ExportError, match=r"input 'input_ids' axis 1 \(sequence_length\) was fixed to 3"):
        name_dimensions(graph, plan)


# -- the runtime against PyTorch ---------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_model(model_dir):
    model, tokenizer, _ = load_model(model_dir)
    return model.eval(), tokenizer


@pytest.mark.parametrize("search", [Greedy(GreedyOptions(max_new_tokens=12)),
                                    BeamSearch(BeamSearchOptions(max_new_tokens=12, num_beams=4,
                                                                 num_return_sequences=2))],
                         ids=["greedy", "beam4"])
@pytest.mark.parametrize("io_binding", [False, True], ids=["session-run", "io-binding"])
@pytest.mark.parametrize("layout", ["fast", "genai"])
def test_onnx_and_torch_backends_generate_the_same_tokens(exported, tiny_gpt2_genai_export, torch_model, search,
                                                          io_binding, layout):
    model, tokenizer = torch_model
    prompts = [tokenizer.encode(text) for text in PROMPTS]  # different lengths: left padding
    on_torch = search.generate(TorchBackend(model.decoder, 12), prompts, eos_id=tokenizer.eos_id, pad_id=None)
    backend = lmkit.exports.load(exported if layout == "fast" else tiny_gpt2_genai_export).backend(io_binding=io_binding)
    # On the CPU, the genai layout uses IO binding only when asked for; the fast one always (its shared buffers).
    assert (backend.binding is not None) == (io_binding or layout == "fast")
    on_onnx = search.generate(backend, prompts, eos_id=tokenizer.eos_id, pad_id=None)
    assert [g.to_dict()["tokens"] for g in on_onnx] == [g.to_dict()["tokens"] for g in on_torch]
    assert [[a.tokens for a in g.alternatives] for g in on_onnx] == \
        [[a.tokens for a in g.alternatives] for g in on_torch]
    assert len({tuple(g.tokens) for g in on_onnx}) > 1  # not one repeated token for every prompt


@pytest.mark.parametrize("io_binding", [False, True], ids=["session-run", "io-binding"])
@pytest.mark.parametrize("layout", ["fast", "fast-fed-back", "genai"])
def test_ort_backend_logits_follow_torch_through_prefill_steps_and_reorders(exported, tiny_gpt2_genai_export,
                                                                             torch_model, io_binding, layout):
    """fast-fed-back: the fast layout's buffers not bound as both input and output, but fed back from the outputs,
    as on a GPU (the operator then copies them)."""
    model, tokenizer = torch_model
    from lmkit.decoding.common import left_pad

    input_ids, mask = left_pad([tokenizer.encode(text) for text in PROMPTS], pad_id=0)
    runtime = lmkit.exports.load(exported if layout.startswith("fast") else tiny_gpt2_genai_export).runtime
    if layout == "fast-fed-back":
        ort_backend = lmkit.exports.OrtBackend(runtime.session, runtime.graph, runtime.max_positions, io_binding,
                                               buffered=True, share_buffers=False)
        assert not ort_backend.shared and ort_backend.buffered
    else:
        ort_backend = runtime.backend(io_binding=io_binding)
    torch_backend = TorchBackend(model.decoder, 8)
    steps = [(np.array([5, 6, 7]), None), (np.array([8, 9, 10, 11]), np.array([2, 0, 0, 1])),
             (np.array([12, 13]), np.array([3, 1])), (np.array([14, 15]), np.array([1, 1])),
             (np.array([16, 17]), np.array([1, 0]))]  # expand to 4 rows, keep 2, reorder them in place
    np.testing.assert_allclose(ort_backend.prefill(input_ids, mask), torch_backend.prefill(input_ids, mask),
                               atol=1e-4)
    for tokens, rows in steps:
        np.testing.assert_allclose(ort_backend.step(tokens, rows), torch_backend.step(tokens, rows), atol=1e-4)


def test_generate_uses_the_manifest_settings_and_options(exported, torch_model):
    _, tokenizer = torch_model
    model = lmkit.exports.load(exported)
    assert model.tokenizer.vocab_size == tokenizer.vocab_size and model.providers == ["CPUExecutionProvider"]
    texts = model.generate(PROMPTS[:2], max_new_tokens=5)
    beams = model.generate(PROMPTS[:2], strategy="beam", max_new_tokens=5, num_beams=4)
    assert len(texts) == len(beams) == 2 and all(isinstance(text, str) and text for text in texts + beams)


# -- precision and layouts ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_export(model_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("int8") / "int8")
    export_model(model_dir, out, precision="int8")
    return out


def test_int8_export_is_smaller_and_reports_top1_agreement(run, model_dir, exported, tmp_path):
    out = tmp_path / "int8"
    result = run("export", model_dir, "--out", out, "--quantize", "int8")
    assert result.code == 0, result.err
    assert result.out.strip() == str(out)
    assert "top-1 agreement" in result.err
    manifest = read_manifest(out)
    assert manifest["dtype"] == "int8" and manifest["quantization"]["method"] == "weight-only, blockwise"
    assert "quantization: weight-only, blockwise, weights int8, block 32\n" in run("inspect", out).out
    report = manifest["validation"]
    assert report["threshold"] == {"min_top1_agreement": 0.5}
    assert 0.5 <= report["top1_agreement"] <= 1 and report["max_abs_diff"] > 0
    assert os.path.getsize(out / "model.onnx") < 0.5 * os.path.getsize(os.path.join(exported, "model.onnx"))
    graph = onnx.load(str(out / "model.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert "MatMulNBits" in ops and not ops & {"MatMulInteger", "DynamicQuantizeLinear", "MatMul"}
    products = [node for node in graph.node if node.op_type == "MatMulNBits"]
    assert {onnx.helper.get_attribute_value(a) for n in products for a in n.attribute if a.name == "bits"} == {8}
    # The tied embedding's lookups read an int8 table with a scale per row; the output projection is a
    # product of its own, not the whole (vocab, width) table dequantized at every step.
    initializers = {t.name: t for t in graph.initializer}
    vocab = manifest["dimensions"]["vocab_size"]
    assert not [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT
                and sorted(t.dims) == sorted([vocab, 64])]
    tables = [initializers[n.input[0]] for n in graph.node if n.op_type == "Gather" and n.input[0] in initializers]
    assert tables and {t.data_type for t in tables if list(t.dims)[1:] == [64]} == {onnx.TensorProto.INT8}
    (head,) = [n for n in products if any(a.name == "N" and a.i == vocab for a in n.attribute)]
    assert {a.name: a.i for a in head.attribute}["K"] == 64


@pytest.mark.parametrize("rows", [[0], [2, 0], [1, 2, 0]])
def test_an_int8_rows_logits_do_not_depend_on_its_batch(int8_export, model_dir, rows):
    """Dynamic quantization (int8's method before the blockwise one) scaled a product's activations by the whole batch's range,
    padding included: a served request's tokens changed with what it was batched with (docs/serving.md).
    Here a prompt's logits in any batch are its logits alone, through the prefill and the steps after it,
    within fp32's rounding of padded attention."""
    from lmkit.decoding.common import left_pad
    from lmkit.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    runtime = lmkit.exports.load(int8_export).runtime
    encoded = [tokenizer.encode(text) for text in PROMPTS]
    last = rows[-1]  # the row compared with the prompt run alone

    def run(prompts):
        backend = runtime.backend()
        outputs = [backend.prefill(*left_pad(prompts, pad_id=0))[-1]]
        for token in (5, 6, 7):
            outputs.append(backend.step(np.full(len(prompts), token), None)[-1])
        return np.stack(outputs)

    np.testing.assert_allclose(run([encoded[row] for row in rows]), run([encoded[last]]), atol=1e-4, rtol=0)


def test_fp16_triton_repository(run, model_dir, tmp_path):
    repo = tmp_path / "triton"
    result = run("export", model_dir, "--out", repo, "--dtype", "fp16", "--format", "triton", "--name", "tiny")
    assert result.code == 0, result.err
    assert sorted(os.listdir(repo)) == ["tiny", "tiny_text"]  # the raw graph, and lmkit's loop on it (test_triton)
    assert sorted(os.listdir(repo / "tiny_text")) == ["1", "config.pbtxt"]
    assert 'string_value: "../tiny"' in (repo / "tiny_text" / "config.pbtxt").read_text()
    assert sorted(os.listdir(repo / "tiny")) == ["1", "README.md", "config.pbtxt", MANIFEST, "tokenizer.json",
                                                 "tokenizer_config.json"]
    assert os.listdir(repo / "tiny" / "1") == ["model.onnx"]
    manifest = read_manifest(repo / "tiny")
    assert manifest["dtype"] == "fp16" and manifest["graphs"]["model"]["file"] == "1/model.onnx"
    assert manifest["triton"] == {"name": "tiny", "config": "config.pbtxt"}
    assert "config.pbtxt" in manifest["files"]
    report = manifest["validation"]
    assert report["top1_agreement"] >= 0.9 and 0 < report["max_abs_diff"] < 0.5
    config = (repo / "tiny" / "config.pbtxt").read_text()
    for line in ['name: "tiny"', 'platform: "onnxruntime_onnx"', "max_batch_size: 0", "kind: KIND_GPU",
                 'name: "past_key_values.1.value"', "dims: [ -1, 4, 64, 16 ]", "data_type: TYPE_INT64",
                 f"dims: [ -1, -1, {manifest['dimensions']['vocab_size']} ]"]:
        assert line in config
    graph = manifest["graphs"]["model"]
    assert len(re.findall(r"^ *name: ", config, re.M)) == 1 + len(graph["inputs"]) + len(graph["outputs"])
    assert lmkit.exports.load(str(repo / "tiny")).generate(["the cat"], max_new_tokens=3)
    refused = run("inspect", repo)
    assert refused.code == 1 and f"give {repo / 'tiny'}" in refused.err


def test_inspect_describes_the_export(run, exported):
    text = run("inspect", exported)
    assert text.code == 0, text.err
    for expected in ("decoder.gpt2", "dtype: fp32", "input_ids", "past_key_values.{0..1}.key",
                     "present.{0..1}.value", "batch size 3, new tokens 1, past tokens 9", "top-1 agreement 100.0%",
                     "model.onnx", "eos=0"):
        assert expected in text.out
    assert text.out.count(" ok\n") == 4  # model.onnx, the model card, the two tokenizer files
    as_json = json.loads(run("inspect", exported, "--json").out)
    assert as_json["graphs"] == read_manifest(exported)["graphs"]
    assert {entry["status"] for entry in as_json["files"].values()} == {"ok"}
    # What needs a model directory says what an export is, and what reads one (it said "no config.json").
    for command in (["show", exported], ["export", exported, "--out", os.path.join(exported, "again")]):
        refused = run(*command)
        assert refused.code == 1 and "is an export directory, not a model directory" in refused.err
        assert "lmkit inspect describes an export" in refused.err and "Traceback" not in refused.err


def test_export_that_misses_its_threshold_writes_nothing(run, model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(THRESHOLDS, "fp32", Threshold(max_abs_diff=1e-12))
    result = run("export", model_dir, "--out", tmp_path / "exp")
    assert result.code == 1
    error = result.err.strip().splitlines()[-1]
    assert error.startswith("error: the fp32 export differs from PyTorch by") and "nothing was written" in error
    assert "allow more with --atol" in error
    assert os.listdir(tmp_path) == []  # neither the export nor its staging or scratch directories


def test_fp32_rounding_is_allowed_in_proportion_to_the_outputs_scale():
    # Found by a user's trial: a T5 whose logits reach ~240 differed by 3.6e-4 (1.5e-6 of them) and was refused.
    from lmkit.exports.validation import ValidationError, _check, _Result

    def check(diff: float, scale: float) -> None:
        result = _Result("decoder", {"batch_size": 4}, {"logits": diff}, None, scale={"logits": scale})
        _check({"top1_agreement": None}, [result], "fp32", THRESHOLDS["fp32"])

    check(3.6e-4, 240.0)  # large logits: within 1e-5 of their largest value
    check(9e-5, 0.5)  # small ones: within the absolute 1e-4
    for diff, scale in ((3e-3, 240.0), (2e-4, 1.0)):
        with pytest.raises(ValidationError, match=r"more than the .* allowed \(0.0001, or 1e-05 of its largest"):
            check(diff, scale)
    with pytest.raises(ValidationError, match=r"the 0.0001 allowed; nothing was written"):  # --atol: absolute alone
        _check({"top1_agreement": None}, [_Result("d", {}, {"logits": 3.6e-4}, None, scale={"logits": 240.0})],
               "fp32", Threshold(max_abs_diff=1e-4))


def test_an_opset_the_exporter_gets_wrong_is_refused_with_advice_about_the_opset(run, model_dir, tmp_path):
    # Found by a user's trial: at --opset 28, torch 2.13 wrote opset 18's Gelu into the graph, and the
    # error told them to export in fp32, which they were doing.
    result = run("export", model_dir, "--out", tmp_path / "exp", "--opset", "28")
    if result.code == 0:
        pytest.skip("this torch exports opset 28 correctly")
    error = result.err.strip().splitlines()[-1]
    assert result.code == 1 and "export it again with a lower --opset (the default is 18)" in error
    assert "export it in fp32" not in error and ".partial" not in error
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("precision, opset, advice", [
    ("fp32", 24, "export it again with a lower --opset (the default is 18): at opset 24"),
    ("int8", 18, "export it in fp32, or in another precision the model supports"),
    ("fp32", 18, "this is a fault in lmkit's export of this model: please report it"),
])
def test_a_graph_onnxruntime_cannot_load_gets_advice_that_fits_what_was_asked(precision, opset, advice):
    from lmkit.exports.validation import ValidationError, _onnxruntime_errors

    with pytest.raises(ValidationError) as caught, _onnxruntime_errors("model", precision, opset):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from /tmp/.x.partial/model.onnx "
                           "failed:This is an invalid model.")
    assert str(caught.value).startswith(
        f"onnxruntime cannot run the {precision} graph 'model' (This is an invalid model.); {advice}")


def test_export_usage_errors(run, model_dir, tmp_path):
    assert run("export", model_dir, "--out", tmp_path / "x", "--dtype", "fp16", "--quantize", "int8").code == 2
    assert run("export", model_dir, "--out", tmp_path / "x", "--name", "m").code == 2
    assert run("export", model_dir, "--out", tmp_path / "x", "--min-top1", "0.9").code == 2
    assert os.listdir(tmp_path) == []


# -- untrusted export directories --------------------------------------------------------------


def test_a_changed_file_is_refused(run, copy):
    with open(os.path.join(copy, "model.onnx"), "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(ArtifactError, match=r"model.onnx does not match its sha256 .* refusing"):
        lmkit.exports.load(copy)
    result = run("inspect", copy)
    assert result.code == 1 and "model.onnx does not match its sha256" in result.err


@pytest.mark.parametrize("where", ["files", "graph", "absolute", "tokenizer"])
def test_a_manifest_name_outside_the_directory_is_refused(copy, tmp_path, where):
    manifest = read_manifest(copy)
    outside = tmp_path / "outside.onnx"
    shutil.copy(os.path.join(copy, "model.onnx"), outside)
    if where == "files":
        manifest["files"]["../outside.onnx"] = manifest["files"]["model.onnx"]
    elif where == "graph":
        manifest["graphs"]["model"]["file"] = "../outside.onnx"
        manifest["files"]["../outside.onnx"] = manifest["files"]["model.onnx"]
    elif where == "absolute":
        manifest["graphs"]["model"]["file"] = str(outside)
    else:
        manifest["tokenizer"] = "../../tokenizer.json"
    write_manifest(copy, manifest)
    with pytest.raises(ArtifactError, match="outside the export directory"):
        lmkit.exports.load(copy)


def test_a_symbolic_link_out_of_the_directory_is_refused(copy, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    os.remove(os.path.join(copy, "tokenizer_config.json"))
    os.symlink(secret, os.path.join(copy, "tokenizer_config.json"))
    rehash(copy, "tokenizer_config.json")
    with pytest.raises(ArtifactError, match="resolves to .* outside the export directory"):
        lmkit.exports.load(copy)


@pytest.mark.parametrize("location", ["../weights.bin", "weights.bin"], ids=["escaping", "unlisted"])
def test_external_data_must_be_a_listed_file_inside(copy, location):
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    path = os.path.join(copy, "model.onnx")
    graph = onnx.load(path)
    tensor = next(t for t in graph.graph.initializer if t.name == "decoder.wpe.weight")
    with open(os.path.join(copy, location), "wb") as handle:
        handle.write(numpy_helper.to_array(tensor).tobytes())
    set_external_data(tensor, location=location)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    onnx.save(graph, path)
    rehash(copy, "model.onnx")  # the manifest agrees with the graph: only the reference is wrong
    expected = "outside the export directory" if location.startswith("..") else "does not list with a hash"
    with pytest.raises(ArtifactError, match=expected):
        lmkit.exports.load(copy)


def test_a_file_the_runtime_reads_must_be_listed(copy):
    manifest = read_manifest(copy)
    del manifest["files"]["tokenizer_config.json"]  # it names the special tokens' roles
    write_manifest(copy, manifest)
    with pytest.raises(ArtifactError, match="tokenizer_config.json is not listed with a hash"):
        lmkit.exports.load(copy)


def test_a_damaged_manifest_is_refused_in_one_line(copy):
    manifest = read_manifest(copy)
    manifest["graphs"]["model"]["inputs"][0]["dtype"] = "object"
    write_manifest(copy, manifest)
    with pytest.raises(ArtifactError, match="malformed inputs"):
        lmkit.exports.load(copy)
    with open(os.path.join(copy, MANIFEST), "w") as handle:
        handle.write("{not json")
    with pytest.raises(ArtifactError, match="is not valid JSON"):
        lmkit.exports.load(copy)


@pytest.mark.parametrize("flags", [["--strategy", "greedy"], ["--strategy", "beam", "--num-beams", "4"]])
def test_lmkit_generate_on_an_export_matches_the_model_directory(run, exported, model_dir, flags):
    args = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", "8", "--json", *flags]
    on_torch = run("generate", model_dir, *args)
    on_onnx = run("generate", exported, *args)
    assert on_torch.code == on_onnx.code == 0, on_onnx.err
    tokens = [[r["tokens"] for r in json.loads(result.out)] for result in (on_torch, on_onnx)]
    assert tokens[0] == tokens[1] and all(len(t) > 0 for t in tokens[0])


@pytest.mark.parametrize("flags", [[], ["--stream"], ["--strategy", "beam", "--num-beams", "2"]])
def test_generate_cuts_the_text_at_a_stop_that_begins_inside_a_token(run, model_dir, flags):
    # The text ends where the stop string begins, as OpenAI's API cuts it: a token's text before the stop stays.
    args = ["--prompt", PROMPTS[0], "--max-new-tokens", "8", *flags]
    whole = run("generate", model_dir, *args)
    assert whole.code == 0, whole.err
    text = whole.out.rstrip("\n")
    continuation = text[len(PROMPTS[0]):]
    inside = next(word[1:3] for word in continuation.split() if len(word) >= 4)  # letters inside a token
    stopped = run("generate", model_dir, *args, "--stop", inside)
    assert stopped.code == 0, stopped.err
    assert stopped.out.rstrip("\n") == text[:text.index(inside, len(PROMPTS[0]))]


# -- execution providers -----------------------------------------------------------------------


def one_line_error(result, code: int = 1) -> str:
    """The error of a failed command: exactly one line on stderr, nothing on stdout."""
    assert result.code == code, (result.code, result.err)
    assert result.out == "" and result.err.count("\n") == 1 and result.err.startswith("error: "), result.err
    return result.err


GENERATE = ["--prompt", PROMPTS[0], "--max-new-tokens", "4", "--json"]


def test_a_provider_this_onnxruntime_lacks_is_a_one_line_error(run, exported):
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in available:
        pytest.skip("this onnxruntime has CUDA")
    error = one_line_error(run("generate", exported, *GENERATE, "--provider", "CUDAExecutionProvider"))
    assert f"execution provider CUDAExecutionProvider is not available in onnxruntime {onnxruntime.__version__}" \
        in error and "install onnxruntime-gpu in place of onnxruntime" in error
    error = one_line_error(run("generate", exported, *GENERATE, "--provider", "NoSuchExecutionProvider"))
    assert "unknown execution provider 'NoSuchExecutionProvider'" in error
    assert f"this onnxruntime has {', '.join(available)}" in error
    typo = one_line_error(run("generate", exported, *GENERATE, "--provider", "CPUExecutionprovider"))
    assert "did you mean 'CPUExecutionProvider'?" in typo


def test_the_cpu_provider_can_be_forced_and_gives_the_same_tokens(run, exported):
    forced = run("generate", exported, *GENERATE, "--provider", "CPUExecutionProvider")
    default = run("generate", exported, *GENERATE)
    assert forced.code == default.code == 0, forced.err
    assert json.loads(forced.out) == json.loads(default.out)


def test_provider_is_a_usage_error_for_a_model_directory_or_with_device(run, exported, model_dir):
    on_torch = run("generate", model_dir, *GENERATE, "--provider", "CPUExecutionProvider")
    assert on_torch.code == 2 and "--provider picks an onnxruntime execution provider for an export directory" \
        in on_torch.err and "use --device" in on_torch.err
    both = run("generate", exported, *GENERATE, "--provider", "CPUExecutionProvider", "--device", "cpu")
    assert both.code == 2 and "give --device or --provider, not both" in both.err


@pytest.fixture
def cuda_that_does_not_start(monkeypatch):
    """An onnxruntime that lists CUDA but, as onnxruntime-gpu without its libraries does, runs on the CPU."""
    import onnxruntime

    real = onnxruntime.InferenceSession
    asked = []

    def session(path, sess_options=None, providers=None):
        asked.append(providers)
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    return asked


def test_what_runs_is_checked_with_get_providers_not_trusted(exported, cuda_that_does_not_start, caplog):
    from lmkit.errors import LmkitError

    with pytest.raises(LmkitError, match="could not start CUDAExecutionProvider for .* and fell back to "
                                         "CPUExecutionProvider"):
        lmkit.exports.load(exported, provider="CUDAExecutionProvider")
    with pytest.raises(LmkitError, match="could not start CUDAExecutionProvider .*cuDNN"):
        lmkit.exports.load(exported, device="cuda:1")
    assert cuda_that_does_not_start[-1] == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    with caplog.at_level("WARNING", logger="lmkit.exports"):
        model = lmkit.exports.load(exported)  # auto: a warning, and the CPU
    assert model.providers[0] == "CPUExecutionProvider" and "could not start CUDAExecutionProvider" in caplog.text
    assert model.generate(["the cat"], max_new_tokens=2)


def test_on_cuda_the_backend_keeps_the_cache_on_the_card_through_io_binding(exported):
    class CudaSession:  # what the backend reads of a session that runs on CUDA card 1
        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def get_provider_options(self):
            return {"CUDAExecutionProvider": {"device_id": "1"}, "CPUExecutionProvider": {}}

        def io_binding(self):
            return "binding"

    graph = read_manifest(exported)["graphs"]["model"]
    backend = lmkit.exports.OrtBackend(CudaSession(), graph, 64)
    assert (backend.binding, backend.device, backend.device_id) == ("binding", "cuda", 1)


def test_two_onnxruntime_packages_at_once_are_reported(exported, monkeypatch, caplog):
    from lmkit.exports import providers

    monkeypatch.setattr(providers, "installed_runtimes", lambda: ["onnxruntime", "onnxruntime-gpu"])
    with caplog.at_level("WARNING", logger="lmkit.exports"):
        lmkit.exports.load(exported)
    assert "onnxruntime and onnxruntime-gpu are all installed and overwrite each other's files" in caplog.text
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in caplog.text


# -- the same tokens as PyTorch and as transformers, through lmkit generate --------------------


@pytest.fixture(scope="module")
def gpt_mini(tmp_path_factory):
    """(model directory, export directory) of a random gpt-mini (6 x 384) over a small trained BPE."""
    from lmkit.model import compose
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions

    root = tmp_path_factory.mktemp("gpt-mini")
    rng = random.Random(1)
    words = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "far", "away", "quickly", "home"]
    corpus = root / "text.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)) + "\n")
    tokenizer = ByteLevelBPE.train([str(corpus)], ByteLevelBPEOptions(vocab_size=300), progress=False)
    tokenizer.save(str(root / "tok"))
    compose("gpt-mini", [f"decoder.vocab_size={tokenizer.vocab_size}", f"tokenizer={root / 'tok'}"],
            str(root / "model"))
    export_model(str(root / "model"), str(root / "export"))
    return str(root / "model"), str(root / "export")


@pytest.mark.parametrize("flags", [["--strategy", "greedy"], ["--strategy", "beam", "--num-beams", "4"]],
                         ids=["greedy", "beam4"])
def test_gpt_mini_generates_the_same_tokens_from_its_export(run, gpt_mini, flags):
    model_dir, export_dir = gpt_mini
    args = [arg for text in PROMPTS for arg in ("--prompt", text)] + ["--max-new-tokens", "6", "--json", *flags]
    on_torch, on_onnx = run("generate", model_dir, *args), run("generate", export_dir, *args)
    assert on_torch.code == on_onnx.code == 0, on_onnx.err
    tokens = [[output["tokens"] for output in json.loads(result.out)] for result in (on_torch, on_onnx)]
    assert tokens[0] == tokens[1] and all(len(row) == 6 for row in tokens[1])


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """(transformers model, its tokenizer, the export of its `lmkit import-hf`) of a random tiny GPT-2."""
    transformers = pytest.importorskip("transformers")
    from test_import_hf import EOT, gpt2_tokenizer

    from lmkit.commands.import_hf import import_hf

    root = tmp_path_factory.mktemp("hf-export")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=gpt2_tokenizer(), bos_token=EOT,
                                                     eos_token=EOT, unk_token=EOT)
    tokenizer.save_pretrained(root / "hf")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # peaked distributions, as in test_import_hf
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    model.save_pretrained(root / "hf")
    import_hf(str(root / "hf"), str(root / "model"))
    export_model(str(root / "model"), str(root / "export"))
    return model, tokenizer, str(root / "export")


@pytest.mark.parametrize("flags, settings", [
    (["--strategy", "greedy"], {"num_beams": 1}),
    (["--strategy", "beam", "--num-beams", "4"], {"num_beams": 4, "length_penalty": 1.0, "early_stopping": False}),
], ids=["greedy", "beam4"])
def test_an_exported_transformers_gpt2_generates_what_transformers_does(run, hf_gpt2, flags, settings):
    from test_import_hf import NEW_TOKENS, TEXTS, hf_generate

    model, tokenizer, export_dir = hf_gpt2
    prompts = [arg for text in TEXTS for arg in ("--prompt", text)]
    result = run("generate", export_dir, *prompts, *flags, "--max-new-tokens", NEW_TOKENS, "--json")
    assert result.code == 0, result.err
    outputs = json.loads(result.out)
    expected = [hf_generate(model, tokenizer.encode(text), tokenizer.eos_token_id, **settings) for text in TEXTS]
    assert [output["tokens"] for output in outputs] == expected
    assert len({tuple(tokens) for tokens in expected}) > 1


# -- bad input: one line, a non-zero exit, nothing written ---------------------------------------


def opset_99(directory):
    path = os.path.join(directory, "model.onnx")
    graph = onnx.load(path)
    for entry in graph.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 99
    onnx.save(graph, path)
    rehash(directory, "model.onnx")
    manifest = read_manifest(directory)
    write_manifest(directory, {**manifest, "opset": 99})


def not_onnx(directory):
    with open(os.path.join(directory, "model.onnx"), "wb") as handle:
        handle.write(b"not a protobuf at all" * 8)
    rehash(directory, "model.onnx")


def unparsable(directory):
    with open(os.path.join(directory, MANIFEST), "w") as handle:
        handle.write('{"format": "lmkit-onnx", ')


def without(name):
    return lambda directory: os.remove(os.path.join(directory, name))


def changed(directory):
    with open(os.path.join(directory, "tokenizer.json"), "a") as handle:
        handle.write(" ")


@pytest.mark.parametrize("damage, message", [
    (unparsable, "lmkit-onnx.json is not valid JSON (Expecting property name"),
    (without("model.onnx"), "model.onnx is missing; refusing to load a changed export"),
    (without("tokenizer.json"), "tokenizer.json is missing; refusing to load a changed export"),
    (changed, "tokenizer.json has {size} bytes, the manifest says {recorded}"),
    (opset_99, "model.onnx is ONNX opset 99, which onnxruntime {version} cannot run (it runs opsets up to "),
    (not_onnx, "model.onnx is not an ONNX model that onnx"),
], ids=["manifest-not-json", "missing-graph", "missing-tokenizer", "changed", "opset", "not-onnx"])
def test_a_damaged_export_is_refused_by_generate_in_one_line(run, copy, damage, message):
    import onnxruntime

    recorded = read_manifest(copy)["files"]["tokenizer.json"]["size"]
    damage(copy)
    error = one_line_error(run("generate", copy, *GENERATE))
    assert message.format(version=onnxruntime.__version__, size=recorded + 1, recorded=recorded) in error


def test_a_directory_that_is_neither_export_nor_model_is_refused(run, tmp_path, exported, model_dir):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    error = one_line_error(run("generate", tmp_path / "notes", *GENERATE))
    assert "is neither an export directory (no lmkit-onnx.json) nor a model directory (no config.json)" in error
    repo = tmp_path / "repo"
    shutil.copytree(exported, repo / "m0")
    assert f"it holds an export in m0/: give {repo / 'm0'}" in one_line_error(run("generate", repo, *GENERATE))
    (repo / "m0" / "config.pbtxt").write_text('name: "m0"\n')  # Triton's model folder
    assert f"it looks like a Triton repository: give {repo / 'm0'}" in one_line_error(run("generate", repo, *GENERATE))
    assert "is not a directory" in one_line_error(run("generate", tmp_path / "nothing", *GENERATE))
    assert "has no lmkit-onnx.json: it is not an lmkit export" in one_line_error(run("inspect", tmp_path / "notes"))
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    assert f"(it is a model directory: lmkit export {model} --out DIR makes an export of it)" in \
        one_line_error(run("inspect", model))
    # a model directory with an export written inside it is still a model directory (a trial was told "Triton")
    shutil.copytree(exported, model / "exp")
    assert f"(it is a model directory: lmkit export {model} --out DIR makes an export of it)" in \
        one_line_error(run("inspect", model))


def test_a_prompt_longer_than_the_exported_context(run, exported, model_dir):
    long_prompt = " ".join(["cat"] * 80)  # more tokens than the 64 positions of the model
    too_long = one_line_error(run("generate", exported, "--prompt", long_prompt, "--max-new-tokens", "4"))
    assert "tokens but the model reads at most 64; shorten it or pass --truncate to keep its last 61" in too_long
    args = ["--prompt", long_prompt, "--max-new-tokens", "4", "--truncate", "--json"]
    cut, on_torch = run("generate", exported, *args), run("generate", model_dir, *args)
    assert cut.code == on_torch.code == 0, cut.err
    assert cut.err.startswith("warning: kept the last 61 of the ")
    assert [r["tokens"] for r in json.loads(cut.out)] == [r["tokens"] for r in json.loads(on_torch.out)]
    assert len(json.loads(cut.out)[0]["tokens"]) == 4


def test_an_unknown_quantization_scheme_is_refused(run, model_dir, tmp_path):
    result = run("export", model_dir, "--out", tmp_path / "x", "--quantize", "int2")
    assert result.code == 2 and result.out == ""
    assert result.err == ("error: Invalid value for '--quantize': 'int2' is not one of 'int8', 'int4'. "
                          "(see: lmkit export --help)\n")
    with pytest.raises(LmkitError, match="unknown precision 'int2'; choose one of fp32, fp16, int8, int4"):
        export_model(model_dir, str(tmp_path / "x"), precision="int2")
    assert os.listdir(tmp_path) == []


def test_a_component_without_an_exporter_says_which_and_whose(model_dir, tmp_path):
    from lmkit.errors import PluginError
    from lmkit.registry import PluginHost

    host = PluginHost()
    del host.components["exporter"]["decoder.gpt2"]  # as a family that registers none would be
    with pytest.raises(PluginError, match=r"^the decoder 'gpt2' of plugin 'gpt' \(lmkit-toolkit 0.1.0\) cannot be exported "
                                          r"yet: no plugin registers an exporter 'decoder.gpt2'"):
        export_model(model_dir, str(tmp_path / "x"), host=host)
    assert os.listdir(tmp_path) == []


def test_a_third_party_decoder_without_an_exporter_says_which_and_whose(third_party_site, tmp_path, monkeypatch):
    """The example plugin registers decoder.bigram; without it, export names the decoder, its plugin and what exists."""
    import sys

    from lmkit.exports.export import find_exporter
    from lmkit.registry import PluginHost
    from lmkit.spec import resolve

    monkeypatch.setattr(sys, "path", [third_party_site, *sys.path])
    host = PluginHost()
    del host.components["exporter"]["decoder.bigram"]
    spec = resolve(host.presets["bigram-tiny"].spec, host)
    with pytest.raises(LmkitError) as error:
        find_exporter(spec, host)
    message = str(error.value)
    assert "the decoder 'bigram' of plugin 'example' (lmkit-example 0.3.1) cannot be exported yet" in message
    assert "exporters available: " in message and "decoder.gpt, " in message and "\n" not in message


def test_a_weight_stored_also_transposed_is_stored_once():
    # What the TorchScript tracer writes for a tied embedding: the table for a Gather and its transpose, folded
    # into a second initializer, for the head's MatMul. Afterwards the copy is Transpose(table), the outputs
    # are the same, and a square matrix or an unrelated one of the transposed shape is left alone.
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from lmkit.exports.convert import share_transposed_initializers

    rng = np.random.default_rng(0)
    table, square, other = rng.normal(size=(7, 3)), rng.normal(size=(3, 3)), rng.normal(size=(3, 7))
    initializers = [numpy_helper.from_array(a.astype(np.float32), name) for a, name in
                    ((table, "table"), (table.T.copy(), "table_t"), (square, "square"), (square.T.copy(), "square_t"),
                     (other, "other"))]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["x"]),
             helper.make_node("MatMul", ["x", "square"], ["y"]), helper.make_node("MatMul", ["y", "square_t"], ["z"]),
             helper.make_node("MatMul", ["z", "table_t"], ["logits"]),
             helper.make_node("MatMul", ["z", "other"], ["more"])]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 7]) for name in ("logits", "more")],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    def run(model):
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"ids": np.array([1, 5])})

    before = run(model)
    assert share_transposed_initializers(model) == 1
    onnx.checker.check_model(model)
    assert sorted(init.name for init in model.graph.initializer) == ["other", "square", "square_t", "table"]
    assert [(n.op_type, list(n.input)) for n in model.graph.node if n.op_type == "Transpose"] == [("Transpose", ["table"])]
    for ours, reference in zip(run(model), before):
        np.testing.assert_array_equal(ours, reference)
    assert share_transposed_initializers(model) == 0


def test_an_export_whose_strategy_is_a_missing_plugins_names_the_plugin(run, exported, tmp_path):
    """A model composed with a third party's decoding strategy, exported, then opened where that plugin is not
    installed: generate and serve refuse in one line naming the plugin to install, as a model directory does (a
    trial got "unknown decoding 'second-best'" from generate, and lmkit serve decoded greedily without a word)."""
    import shutil

    from lmkit.errors import PluginError
    from lmkit.serving.api import open_service

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    manifest_path = copy / "lmkit-onnx.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["source"]["components"]["decoding"] = {"type": "second-best", "plugin": "myplugin"}
    manifest["source"]["plugins"]["myplugin"] = {"module": "lmkit_myplugin", "distribution": "lmkit-myplugin",
                                                 "version": "0.0.1"}
    manifest["generation"] = {"strategy": "second-best", "options": {}}
    manifest_path.write_text(json.dumps(manifest))
    result = run("generate", copy, "--prompt", "the")
    assert result.code != 0 and len(result.err.strip().splitlines()) == 1, result.err
    assert "decoding 'second-best' from plugin 'myplugin'" in result.err and "pip install lmkit-myplugin" in result.err
    with pytest.raises(PluginError, match="pip install lmkit-myplugin"):
        open_service(str(copy), name="m")


def test_a_model_or_export_without_a_tokenizer_says_what_to_do_for_its_kind(run, tmp_path):
    # A trial was told to "compose the model with --set tokenizer=DIR" of an export, which cannot be composed.
    model, export = tmp_path / "m", tmp_path / "e"
    assert run("compose", "gpt2-tiny", "--out", model).code == 0
    assert run("export", model, "--out", export).code == 0
    for directory, advice in ((model, "compose the model with --set tokenizer=DIR"),
                              (export, "export it again from a model directory that has one")):
        for command in (("generate", directory, "--prompt", "x"), ("bench", directory, "--repeats", "1")):
            result = run(*command)
            assert result.code == 1 and len(result.err.strip().splitlines()) == 1, result.err
            assert f"{directory} has no tokenizer to " in result.err and advice in result.err, result.err


def test_ctrl_c_inside_torch_onnx_is_an_interrupt_not_a_failed_export(run, tiny_gpt2, tmp_path, monkeypatch):
    # A trial's Ctrl-C cut short an import inside torch.onnx, whose handler then raised an AttributeError:
    # reported as "torch.onnx could not export graph". An interrupt in the chain is the interrupt (exit 130).
    import torch

    def interrupted(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise AttributeError("module 'torch._dynamo' has no attribute 'exc'") from None

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    result = run("export", tiny_gpt2, "--out", tmp_path / "out")
    assert result.code == 130 and "could not export" not in result.err, result.err
    assert not (tmp_path / "out").exists()


def test_sigterm_ends_an_export_as_ctrl_c_does_leaving_nothing_behind(tiny_gpt2, tmp_path):
    # A trial's `kill -TERM` of an export left .out.*.partial and .lmkit-export-* directories beside --out for
    # good: the default action killed the process before any cleanup ran. SIGTERM is what timeout, docker
    # stop and systemd send.
    import signal
    import subprocess
    import sys

    out = tmp_path / "parent" / "out"
    out.parent.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "lmkit", "export", tiny_gpt2, "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr.readline().startswith("exporting")  # under way: the model is read and tracing
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM and err.strip().splitlines()[-1] == "terminated", err
    assert os.listdir(out.parent) == []


@pytest.mark.parametrize("also_read", [False, True])
def test_an_embedding_table_in_int8_keeps_each_row_within_half_a_step(also_read, tmp_path):
    """precision.quantize_embedding_tables on a graph of one unnamed lookup (as a hand-built graph has): each row
    within half of its own scale, an all-zero row exact, and the fp32 table kept only where another node reads it."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from lmkit.exports.precision import quantize_embedding_tables

    table = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32) * np.arange(6, dtype=np.float32)[:, None]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"])]
    outputs = [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [None, 5])]
    if also_read:
        nodes.append(helper.make_node("Identity", ["table"], ["table_out"]))
        outputs.append(helper.make_tensor_value_info("table_out", TensorProto.FLOAT, [6, 5]))
    graph = helper.make_graph(nodes, "lookup", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                              outputs, [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert quantize_embedding_tables(model) == 1
    onnx.checker.check_model(model)
    assert ("table" in {t.name for t in model.graph.initializer}) == also_read
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = session.run(["rows"], {"ids": np.array([5, 0, 3, 3])})[0]
    step = np.abs(table).max(axis=1) / 127
    np.testing.assert_array_equal(rows[1], 0)
    assert (np.abs(rows - table[[5, 0, 3, 3]]) <= step[[5, 0, 3, 3], None] / 2 + 1e-7).all()
