"""A BERT-family encoder exported to ONNX: validated at export, and `lmkit embed` on the export
directory runs without torch and gives the model's vectors (fp32 within 1e-4; int8 close in cosine)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from conftest import NO_TORCH  # noqa: E402

from lmkit.exports.export import export_model  # noqa: E402
from lmkit.model import compose  # noqa: E402

TEXTS = ["the cat sat on the mat", "a big dog ran far away quickly", "home"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    from lmkit.tokenizers import WordPiece, WordPieceOptions

    root = tmp_path_factory.mktemp("bert-export")
    corpus = root / "corpus.txt"
    words = "the cat sat on a mat big dog ran far away quickly home tree".split()
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(200)))
    WordPiece.train([str(corpus)], WordPieceOptions(vocab_size=80), progress=False).save(str(root / "tok"))
    compose("bert-tiny", [f"tokenizer={root / 'tok'}", "encoder.n_layers=1", "encoder.d_model=32",
                          "encoder.d_ff=64"], str(root / "model"))
    return str(root / "model")


@pytest.fixture(scope="module")
def fp32_export(bert, tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("exports") / "fp32")
    return out, export_model(bert, out)


def torch_vectors(model_dir: str, pooling: str) -> np.ndarray:
    from lmkit.opening import open_model

    return open_model(model_dir, device="cpu").embed(TEXTS, pooling=pooling)[0]


def test_an_encoder_export_is_validated(fp32_export):
    _, manifest = fp32_export
    assert manifest["architecture"] == "encoder-only"
    assert [t["name"] for t in manifest["graphs"]["model"]["outputs"]] == [
        "last_hidden_state", "pooler_output", "logits", "sentence_logits"]
    assert manifest["validation"]["max_abs_diff"] < 1e-4


def test_embed_runs_on_the_export_without_torch(bert, fp32_export, run):
    out, _ = fp32_export
    code = NO_TORCH + f"""
import json, lmkit.exports
model = lmkit.exports.load({out!r}, device="cpu")
print(json.dumps({{p: model.embed({TEXTS!r}, pooling=p)[0].tolist() for p in ("cls", "mean")}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    vectors = json.loads(done.stdout)
    for pooling in ("cls", "mean"):
        assert np.abs(np.array(vectors[pooling]) - torch_vectors(bert, pooling)).max() < 1e-4, pooling
    result = run("embed", out, "--pool", "cls", *[arg for text in TEXTS for arg in ("--text", text)])
    assert result.code == 0, result.err
    cli = np.array([record["embedding"] for record in json.loads(result.out)])
    assert np.abs(cli - np.array(vectors["cls"])).max() < 1e-5


def test_int8_export_keeps_sentence_vectors(bert, tmp_path):
    from lmkit.exports import load

    out = str(tmp_path / "int8")
    manifest = export_model(bert, out, precision="int8")
    assert manifest["quantization"]["weights"] == "int8"
    quantized, _, _ = load(out, device="cpu").embed(TEXTS, pooling="mean")
    reference = torch_vectors(bert, "mean")
    cosine = (quantized * reference).sum(1) / np.linalg.norm(quantized, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.98, cosine


def test_a_feature_encoder_exports_in_int8_held_to_its_features_cosine(bert, run, tmp_path):
    # Without a masked-LM head there is no top-1 to take: int8 was refused; its features' cosine now holds it.
    from lmkit.exports import load

    bare = tmp_path / "bare"
    tokenizer = os.path.join(os.path.dirname(bert), "tok")
    assert run("compose", "bert-tiny", "--set", f"tokenizer={tokenizer}", "--set", "encoder.n_layers=1", "--set",
               "encoder.d_model=32", "--set", "encoder.d_ff=64", "--set", "objectives=[]", "--out", bare).code == 0
    result = run("export", bare, "--out", tmp_path / "int8", "--quantize", "int8")
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "int8" / "lmkit-onnx.json").read_text())
    assert manifest["validation"]["threshold"] == {"min_feature_cosine": 0.99}
    assert manifest["validation"]["feature_cosine"] >= 0.99
    quantized, _, _ = load(str(tmp_path / "int8"), device="cpu").embed(TEXTS, pooling="mean")
    reference = torch_vectors(str(bare), "mean")
    cosine = (quantized * reference).sum(1) / np.linalg.norm(quantized, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.98, cosine


def test_an_encoder_export_does_not_generate(fp32_export, run):
    result = run("generate", fp32_export[0], "--prompt", "the cat")
    assert result.code != 0 and "does not generate" in result.err
