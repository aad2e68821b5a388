"""Encoder-decoder export: encoder and decoder-step graphs, validated, token-identical to PyTorch."""
import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from test_seq2seq import TASK, compose_tiny, one_thread  # noqa: E402


@pytest.fixture(scope="module")
def exported(run, trained_nmt, translation_task, tmp_path_factory):
    """The trained NMT model and an untrained Seq2Seq (reversed source, no attention), both exported."""
    models = {"nmt": trained_nmt[0],
              "seq2seq": compose_tiny(translation_task, "s2s-export", "seq2seq-tiny", "encoder.init_range=0.5",
                                      "decoder.init_range=0.5")}
    out = {}
    for name, model_dir in models.items():
        target = str(tmp_path_factory.mktemp("exports") / name)
        with one_thread():
            done = run("export", model_dir, "--out", target)
        assert done.code == 0, done.err
        out[name] = (model_dir, target)
    return out


@pytest.fixture(scope="module")
def run():  # module-scoped: the module's export fixtures use it
    from conftest import run_cli

    return run_cli


def test_the_export_has_two_validated_graphs(exported):
    for _, target in exported.values():
        with open(os.path.join(target, "lmkit-onnx.json"), encoding="utf-8") as handle:
            manifest = json.load(handle)
        assert manifest["architecture"] == "encoder-decoder"
        assert set(manifest["graphs"]) == {"encoder", "decoder"}
        assert manifest["validation"]["max_abs_diff"] < 1e-4
        labels = {(s["graph"], s["batch_size"], s["source_length"]) for s in manifest["validation"]["shape_sets"]}
        assert len(labels) == 6
    with open(os.path.join(exported["nmt"][1], "lmkit-onnx.json"), encoding="utf-8") as handle:
        decoder = json.load(handle)["graphs"]["decoder"]
    assert {c["input"] for c in decoder["cache"]} == {"state.h", "state.c", "state.feed"}


@pytest.mark.parametrize("strategy", [("--strategy", "greedy"), ("--strategy", "beam", "--num-beams", "4")])
def test_translate_on_the_export_is_token_identical_to_pytorch(run, exported, strategy):
    sources = [s for s, _ in TASK.pairs(12, seed=21, clauses=(1, 2))]
    args = [arg for source in sources for arg in ("--text", source)]
    texts = {}
    for name, (model_dir, target) in exported.items():
        with one_thread():
            torch_out = run("translate", model_dir, *args, *strategy, "--json", "--max-new-tokens", 40)
            onnx_out = run("translate", target, *args, *strategy, "--json", "--max-new-tokens", 40)
        assert torch_out.code == 0 and onnx_out.code == 0, torch_out.err + onnx_out.err
        want, got = json.loads(torch_out.out), json.loads(onnx_out.out)
        assert [r["tokens"] for r in got] == [r["tokens"] for r in want]
        assert any(r["tokens"] for r in want)
        texts[name] = [r["text"] for r in want]
        for a, b in zip(want, got):
            assert a["score"] == pytest.approx(b["score"], abs=1e-3)
    done = run("generate", exported["nmt"][1], "--prompt", sources[0], *strategy, "--max-new-tokens", 40)
    assert done.code == 0, done.err
    assert done.out.strip() == texts["nmt"][0]


def test_translating_an_export_needs_no_torch(exported):
    import subprocess
    import sys

    model_dir, target = exported["nmt"]
    source = TASK.pairs(1, seed=5)[0][0]
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
            "from lmkit import cli\n"
            f"cli.main(['translate', {target!r}, '--text', {source!r}, '--strategy', 'beam'])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from lmkit.decoding.beam import BeamSearch
    from lmkit.decoding.options import BeamSearchOptions
    from lmkit.opening import open_model
    from lmkit.seq2seq import encode_sources

    translator = open_model(model_dir, device="cpu")
    sources = encode_sources(translator.tokenizer, [source], None)
    result = translator.generate_ids(sources, BeamSearch(BeamSearchOptions(num_beams=4, max_new_tokens=100)))[0]
    assert done.stdout.strip() == translator.output_tokenizer.decode(result.tokens, skip_special_tokens=True).strip()


def test_the_triton_repository_translates_as_lmkit_translate(run, exported, tmp_path, monkeypatch):
    """An LSTM encoder-decoder's Triton model is lmkit's loop over its graphs, as T5's (test_t5_export)."""
    from conftest import triton_request, triton_text_model

    model_dir, _ = exported["nmt"]
    with one_thread():
        done = run("export", model_dir, "--out", tmp_path / "triton", "--format", "triton", "--name", "nmt")
    assert done.code == 0, done.err
    sources = [s for s, _ in TASK.pairs(3, seed=8)]
    model = triton_text_model(tmp_path / "triton" / "nmt", monkeypatch)
    [response] = model.execute([triton_request(sources, NUM_BEAMS=4, MAX_TOKENS=40)])
    with one_thread():
        want = run("translate", model_dir, *[a for s in sources for a in ("--text", s)], "--strategy", "beam",
                   "--num-beams", "4", "--max-new-tokens", 40, "--json")
    assert [row[0].decode() for row in response.output_tensors[0].as_numpy()] == [
        r["text"] for r in json.loads(want.out)]
