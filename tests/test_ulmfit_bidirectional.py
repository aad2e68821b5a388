"""ULMFiT §3.4: a backward language model (tokenizer.reverse) and the forward and backward classifiers'
predictions averaged by `lmkit predict FWD BWD`, on model directories and on exports."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import NO_TORCH, run_cli  # noqa: E402

from lmkit.data import load_tokens, tokenizer_fingerprint  # noqa: E402
from lmkit.tokenizers import load_tokenizer  # noqa: E402

WORDS = "alpha beta gamma delta eps zeta eta theta iota kappa".split()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ulmfit-bidirectional")
    rng = random.Random(0)
    lines, rows = [], []
    for _ in range(32):
        text = " ".join(rng.choice(WORDS) for _word in range(rng.randint(4, 12)))
        lines.append(text)
        rows.append({"text": text, "label": "yes" if "alpha" in text.split() else "no"})
    (root / "text.txt").write_text("\n\n".join(lines) + "\n")
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    specials = json.dumps(["<unk>", "<pad>", "</s>"])
    assert run_cli("tokenizer", "train", "--kind", "bpe", "--vocab-size", 80, "--set", f"special_tokens={specials}",
                   str(root / "text.txt"), "--out", str(root / "tok")).code == 0
    return root


def test_a_reversed_tokenizer_reads_right_to_left_and_decodes_back(files, tmp_path):
    forward = load_tokenizer(files / "tok")
    backward = forward.reversed()
    text = "alpha beta gamma delta"
    assert backward.encode(text) == forward.encode(text)[::-1]
    assert backward.encode_batch([text, "eta"]) == [forward.encode(text)[::-1], forward.encode("eta")[::-1]]
    assert backward.decode(backward.encode(text)) == forward.decode(forward.encode(text))
    assert backward.forward().encode(text) == forward.encode(text)
    backward.save(tmp_path / "saved")
    assert load_tokenizer(tmp_path / "saved").reverse  # recorded in tokenizer_config.json
    assert not load_tokenizer(files / "tok").reverse
    assert tokenizer_fingerprint(backward) != tokenizer_fingerprint(forward)  # no cache or resume mix-up


def test_the_backward_stream_is_the_forward_stream_read_backwards(files, tmp_path):
    documents = ["alpha beta gamma", "delta eps", "zeta eta theta iota"]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
    forward = load_tokenizer(files / "tok")
    ahead = np.asarray(load_tokens(path, forward).tokens)
    back = np.asarray(load_tokens(path, forward.reversed()).tokens)
    assert np.array_equal(back, ahead[::-1])
    # each document right to left, an end-of-text token before it, the last document first (fastai's loader)
    expected = [token for text in documents[::-1] for token in [forward.eos_id, *forward.encode(text)[::-1]]]
    assert back.tolist() == expected


@pytest.fixture(scope="module")
def classifiers(files):
    """A forward and a backward awd-lstm-tiny LM, a few steps each, and a ulmfit classifier on each."""
    made = {}
    for name, extra in (("fwd", []), ("bwd", ["--set", "tokenizer.reverse=true"])):
        lm = str(files / f"lm-{name}")
        result = run_cli("compose", "awd-lstm-tiny", "--set", f"tokenizer={files / 'tok'}", *extra,
                         "--set", "decoder.vocab_size=80", "--out", lm)
        assert result.code == 0, result.err
        result = run_cli("train", lm, "--data", str(files / "text.txt"), "--steps", 3, "--batch-size", 4,
                         "--seq-len", 12, "--recipe", "ulmfit-lm", "--eval-every", 0)
        assert result.code == 0, result.err
        clf = str(files / f"clf-{name}")
        result = run_cli("finetune", lm, "--task", "classification", "--train", str(files / "task.jsonl"),
                         "--out", clf, "--epochs", 1, "--batch-size", 16, "--seed", 1)
        assert result.code == 0, result.err
        made[name], made[f"lm-{name}"] = clf, lm
    return made


def _predictions(result) -> list[dict]:
    assert result.code == 0, result.err
    return [json.loads(line) for line in result.out.splitlines() if line.startswith("{")]


def test_a_backward_model_records_its_direction_and_writes_what_comes_before_its_prompt(files, classifiers):
    config = json.loads(open(os.path.join(classifiers["lm-bwd"], "config.json")).read())
    assert config["spec"]["tokenizer"]["reverse"] is True
    assert load_tokenizer(classifiers["bwd"]).reverse  # the fine-tuned classifier reads backwards too
    result = run_cli("generate", classifiers["lm-bwd"], "--prompt", "alpha beta", "--max-new-tokens", 4)
    assert result.code == 0, result.err
    assert result.out.strip().endswith("alpha beta") and result.out.strip() != "alpha beta"
    streamed = run_cli("generate", classifiers["lm-bwd"], "--prompt", "alpha beta", "--stream")
    assert streamed.code != 0 and "right to left" in streamed.err


def test_predict_averages_the_forward_and_backward_probabilities(files, classifiers):
    task = str(files / "task.jsonl")
    fwd = _predictions(run_cli("predict", classifiers["fwd"], "--data", task))
    bwd = _predictions(run_cli("predict", classifiers["bwd"], "--data", task))
    both = run_cli("predict", classifiers["fwd"], classifiers["bwd"], "--data", task)
    averaged = _predictions(both)
    assert "accuracy" in both.err  # labelled: the metrics of the averaged predictions
    assert len(averaged) == 32 and [row["line"] for row in averaged] == [row["line"] for row in fwd]
    assert any(abs(f["probabilities"]["yes"] - b["probabilities"]["yes"]) > 1e-3 for f, b in zip(fwd, bwd))
    for f, b, a in zip(fwd, bwd, averaged):
        for label in ("yes", "no"):
            assert a["probabilities"][label] == pytest.approx((f["probabilities"][label] + b["probabilities"][label])
                                                              / 2, abs=2e-6)
        assert a["label"] == max(a["probabilities"], key=a["probabilities"].get)

    # Both exported: the average on onnxruntime, torch blocked, equals the one in PyTorch.
    exports = []
    for name in ("fwd", "bwd"):
        exports.append(str(files / f"exp-{name}"))
        result = run_cli("export", classifiers[name], "--out", exports[-1])
        assert result.code == 0, result.err
    code = NO_TORCH + "from lmkit.cli import main\nmain()\n"
    done = subprocess.run([sys.executable, "-c", code, "predict", *exports, "--data", task], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    served = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [row["label"] for row in served] == [row["label"] for row in averaged]
    for s, a in zip(served, averaged):
        assert s["probabilities"] == pytest.approx(a["probabilities"], abs=1e-5)


def test_averaging_models_of_different_labels_is_refused_in_one_line(files, classifiers, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": w, "label": w[0]}) + "\n" for w in WORDS))
    clf = str(tmp_path / "clf")
    assert run_cli("finetune", classifiers["lm-fwd"], "--task", "classification", "--train", str(other), "--out", clf,
                   "--steps", 1).code == 0
    result = run_cli("predict", classifiers["fwd"], clf, "--data", str(files / "task.jsonl"))
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert result.code != 0 and len(errors) == 1 and "another task or labels" in errors[0], result.err


def test_a_reversed_tokenizer_on_an_encoders_inputs_is_refused(files):
    from lmkit.errors import DataError
    from lmkit.tasks.inputs import EncoderInputs

    with pytest.raises(DataError, match="right to left"):
        EncoderInputs(load_tokenizer(files / "tok").reversed(), 16)
