"""`lmkit train MODEL --out NEW`: a new run from a trained model's weights in a new directory, MODEL left as it
is (ULMFiT's stage 2 from stage 1; further training of any causal model)."""
from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from lmkit.training.checkpoint import OPTIMIZER, STATE  # noqa: E402
from lmkit.training.trainer import copy_model  # noqa: E402

WORDS = "alpha beta gamma delta eps zeta eta theta iota kappa".split()
RUN = ("--steps", 2, "--batch-size", 2, "--seq-len", 8, "--eval-every", 0, "--eval-batches", 1)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-out")
    lines = [" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(8)) for i in range(40)]
    (root / "general.txt").write_text("\n".join(lines) + "\n")
    (root / "target.txt").write_text("\n".join(lines[::-1]) + "\n")
    specials = json.dumps(["<unk>", "<pad>", "</s>"])
    assert run_cli("tokenizer", "train", "--kind", "bpe", "--vocab-size", 60, "--set", f"special_tokens={specials}",
                   str(root / "general.txt"), "--out", str(root / "tok")).code == 0
    return root


@pytest.mark.parametrize("preset", ["awd-lstm-tiny", "gpt2-tiny"])
def test_a_new_run_starts_from_the_trained_weights_and_leaves_the_source_as_it_was(root, preset, tmp_path):
    stage1 = str(tmp_path / "stage1")
    assert run_cli("compose", preset, "--set", f"tokenizer={root / 'tok'}", "--out", stage1).code == 0
    assert run_cli("train", stage1, "--data", str(root / "general.txt"), *RUN).code == 0
    before = {name: os.stat(os.path.join(stage1, name)).st_mtime_ns for name in os.listdir(stage1)}

    # The copy holds the same model (spec, weights, tokenizer) and none of the run.
    copied = str(tmp_path / "copied")
    copy_model(stage1, copied)
    assert sorted(os.listdir(copied)) == ["config.json", "model.safetensors", "tokenizer.json",
                                          "tokenizer_config.json"]
    source, copy = load_file(os.path.join(stage1, "model.safetensors")), load_file(os.path.join(copied,
                                                                                                 "model.safetensors"))
    assert source.keys() == copy.keys() and all(torch.equal(source[k], copy[k]) for k in source)
    spec = json.loads(open(os.path.join(stage1, "config.json")).read())["spec"]
    assert json.loads(open(os.path.join(copied, "config.json")).read())["spec"] == spec

    # Without --out the trained directory is refused, and told about --out.
    again = run_cli("train", stage1, "--data", str(root / "target.txt"), *RUN)
    assert again.code != 0 and "--out NEW_DIR" in again.err

    stage2 = str(tmp_path / "stage2")
    result = run_cli("train", stage1, "--data", str(root / "target.txt"), "--out", stage2, *RUN)
    assert result.code == 0, result.err
    assert result.out.strip() == stage2
    assert {STATE, OPTIMIZER, "metrics.jsonl"} <= set(os.listdir(stage2))
    state = json.loads(open(os.path.join(stage2, STATE)).read())
    assert state["step"] == 2 and state["arguments"]["data"] == [str(root / "target.txt")]
    assert {name: os.stat(os.path.join(stage1, name)).st_mtime_ns for name in os.listdir(stage1)} == before
    # Its first step trained from stage 1's weights: the loss it logged is the source model's, not a fresh one's.
    first = json.loads(open(os.path.join(stage2, "metrics.jsonl")).readline())
    fresh = str(tmp_path / "fresh")
    assert run_cli("compose", preset, "--set", f"tokenizer={root / 'tok'}", "--out", fresh).code == 0
    assert run_cli("train", fresh, "--data", str(root / "target.txt"), *RUN).code == 0
    assert first["loss"] != json.loads(open(os.path.join(fresh, "metrics.jsonl")).readline())["loss"]
    # and it resumes like any run
    assert run_cli("train", stage2, "--resume", "--steps", 3).code == 0


def test_bad_arguments_leave_no_directory_behind(root, tmp_path):
    stage1 = str(tmp_path / "stage1")
    assert run_cli("compose", "awd-lstm-tiny", "--set", f"tokenizer={root / 'tok'}", "--out", stage1).code == 0
    out = tmp_path / "stage2"
    cases = [
        (("--data", str(tmp_path / "missing.txt"), *RUN), "does not exist"),
        (("--data", str(root / "target.txt"), "--steps", 2), "--batch-size, --seq-len are needed"),
        (("--data", str(root / "target.txt"), "--resume", *RUN), "leave one of them out"),
    ]
    for arguments, message in cases:
        result = run_cli("train", stage1, "--out", str(out), *arguments)
        errors = [line for line in result.err.splitlines() if line.startswith("error:")]
        assert result.code != 0 and len(errors) == 1 and message in errors[0], result.err
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".stage2")]
    same = run_cli("train", stage1, "--out", stage1, "--data", str(root / "target.txt"), *RUN)
    assert same.code != 0 and "must be a new directory" in same.err
    forced = run_cli("train", stage1, "--force", "--data", str(root / "target.txt"), *RUN)
    assert forced.code != 0 and "goes with --out" in forced.err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = run_cli("train", stage1, "--out", str(taken), "--data", str(root / "target.txt"), *RUN)
    assert result.code != 0 and "--force" in result.err and (taken / "keep.txt").exists()
    result = run_cli("train", stage1, "--out", str(taken), "--force", "--data", str(root / "target.txt"), *RUN)
    assert result.code == 0, result.err
    assert not (taken / "keep.txt").exists() and (taken / STATE).exists()
