"""T5's export (an encoder graph with every layer's cross-attention keys/values, a decoder-step graph with the
self-attention cache) through the generic encoder-decoder runtime: greedy and beam-4 tokens identical to
PyTorch with torch blocked, on a checkpoint imported from transformers; fp16 and int8 validated."""
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import NO_TORCH, run_cli, triton_request, triton_text_model  # noqa: E402
from test_t5_hf import SOURCES, hf_generate, hf_model, t5_tokenizer  # noqa: E402

from lmkit.commands.import_hf import import_hf  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A v1.1 checkpoint (gated-gelu, own output layer) from transformers: (its directory, model, tokenizer)."""
    directory = tmp_path_factory.mktemp("hf-t5")
    # The tokenizer is trained once and kept: the unigram trainer need not give the same pieces twice.
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=t5_tokenizer(), eos_token="</s>",
                                                     pad_token="<pad>", unk_token="<unk>")
    tokenizer.save_pretrained(directory)
    model = hf_model("v1.1")
    model.save_pretrained(directory)
    return str(directory), model, tokenizer


@pytest.fixture(scope="module")
def imported(checkpoint, tmp_path_factory):
    """The checkpoint as an lmkit model directory."""
    out = tmp_path_factory.mktemp("imported") / "t5"
    import_hf(checkpoint[0], str(out))
    return str(out)


def cli(*args):
    result = run_cli(*args)
    assert result.code == 0, result.err
    return result


def without_torch(*args) -> str:
    done = subprocess.run([sys.executable, "-c", NO_TORCH + "from lmkit.cli import main\nmain()\n", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("layout, search", [("fast", ["--strategy", "greedy"]),
                                            ("fast", ["--strategy", "beam", "--num-beams", "4"]),
                                            ("genai", ["--strategy", "beam", "--num-beams", "4"])])
def test_tokens_identical_to_pytorch_without_torch(checkpoint, imported, tmp_path_factory, layout, search):
    exported = str(tmp_path_factory.getbasetemp() / f"t5-export-{layout}")
    if not os.path.isdir(exported):
        cli("export", imported, "--out", exported, "--layout", layout)
    manifest = json.load(open(os.path.join(exported, "lmkit-onnx.json")))
    assert manifest["validation"]["max_abs_diff"] < 1e-4
    wiring = manifest["encoder_decoder"]
    feeds = {feed["input"]: feed for feed in wiring["feeds"]}
    if layout == "fast":  # per layer: a buffer written in place, the cross-attention keys/values from the encoder once
        assert wiring["cache_layout"] == "buffer" and feeds["decoder_attention_mask"]["source"] == "target_mask"
        assert feeds["cross_k.1"]["source"] == "encoder" and feeds["self_k.1"]["source"] == "zeros"
        decoder = manifest["graphs"]["decoder"]
        assert {"input": "self_v.1", "output": "present_v.1"} in decoder["cache"]
        nodes = {node.op_type for node in __import__("onnx").load(os.path.join(exported, decoder["file"])).graph.node}
        assert "GroupQueryAttention" in nodes and "Split" not in nodes  # nothing of the cache split out or copied
    else:  # every layer's in one tensor, the past concatenated
        assert "cache_layout" not in wiring
        assert feeds["cross_k"]["source"] == "encoder" and feeds["self_k"]["source"] == "zeros"
    args = [x for text in SOURCES for x in ("--text", text)] + [*search, "--max-new-tokens", "14", "--json"]
    in_torch = [r["tokens"] for r in json.loads(cli("translate", imported, *args).out)]
    in_ort = [r["tokens"] for r in json.loads(without_torch("translate", exported, *args))]
    assert in_ort == in_torch
    # Text in, as a user gives it: the sources end with </s> as transformers' tokenizer writes them, in the
    # model directory and in the export (its manifest records the suffix), so both decode as generate() does.
    assert manifest["source_suffix"] == [1]
    _, hf, tokenizer = checkpoint
    beams = 1 if search[1] == "greedy" else 4
    expected = [hypotheses[0] for hypotheses in hf_generate(hf, tokenizer, num_beams=beams,
                                                            **({"early_stopping": False} if beams > 1 else {}))]
    assert in_torch == expected
    assert any(len(tokens) < 14 for tokens in in_torch) or search[1] == "greedy"  # eos reached inside the beams


def test_cache_buffers_grow_when_a_generation_outlasts_them(checkpoint, imported, tmp_path_factory):
    """A backend whose buffers hold 3 positions at first generates 14 tokens by doubling them, beams reordering
    their filled part in place: the same tokens as buffers sized for the whole generation, as buffers fed
    back as outputs (what runs on a GPU, where they are not bound as both), and as PyTorch."""
    from lmkit.decoding.beam import BeamSearch
    from lmkit.decoding.options import BeamSearchOptions
    from lmkit.exports.seq2seq_runtime import OrtSeq2SeqBackend
    from lmkit.opening import open_model
    from lmkit.seq2seq import Seq2SeqGenerator

    exported = str(tmp_path_factory.getbasetemp() / "t5-export-fast")
    if not os.path.isdir(exported):
        cli("export", imported, "--out", exported)
    sources = [checkpoint[2](text)["input_ids"] for text in SOURCES]
    beam = BeamSearch(BeamSearchOptions(max_new_tokens=14, num_beams=4))
    tokens = {}
    for directory, room, shared in ((exported, 2, True), (exported, 14, True), (exported, 2, False),
                                    (imported, 14, None)):
        opened = open_model(directory, device="cpu") if directory == imported else open_model(directory)
        backend = opened.backend(room)
        if shared is False:
            runtime = opened.runtime
            backend = OrtSeq2SeqBackend(runtime.encoder, runtime.decoder, runtime.export.manifest["graphs"],
                                        runtime.layout, capacity=room + 1, share_buffers=False)
        generator = Seq2SeqGenerator.for_tokenizer(backend, opened.decoder_start, opened.output_tokenizer)
        tokens[directory, room, shared] = [r.tokens for r in generator.generate(beam, sources)]
        if room == 2:
            assert backend.capacity == 3 and backend.state["self_k.0"].shape[2] == 24  # 3 -> 6 -> 12 -> 24
    assert len(set(map(str, tokens.values()))) == 1


@pytest.mark.parametrize("precision", [["--dtype", "fp16"], ["--quantize", "int8"]])
def test_reduced_precision_exports_are_validated(imported, tmp_path, precision):
    out = str(tmp_path / "export")
    cli("export", imported, "--out", out, *precision)
    validation = json.load(open(os.path.join(out, "lmkit-onnx.json")))["validation"]
    assert validation["top1_agreement"] >= (0.9 if precision[0] == "--dtype" else 0.5)
    if precision[0] == "--dtype":
        # Half precision's rounding, on the cache's positions only: the fp16 graph writes its cache through casts
        # into a new buffer, whose spare room (never read) used to count as a difference of ~4 (a user's trial).
        decoder = [s for s in validation["shape_sets"] if s["graph"] == "decoder"]
        assert decoder and max(max(s["max_abs_diff"].values()) for s in decoder) < 0.05
    print(f"\n{precision[-1]}: top-1 agreement {validation['top1_agreement']:.3f}, "
          f"max |difference| {validation['max_abs_diff']:.2e}")


def test_fp16_export_of_a_model_that_overflows_is_refused(imported, tmp_path):
    """Feed-forward products past fp16's 65504 (T5 was trained in bf16): PyTorch's fp32 reference stays finite,
    the fp16 graph turns them into inf/NaN, and the export is refused naming the output, nothing written."""
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "overflowing"
    shutil.copytree(imported, model)
    weights = load_file(model / "model.safetensors")
    weights["encoder.block.0.mlp.wo.weight"] *= 3e5
    save_file(weights, model / "model.safetensors")
    result = run_cli("export", model, "--out", tmp_path / "fp16", "--dtype", "fp16")
    assert result.code != 0
    progress, error = result.err.strip().splitlines()  # "exporting ... (fp16) ...", then the one-line error
    assert progress.startswith("exporting ")
    assert "fp16 export overflows: encoder.block.0.mlp.wo" in error and "65504" in error
    assert "nothing was written" in error and not (tmp_path / "fp16").exists()
    print("\n" + error)


def test_triton_repository_translates_as_lmkit_translate(imported, tmp_path, monkeypatch):
    """--format triton: an encoder-decoder's model folder is its export and a python-backend model that runs
    lmkit's loop over both graphs (no onnxruntime-backend model can). Its execute(), under a stand-in for
    Triton's pb_utils, answers each request with `lmkit translate`'s text for its settings (greedy, beam,
    sampling with a seed), and a setting the strategy does not take with an error for that request alone."""
    repository = tmp_path / "triton"
    cli("export", imported, "--out", repository, "--format", "triton", "--name", "t5")
    assert sorted(os.listdir(repository)) == ["t5"]  # no raw-graph model beside it: the graphs are in t5/1/
    assert sorted(os.listdir(repository / "t5" / "1")) == ["decoder.onnx", "encoder.onnx", "model.py"]
    config = (repository / "t5" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and '"NUM_BEAMS"' in config and 'string_value: "."' in config
    model = triton_text_model(repository / "t5", monkeypatch)
    asks = [(SOURCES, {"MAX_TOKENS": 8, "NUM_BEAMS": 1}, ["--strategy", "greedy", "--max-new-tokens", "8"]),
            (SOURCES[:2], {"MAX_TOKENS": 8, "NUM_BEAMS": 4}, ["--strategy", "beam", "--num-beams", "4",
                                                              "--max-new-tokens", "8"]),
            (SOURCES[1:], {"MAX_TOKENS": 6, "TEMPERATURE": 0.8, "SEED": 3},
             ["--strategy", "sample", "--temperature", "0.8", "--seed", "3", "--max-new-tokens", "6"]),
            (SOURCES[:1], {"MAX_TOKENS": 8, "NUM_BEAMS": 1}, ["--strategy", "greedy", "--max-new-tokens", "8"]),
            (SOURCES[:1], {"NUM_BEAMS": 2, "TOP_P": 0.5}, "top_p"),
            (["dog " * 600], {"MAX_TOKENS": 8, "NUM_BEAMS": 1}, "the source has")]
    responses = model.execute([triton_request(texts, **options) for texts, options, _ in asks])
    for (texts, _, flags), response in zip(asks, responses):
        # A setting its strategy does not take (top_p is sampling's), or a source longer than the model reads
        # (batched with the greedy requests above, and named as its own request's source): this request
        # fails, the others in its execute() do not.
        if isinstance(flags, str):
            assert response.output_tensors == [] and flags in response.error.message, response.error.message
            continue
        assert response.error is None
        sources = [x for text in texts for x in ("--text", text)]
        expected = [r["text"] for r in json.loads(cli("translate", imported, *sources, *flags, "--json").out)]
        assert [row[0].decode() for row in response.output_tensors[0].as_numpy()] == expected
    model.finalize()


def _first_stop(tokens: list[int], tokenizer) -> tuple[int, str] | None:
    """(k, text): a text whose tokens are tokens[k:k + n], n <= 3, k >= 1, and appear nowhere before k."""
    for k in range(1, len(tokens)):
        for n in (1, 2, 3):
            span, text = tokens[k:k + n], tokenizer.decode(tokens[k:k + n])
            if (len(span) == n and text.strip() and tokenizer.encode(text) == span
                    and not any(tokens[s:s + n] == span for s in range(k))):
                return k, text
    return None


def test_stop_ends_an_encoder_decoders_target_on_the_model_and_its_export(t5_directories):
    # A trial's `lmkit generate runs/t5 --stop what` ignored --stop: encoder-decoders never received it.
    from lmkit.tokenizers import load_tokenizer

    model_dir, export_dir = t5_directories
    tokenizer = load_tokenizer(model_dir)
    for directory in (model_dir, export_dir):
        # Random weights write what they write: the first prompt whose target holds a text to stop at.
        for prompt in ["the quick brown fox", *SOURCES[1:], "over the mat a fox ran"]:
            whole = run_cli("generate", directory, "--prompt", prompt, "--max-new-tokens", "12", "--json")
            assert whole.code == 0, whole.err
            tokens = json.loads(whole.out)[0]["tokens"]
            if found := _first_stop(tokens, tokenizer):
                break
        else:
            pytest.fail(f"no target of {directory} holds a text that encodes as its own tokens: {tokens}")
        k, text = found
        stopped = run_cli("generate", directory, "--prompt", prompt, "--max-new-tokens", "12", "--stop", text,
                          "--json")
        assert stopped.code == 0, stopped.err
        result = json.loads(stopped.out)[0]
        assert result["tokens"] == tokens[:k] and result["finish_reason"] == "stop", (directory, k, tokens, result)
