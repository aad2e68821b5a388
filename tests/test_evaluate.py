"""`lmkit eval`: perplexity, bits per token and bits per byte of held-out text, with a sliding window."""
import json
import math

import numpy as np
import pytest
import torch

from lmkit.model import compose, load_model
from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    corpus = root / "train.txt"
    corpus.write_text("the cat sat on the mat and the dog ran after it\n" * 200)
    ByteLevelBPE.train([str(corpus)], ByteLevelBPEOptions(vocab_size=300), progress=False).save(str(root / "tok"))
    out = str(root / "m")
    compose("gpt2-tiny", [f"tokenizer={root / 'tok'}", "decoder.max_positions=32"], out)
    return out


@pytest.fixture
def heldout(tmp_path):
    path = tmp_path / "heldout.txt"
    path.write_text("the dog sat on the cat, and the mat ran after the dog. " * 8)
    return path


def test_eval_reports_perplexity_bits_per_token_and_bits_per_byte(run, model_dir, heldout):
    result = run("eval", model_dir, "--data", heldout, "--json")
    assert result.code == 0, result.err
    scores = json.loads(result.out)
    text = heldout.read_text()
    assert scores["bytes"] == len(text.encode())
    assert scores["context"] == 32 and scores["stride"] == 16
    assert scores["bits_per_token"] == pytest.approx(math.log2(scores["perplexity"]))
    assert scores["bits_per_byte"] == pytest.approx(scores["nll"] / math.log(2) / scores["bytes"])

    model, tokenizer, _ = load_model(model_dir)
    tokens = [tokenizer.eos_id, *tokenizer.encode(text), tokenizer.eos_id]
    assert scores["tokens"] == len(tokens) - 1
    # the sliding window gives each token at least 16 tokens of context; brute force does the same
    nll = 0.0
    with torch.no_grad():
        for t in range(1, len(tokens)):
            window = torch.tensor([tokens[max(0, t - 31):t]])
            nll -= torch.log_softmax(model.decoder(window)[0, -1], -1)[tokens[t]].item()
    full_context_nll = nll
    assert scores["nll"] == pytest.approx(full_context_nll, rel=0.02)


def test_a_full_stride_of_one_window_equals_scoring_the_whole_text_at_once(run, model_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("the cat sat on the mat")
    model, tokenizer, _ = load_model(model_dir)
    tokens = [tokenizer.eos_id, *tokenizer.encode(short.read_text()), tokenizer.eos_id]
    with torch.no_grad():
        log_probs = torch.log_softmax(model.decoder(torch.tensor([tokens[:-1]]))[0], -1)
    expected = -log_probs.gather(1, torch.tensor(tokens[1:])[:, None]).sum().item()
    scores = json.loads(run("eval", model_dir, "--data", short, "--json").out)
    assert scores["nll"] == pytest.approx(expected, rel=1e-5)
    assert np.isclose(scores["perplexity"], math.exp(expected / (len(tokens) - 1)))


@pytest.mark.parametrize("flags, message", [
    (["--context", "64"], "--context 64 is beyond the model's 32 positions"),
    (["--stride", "32"], "--stride 32 must be smaller than --context 32"),
])
def test_bad_windows_are_one_line_errors(run, model_dir, heldout, flags, message):
    result = run("eval", model_dir, "--data", heldout, *flags)
    assert result.code == 1 and message in result.err and result.err.count("\n") == 1


def test_eval_of_empty_or_missing_data(run, model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for path in (empty, tmp_path / "missing.txt"):
        result = run("eval", model_dir, "--data", path)
        assert result.code == 1 and result.err.startswith("error: ") and result.err.count("\n") == 1


def test_the_default_window_is_the_length_the_model_was_trained_on(run, model_dir, heldout, tmp_path):
    # Found by a user's trial: trained at --seq-len 128 of 256 positions, the default windows reached
    # positions never trained, and eval gave perplexity 3.43 where the model's own length gave 2.59.
    import shutil

    trained = shutil.copytree(model_dir, tmp_path / "trained")
    result = run("train", trained, "--data", heldout, "--steps", "1", "--batch-size", "2", "--seq-len", "16")
    assert result.code == 0, result.err
    result = run("eval", trained, "--data", heldout, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["context"] == 16 and json.loads(result.out)["stride"] == 8
    assert "note: windows of 16 tokens, the length" in result.err
    result = run("eval", trained, "--data", heldout, "--json", "--context", "32")  # asked for: no note
    assert json.loads(result.out)["context"] == 32 and "note:" not in result.err
    # generate says so when a continuation reaches past the trained length, and only then
    result = run("generate", trained, "--prompt", "the cat", "--max-new-tokens", "20", "--no-stream")
    assert result.code == 0 and "was trained on 16-token windows" in result.err and "text past 16" in result.err
    result = run("generate", trained, "--prompt", "the cat", "--max-new-tokens", "4", "--no-stream")
    assert result.code == 0 and "note:" not in result.err
