"""GLM's blank filling (Du et al. 2022 §2.1): every blank written span after span through the shared
strategies, the backend feeding the positions the model supplies; and the same on onnxruntime from an
export whose one cached graph takes both position rows and the mask, with torch blocked."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import NO_TORCH, run_cli  # noqa: E402

from lmkit.decoding.common import Positions  # noqa: E402
from lmkit.decoding.greedy import Greedy  # noqa: E402
from lmkit.decoding.options import GreedyOptions  # noqa: E402
from lmkit.decoding.torch_backend import TorchBackend  # noqa: E402


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A glm-tiny as composed (untrained: its [E] is as unlikely as any token, so spans run to --max-new-tokens,
    and its logits are far enough apart that float error decides no argmax), and its export, made on demand."""
    root = tmp_path_factory.mktemp("glm-gen")
    rng = np.random.default_rng(0)
    words = "the cat dog sat on a mat near door old red small big ran saw".split()
    (root / "docs.txt").write_text("\n".join(" ".join(rng.choice(words, size=8)) + " ." for _ in range(80)) + "\n")
    tok, model = str(root / "tok"), str(root / "glm")
    for args in (("tokenizer", "train", "--kind", "wordpiece", "--vocab-size", 120, root / "docs.txt", "--out", tok),
                 ("compose", "glm-tiny", "--set", f"tokenizer={tok}", "--out", model)):
        result = run_cli(*args)
        assert result.code == 0, result.err
    exports: dict[str, str] = {}

    def export(*flags) -> str:
        key = " ".join(map(str, flags))
        if key not in exports:
            out = str(root / f"exp{len(exports)}")
            result = run_cli("export", model, "--out", out, *flags)
            assert result.code == 0, result.err
            exports[key] = out
        return exports[key]

    return {"root": root, "model": model, "export": export}


@pytest.fixture(scope="module")
def glm(made):
    return made["model"]


def reference_fill(decoder, tokenizer, prompt: list[int], max_new_tokens: int) -> list[list[int]]:
    """Greedy blank filling by the definition: one full forward pass (no cache) of Part A and every span so far
    per new token, with the positions written out by hand."""
    masks = {tokenizer.token_to_id(t) for t in ("[MASK]", "[sMASK]", "[gMASK]")}
    start, end = tokenizer.token_to_id("[S]"), tokenizer.token_to_id("[E]")
    places = [i for i, t in enumerate(prompt) if t in masks]
    spans: list[list[int]] = []
    for _ in places:
        span: list[int] = []
        while len(span) < max_new_tokens:
            ids = list(prompt) + [t for s in [*spans, span] for t in (start, *s)]
            pos1 = list(range(len(prompt))) + [m for m, s in zip(places, [*spans, span]) for _ in range(len(s) + 1)]
            pos2 = [0] * len(prompt) + [p for s in [*spans, span] for p in range(1, len(s) + 2)]
            with torch.no_grad():
                logits = decoder(torch.tensor([ids]), position_ids=torch.tensor([[pos1, pos2]]))
            token = int(logits[0, -1].argmax())
            if token == end:
                break
            span.append(token)
        spans.append(span)
    return spans


def test_greedy_blank_filling_equals_full_forward_passes(glm):
    from lmkit import open_model

    opened = open_model(glm)
    prompts = ["the [MASK] sat on the [MASK] near the door .", "a [sMASK] the dog ran [MASK] .", "the cat [gMASK]"]
    ids = opened.tokenizer.encode_batch(prompts)
    results = opened.generate_ids(ids, opened.decoding("greedy", max_new_tokens=4))
    for prompt, result in zip(ids, results):
        expected = reference_fill(opened.model.decoder, opened.tokenizer, prompt, 4)
        assert [span.tokens for span in result.spans] == expected
        assert result.tokens == [t for span in expected for t in span]
    # Several blanks and batching change nothing: each prompt alone gives the same spans.
    for prompt, result in zip(ids, results):
        alone = opened.generate_ids([prompt], opened.decoding("greedy", max_new_tokens=4))[0]
        assert [s.tokens for s in alone.spans] == [s.tokens for s in result.spans]


def test_filled_text_and_json_spans_from_the_cli(glm):
    result = run_cli("generate", glm, "--prompt", "the [MASK] sat on the [MASK] .", "--max-new-tokens", 3, "--json")
    assert result.code == 0, result.err
    record, = json.loads(result.out)
    assert len(record["spans"]) == 2
    filled = record["text"].split()
    assert "[MASK]" not in filled and filled[0] == "the"
    for span in record["spans"]:
        assert span["finish_reason"] in ("eos", "length") and len(span["tokens"]) <= 3
    plain = run_cli("generate", glm, "--prompt", "the [MASK] sat on the [MASK] .", "--max-new-tokens", 3)
    assert plain.code == 0 and plain.out.strip() == record["text"]


@pytest.mark.parametrize("flags", [["--strategy", "beam", "--num-beams", 3],
                                   ["--strategy", "sample", "--seed", 7, "--top-k", 5]])
def test_beam_and_sampling_fill_blanks(glm, flags):
    prompt = ["--prompt", "the [MASK] sat on the [MASK] .", "--max-new-tokens", 4, "--json"]
    first, again = run_cli("generate", glm, *prompt, *flags), run_cli("generate", glm, *prompt, *flags)
    assert first.code == 0, first.err
    record = json.loads(first.out)[0]
    assert len(record["spans"]) == 2 and first.out == again.out  # seeded sampling repeats itself


def test_beam_of_one_is_greedy(glm):
    args = ["--prompt", "the [MASK] sat on the [MASK] .", "--max-new-tokens", 4, "--json"]
    greedy = json.loads(run_cli("generate", glm, *args).out)[0]
    beam = json.loads(run_cli("generate", glm, *args, "--strategy", "beam", "--num-beams", 1).out)[0]
    assert [s["tokens"] for s in beam["spans"]] == [s["tokens"] for s in greedy["spans"]]


@pytest.mark.parametrize("prompt, message", [
    ("no blank in this text", "has no blank to fill; GLM fills [MASK], [sMASK], [gMASK]"),
    (" ".join(["the"] * 40 + ["[MASK]"] * 25), "blanks, more than the model's context of 64 positions can fill"),
])
def test_bad_prompts_are_one_line_errors(glm, prompt, message):
    result = run_cli("generate", glm, "--prompt", prompt)
    assert result.code != 0 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err


def test_backend_feeds_positions_the_model_supplies():
    """The generic change: a backend given a decoder's own positions (here GPT-2's 0, 1, 2, ... written out, step
    1) generates what it does when it counts them itself; with left padding too."""
    from lmkit.plugins.gpt.config import GPT2Config
    from lmkit.plugins.gpt.model import GPT2Decoder

    torch.manual_seed(0)
    decoder = GPT2Decoder(GPT2Config(vocab_size=64, max_positions=16, d_model=32, n_layers=2, n_heads=2)).eval()
    prompts = [[5, 9, 14, 3, 7, 8], [11], [4, 4, 12]]
    search = Greedy(GreedyOptions(max_new_tokens=12))  # 6 + 12 > 16: rows outlive the context (a restart)
    counted = search.generate(TorchBackend(decoder, 12), prompts, eos_id=None, pad_id=0)
    supplied = search.generate(TorchBackend(decoder, 12), prompts, eos_id=None, pad_id=0,
                               positions=Positions([np.arange(len(p)) for p in prompts], step=(1,)))
    assert [g.tokens for g in supplied] == [g.tokens for g in counted]
    # And they are what the decoder reads: other positions, other logits.
    ids, mask = np.array([prompts[0]]), np.ones((1, 6), dtype=bool)
    counted_logits = TorchBackend(decoder, 2).prefill(ids, mask)
    shifted_logits = TorchBackend(decoder, 2).prefill(ids, mask, np.arange(6)[None] + 3, np.array([1]))
    assert not np.allclose(counted_logits, shifted_logits)


def test_glm_positions_through_the_backend_equal_a_full_pass(glm):
    """A [gMASK] span decoded with the cache and step (0, 1) equals the full forward pass of its positions."""
    from lmkit.model import load_model

    model, tokenizer, _ = load_model(glm)
    decoder = model.decoder
    prompt = tokenizer.encode("the cat sat [gMASK]") + [tokenizer.token_to_id("[S]")]
    n = len(prompt)
    pos = np.array([list(range(n - 1)) + [n - 2], [0] * (n - 1) + [1]])
    backend = TorchBackend(decoder, 4)
    logits = [backend.prefill(np.array([prompt]), np.ones((1, n), bool), pos[None], np.array([0, 1]))]
    fed = list(prompt)
    for token in (7, 9, 11):
        logits.append(backend.step(np.array([token])))
        fed.append(token)
    full_pos = np.concatenate([pos, [[n - 2] * 3, [2, 3, 4]]], axis=1)
    with torch.no_grad():
        full = decoder(torch.tensor([fed]), position_ids=torch.tensor(full_pos[None]))[0, n - 1:]
    np.testing.assert_allclose(np.stack([row[0] for row in logits]), full.numpy(), rtol=1e-4, atol=1e-4)


# -- the export ------------------------------------------------------------------------------------

PROMPTS = ["the [MASK] sat on the [MASK] near the door .", "a small dog [gMASK]"]
SLOW = pytest.mark.skipif(os.environ.get("LMKIT_SLOW_TESTS") != "1",
                          reason="a second export (about 15 s); set LMKIT_SLOW_TESTS=1 to run")


def generate_without_torch(directory: str, *args) -> list[dict]:
    code = NO_TORCH + "from lmkit.cli import main\nmain()\n"
    done = subprocess.run([sys.executable, "-c", code, "generate", directory, *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_export_has_both_position_rows_the_mask_and_a_cache(made):
    manifest = json.loads(open(os.path.join(made["export"](), "lmkit-onnx.json")).read())
    graph = manifest["graphs"]["model"]
    inputs = {tensor["name"]: tensor["shape"] for tensor in graph["inputs"]}
    assert inputs["position_ids"] == ["batch_size", 2, "sequence_length"]
    assert inputs["attention_mask"] == ["batch_size", "past_sequence_length + sequence_length"]
    assert len(graph["cache"]) == 2 * 2  # keys and values of 2 layers
    assert manifest["validation"]["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("flags", [[], pytest.param(["--strategy", "beam", "--num-beams", 3], marks=SLOW),
                                   ["--strategy", "sample", "--seed", 3]])
def test_blank_filling_on_onnxruntime_equals_pytorch(made, flags):
    args = [x for p in PROMPTS for x in ("--prompt", p)] + ["--max-new-tokens", 5, "--json", *flags]
    torch_run = run_cli("generate", made["model"], *args)
    assert torch_run.code == 0, torch_run.err
    expected = json.loads(torch_run.out)
    got = generate_without_torch(made["export"](), *args)
    assert [[s["tokens"] for s in r["spans"]] for r in got] == [[s["tokens"] for s in r["spans"]] for r in expected]
    assert [r["text"] for r in got] == [r["text"] for r in expected]
    assert sum(len(s["tokens"]) for r in expected for s in r["spans"]) >= 10  # real spans, not just [E]


@SLOW
def test_int8_export_is_validated_and_fills_blanks(made):
    out = made["export"]("--quantize", "int8")
    manifest = json.loads(open(os.path.join(out, "lmkit-onnx.json")).read())
    assert manifest["validation"]["top1_agreement"] >= 0.5
    record, = generate_without_torch(out, "--prompt", PROMPTS[0], "--max-new-tokens", 3, "--json")
    assert len(record["spans"]) == 2 and "[MASK]" not in record["text"]


def test_eval_scores_each_document_as_a_gmask_span(made, tmp_path):
    """`lmkit eval --data` on GLM: every document written left to right after [gMASK] [S], its [E] included, so it
    predicts as many tokens as a left-to-right model reading eos doc eos doc ... does."""
    from lmkit.model import load_model
    from lmkit.plugins.glm.evaluation import document_items, score_spans

    texts = ["the cat sat on the mat .", "a dog ran near the old door and the small cat saw it . " * 6, "red ."]
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    result = run_cli("eval", made["model"], "--data", data, "--json")
    assert result.code == 0, result.err
    record = json.loads(result.out)
    model, tokenizer, _ = load_model(made["model"])
    documents = tokenizer.encode_batch(texts)
    assert len(documents[1]) > 64  # one document needs several windows of the 64 positions
    ids = {t: tokenizer.token_to_id(t) for t in ("[gMASK]", "[S]", "[E]")}
    assert record["stride"] == 32  # half the context, as for every left-to-right model
    items = [item for d in documents for item in document_items(d, 64, 32)]
    nll, count = score_spans(model.decoder, items, ids)
    assert record["tokens"] == count == sum(len(d) + 1 for d in documents)
    assert record["perplexity"] == pytest.approx(np.exp(nll / count), rel=1e-5)


def test_eval_reads_documents_as_training_does(made, tmp_path):
    """A text file of blank-line-separated documents, one sentence per line, is scored document by document, as
    the same documents one per .jsonl record (what GLM's pre-training reads: lmkit.documents)."""
    documents = [["the cat sat on the mat .", "a dog ran ."], ["red door ."], ["the old cat saw it .", "it ran ."]]
    text = tmp_path / "heldout.txt"
    text.write_text("\n\n".join("\n".join(d) for d in documents) + "\n")
    records = tmp_path / "heldout.jsonl"
    records.write_text("".join(json.dumps({"text": "\n".join(d)}) + "\n" for d in documents))
    a, b = (run_cli("eval", made["model"], "--data", path, "--json") for path in (text, records))
    assert a.code == 0 and b.code == 0, a.err + b.err
    a, b = json.loads(a.out), json.loads(b.out)
    assert a["documents"] == b["documents"] == 3
    from lmkit.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(made["model"])
    tokens = sum(len(tokenizer.encode(sentence)) for d in documents for sentence in d)
    assert a["tokens"] == b["tokens"] == tokens + 3  # each document's tokens and its [E]
    assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-6)


def test_eval_honours_the_stride(made, tmp_path):
    """--stride N: each window writes N tokens after the context - 2 - N before them; a stride past what a
    window can write ([gMASK] and [S] take two positions) is a one-line error."""
    from lmkit.model import load_model
    from lmkit.plugins.glm.evaluation import document_items, score_spans

    text = "a dog ran near the old door and the small cat saw it . " * 8
    data = tmp_path / "heldout.jsonl"
    data.write_text(json.dumps({"text": text}) + "\n")
    model, tokenizer, _ = load_model(made["model"])
    ids = {t: tokenizer.token_to_id(t) for t in ("[gMASK]", "[S]", "[E]")}
    document = tokenizer.encode(text)
    seen = set()
    for stride in (8, 62):
        result = run_cli("eval", made["model"], "--data", data, "--stride", stride, "--json")
        assert result.code == 0, result.err
        record = json.loads(result.out)
        items = document_items(document, 64, stride)
        assert all(len(before) + 2 + len(written) <= 64 and len(written) <= stride for before, written, _ in items)
        assert [t for _, written, _ in items for t in written] == document  # every token once
        nll, count = score_spans(model.decoder, items, ids)
        assert record["stride"] == stride and record["tokens"] == count == len(document) + 1
        assert record["perplexity"] == pytest.approx(np.exp(nll / count), rel=1e-5)
        seen.add(round(record["perplexity"], 6))
    assert len(seen) == 2  # the stride changes what each token sees
    result = run_cli("eval", made["model"], "--data", data, "--stride", 63)
    assert result.code != 0 and "--stride 63" in result.err and "62 or less" in result.err
    assert len(result.err.strip().splitlines()) == 1


def logits_seen(opened, call, monkeypatch) -> list[np.ndarray]:
    """The logits of every prefill and step that call() runs on opened's backends, in order."""
    seen: list[np.ndarray] = []
    make_backend = opened.backend

    def recording_backend(*args, **kwargs):
        backend = make_backend(*args, **kwargs)
        prefill, step = backend.prefill, backend.step
        backend.prefill = lambda *a, **k: seen.append(prefill(*a, **k)) or seen[-1]
        backend.step = lambda *a, **k: seen.append(step(*a, **k)) or seen[-1]
        return backend

    monkeypatch.setattr(opened, "backend", recording_backend)
    call()
    monkeypatch.undo()
    return seen


def test_lmkit_bench_times_writing_on_after_a_text(made, run):
    result = run("bench", made["model"], made["export"](), "--prompt-tokens", "6", "--new-tokens", "4",
                 "--repeats", "1", "--batch-size", "2", "--threads", "1", "--json")
    assert result.code == 0, result.err
    for speed in json.loads(result.out)["models"]:
        assert speed["kind"] == "decoder" and speed["prefill_ms"] > 0 and speed["decode_ms_per_step"] > 0


@pytest.mark.parametrize("which", ["model", "export"])
def test_lmkit_bench_sees_the_logits_of_blank_filling(made, which, monkeypatch):
    # GLM is timed as it fills a [gMASK] after each random prompt: its prefill is Part A and [S] at the 2-D
    # positions, and each timed step feeds back the argmax. So every logit the bench sees is one that greedy
    # blank filling of the same prompts sees.
    from lmkit.benchmark import measure, random_prompts
    from lmkit.opening import open_model

    opened = open_model(made["model"] if which == "model" else made["export"](), device="cpu")
    timed = logits_seen(opened, lambda: measure([opened], prompt_tokens=6, new_tokens=4, batch_size=2, repeats=1),
                        monkeypatch)
    texts = random_prompts(opened, 2, 6, seed=0).tolist()  # what measure() drew: no special token among them
    assert not opened.tokenizer.special_ids() & {t for text in texts for t in text}
    gmask = opened.tokenizer.token_to_id("[gMASK]")
    prompts = [[*text, gmask] for text in texts]
    filled = logits_seen(opened, lambda: opened.generate_ids(prompts, opened.decoding("greedy", max_new_tokens=5)),
                         monkeypatch)
    assert len(timed) == 10 and len(filled) == 5  # (the warm-up and the timed run) x (prefill and 4 steps)
    for ours, reference in zip(timed[5:], filled):
        np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_lmkit_bench_refuses_a_glm_prompt_beyond_its_context(glm, run):
    # glm-tiny reads 64 positions; a prompt is fed with [gMASK] and [S], two more than --prompt-tokens.
    for prompt, new in (("100000", "32"), ("32", "31")):
        result = run("bench", glm, "--prompt-tokens", prompt, "--new-tokens", new, "--repeats", "1")
        assert result.code != 0 and "positions" in result.err and "lower them" in result.err
        assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    fits = run("bench", glm, "--prompt-tokens", "30", "--new-tokens", "32", "--repeats", "1", "--threads", "1")
    assert fits.code == 0, fits.err
