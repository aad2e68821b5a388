"""What training would refuse, `lmkit compose` refuses first, in one line and writing nothing: each objective's
check_composition (lmkit.contract.Objective). And `lmkit finetune` refuses a run of no steps."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

TEXT = "\n".join(" ".join(["alpha", "beta", "gamma", "delta", "eps"][(i + j) % 5] for j in range(7))
                 for i in range(30)) + "\n"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("compose-refusals")
    (root / "text.txt").write_text(TEXT)
    made = {}
    for name, kind, extra in (
            ("wordpiece", "wordpiece", []),  # [CLS], [SEP], ...: no end-of-text token
            ("bpe", "bpe", ["--set", 'special_tokens=["<unk>","<pad>","</s>"]']),  # no sentinels
            ("unigram", "unigram", ["--set", "sentinels=8", "--set", 'special_tokens=["<pad>","</s>","<unk>"]'])):
        out = root / name
        result = run_cli("tokenizer", "train", "--kind", kind, "--vocab-size", 60, *extra, str(root / "text.txt"),
                         "--out", str(out))
        assert result.code == 0, result.err
        made[name] = str(out)
    made["root"] = root
    return made


def refused(tmp_path, *arguments) -> str:
    out = tmp_path / "model"
    result = run_cli("compose", *arguments, "--out", str(out))
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert result.code != 0 and len(errors) == 1, result.err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]
    return errors[0]


@pytest.mark.parametrize("preset", ["gpt2-tiny", "awd-lstm-tiny", "elmo-tiny"])
def test_a_language_model_on_a_tokenizer_without_end_of_text_is_refused(tokenizers, tmp_path, preset):
    error = refused(tmp_path, preset, "--set", f"tokenizer={tokenizers['wordpiece']}")
    assert "end-of-text token" in error and "wordpiece tokenizer has none" in error
    ok = run_cli("compose", preset, "--set", f"tokenizer={tokenizers['bpe']}", "--out", str(tmp_path / "ok"))
    assert ok.code == 0, ok.err


@pytest.mark.parametrize("preset", ["bert-tiny", "albert-tiny", "roberta-tiny"])
def test_masked_lm_on_a_tokenizer_without_its_special_tokens_is_refused(tokenizers, tmp_path, preset):
    """A trial's unigram tokenizer without [CLS] [SEP] [MASK] was composed into an ALBERT and refused only by train,
    which advised a wordpiece tokenizer (albert.md says unigram): now compose refuses it, naming the tokens and the
    command for a tokenizer of the same kind."""
    error = refused(tmp_path, preset, "--set", f"tokenizer={tokenizers['unigram']}")
    assert "masked-lm needs a tokenizer with cls, sep, mask and pad" in error and "unigram tokenizer has no" in error
    assert "lmkit tokenizer train --kind unigram --set 'special_tokens=" in error
    ok = run_cli("compose", preset, "--set", f"tokenizer={tokenizers['wordpiece']}", "--out", str(tmp_path / "ok"))
    assert ok.code == 0, ok.err


def test_span_corruption_on_a_tokenizer_without_sentinels_is_refused(tokenizers, tmp_path):
    error = refused(tmp_path, "t5-tiny", "--set", f"tokenizer={tokenizers['bpe']}",
                    "--set", "objectives.0.type=span-corruption")
    assert error.startswith("error: objectives.span-corruption:") and "<extra_id_0>" in error
    ok = run_cli("compose", "t5-tiny", "--set", f"tokenizer={tokenizers['unigram']}", "--set",
                 "objectives.0.type=span-corruption", "--out", str(tmp_path / "ok"))
    assert ok.code == 0, ok.err


def test_a_sampled_softmax_of_the_whole_vocabulary_is_refused(tokenizers, tmp_path):
    error = refused(tmp_path, "elmo-tiny", "--set", f"tokenizer={tokenizers['bpe']}",
                    "--set", "objectives.0.sampled_softmax=1000")
    assert error.startswith("error: objectives.bilm: sampled_softmax=1000") and "give fewer than" in error
    # without a tokenizer, against the vocabulary the encoder is given
    error = refused(tmp_path, "elmo-tiny", "--no-tokenizer", "--set", "objectives.0.sampled_softmax=512")
    assert "vocabulary of 512 words" in error
    ok = run_cli("compose", "elmo-tiny", "--set", f"tokenizer={tokenizers['bpe']}", "--set",
                 "objectives.0.sampled_softmax=8", "--out", str(tmp_path / "ok"))
    assert ok.code == 0, ok.err


def test_finetune_refuses_a_run_of_no_steps(tokenizers, tmp_path):
    from lmkit.errors import LmkitError
    from lmkit.tasks.finetune import TaskOptions, finetune

    lm = str(tmp_path / "lm")
    assert run_cli("compose", "awd-lstm-tiny", "--set", f"tokenizer={tokenizers['bpe']}", "--out", lm).code == 0
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"text": line, "label": line.split()[0]}) + "\n"
                            for line in TEXT.splitlines()[:8]))
    for flags, message in ((("--epochs", 0), "--epochs"), (("--epochs", -1), "--epochs"), (("--steps", 0), "--steps")):
        result = run_cli("finetune", lm, "--task", "classification", "--train", str(task), "--out",
                         str(tmp_path / "clf"), *flags)
        assert result.code != 0 and message in result.err and not (tmp_path / "clf").exists(), result.err
    for kwargs in ({"epochs": 0}, {"steps": 0}):
        with pytest.raises(LmkitError, match="must be positive"):
            finetune(lm, str(tmp_path / "clf"), str(task), None, TaskOptions(), **kwargs)
    assert not (tmp_path / "clf").exists()
