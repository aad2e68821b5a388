"""GLM's multiple choice as cloze (Du et al. 2022 §2.3, the SuperGLUE recipe of COPA-like tasks): each choice written
into the pattern's blank after [S] and scored by its tokens' log-probabilities (summed, or averaged with
--multi-token mean), the best one wins; choices of different token lengths each score their own tokens (checked
against full forward passes written out by hand), and a composed glm-tiny learns a synthetic task from JSONL
records of a question, its choices and the right one's index."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import NO_TORCH, run_cli  # noqa: E402
from test_glm_cloze import M, S, by_hand, compose_glm_tiny, tiny  # noqa: E402

from lmkit.plugins.glm.cloze import ClozeInputs, ClozeOptions, GLMClozeRecipe  # noqa: E402

PARTS = [[10, 11, 12, M], [20, M, 21, 22, 23, 24, 25]]  # two Part As, the blank in other places
CHOICES = [[[30, 31, 32], [33]], [[34], [35, 36]]]  # of 3 and 1 tokens, then 1 and 2


def choice_batch() -> dict:
    """(B, S, T) rows of Part A, [S] and the whole choice, right-padded; extract_index the place of [S]."""
    rows = [[part + [S] + choice for choice in choices] for part, choices in zip(PARTS, CHOICES)]
    width = max(len(row) for example in rows for row in example)
    ids = torch.zeros(2, 2, width, dtype=torch.long)
    mask = torch.zeros(2, 2, width, dtype=torch.bool)
    for b, example in enumerate(rows):
        for s, row in enumerate(example):
            ids[b, s, :len(row)], mask[b, s, :len(row)] = torch.tensor(row), True
    return {"input_ids": ids, "attention_mask": mask, "extract_index": torch.tensor([[len(p)] * 2 for p in PARTS])}


@pytest.mark.parametrize("how", ["sum", "mean"])
def test_each_choice_scores_its_own_tokens_in_the_blank(how):
    decoder = tiny(1)
    recipe = GLMClozeRecipe(ClozeOptions(choices=True, multi_token=how, mask_id=M, start_id=S))
    scores = recipe.label_scores(SimpleNamespace(decoder=decoder), choice_batch())
    assert scores.shape == (2, 2)
    for row, (part, choices) in enumerate(zip(PARTS, CHOICES)):
        tokens = [by_hand(decoder, part, choice) for choice in choices]
        expected = [sum(t) if how == "sum" else sum(t) / len(t) for t in tokens]
        np.testing.assert_allclose(scores[row].detach().numpy(), expected, atol=1e-5)


def test_choices_are_written_after_s_and_the_text_is_cut_first(made):
    from lmkit.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(made["glm"])
    recipe = GLMClozeRecipe(ClozeOptions(pattern=PATTERN, choices=True, multi_token="sum"))
    recipe.prepare(tokenizer)
    tail, answer = tokenizer.encode(" so it was [MASK]"), tokenizer.encode("very nice indeed")
    text = "the cat sat on the mat near the old red door"
    ids, _, start, cut = ClozeInputs(recipe.options, tokenizer, 64).encode((text, "very nice indeed"))
    assert ids == tokenizer.encode(text) + tail + [recipe.options.start_id] + answer and cut == 0
    assert ids[start] == recipe.options.start_id
    short, _, start, cut = ClozeInputs(recipe.options, tokenizer, len(tail) + len(answer) + 4).encode(
        (text, "very nice indeed"))
    assert short == tokenizer.encode(text)[:3] + tail + [recipe.options.start_id] + answer and cut > 0


# -- from the command line -----------------------------------------------------------------------


WORDS = "the cat dog sat on a mat near door old red small big ran saw house tree river".split()
ANSWERS = {"good": "very nice indeed", "bad": "awful"}  # choices of different token lengths
PATTERN = "{question} so it was [MASK]"


def item(rng, key: str) -> dict:
    words = list(rng.choice(WORDS, size=6))
    words.insert(int(rng.integers(0, 7)), key)
    choices = [list(ANSWERS.values())[j] for j in rng.permutation(2)]
    return {"question": " ".join(words), "choices": choices, "label": choices.index(ANSWERS[key])}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A composed glm-tiny and a task: the right choice is "very nice indeed" when the question holds "good",
    "awful" when it holds "bad", the choices in random order."""
    root = tmp_path_factory.mktemp("glm-choice")
    rng = np.random.default_rng(1)
    (root / "docs.txt").write_text("\n".join(" ".join(rng.choice(WORDS, size=7)) + " . very nice indeed awful good bad"
                                             for _ in range(200)) + "\n")
    for name, n in (("train", 96), ("dev", 48)):
        keys = rng.permutation(["good", "bad"] * (n // 2))
        (root / f"{name}.jsonl").write_text("".join(json.dumps(item(rng, key)) + "\n" for key in keys))
    return compose_glm_tiny(root)


def test_multiple_choice_as_cloze_learns_and_predicts(made):
    out = str(made["root"] / "tuned")
    result = run_cli("finetune", made["glm"], "--task", "multiple-choice", "--pattern", PATTERN, "--multi-token",
                     "mean", "--train", made["train"], "--dev", made["dev"], "--out", out, "--steps", 40,
                     "--eval-every", 20, "--batch-size", 16, "--lr", "3e-3", "--json")
    assert result.code == 0, result.err
    record = json.loads(result.out)
    print(f"\nmultiple choice as cloze (mean), 40 steps: dev accuracy {record['accuracy']:.4f} (step "
          f"{record['step']}), baseline {record['baseline']['accuracy']:.4f}")
    assert record["accuracy"] >= 0.9 > record["baseline"]["accuracy"] + 0.3, record
    head = json.load(open(os.path.join(out, "best", "config.json")))["spec"]["objectives"][0]
    assert head["task"] == "multiple-choice" and head["recipe"] == "glm-cloze"
    assert head["recipe_options"]["choices"] is True and head["recipe_options"]["multi_token"] == "mean"
    predicted = run_cli("predict", os.path.join(out, "best"), "--data", made["dev"])
    assert predicted.code == 0, predicted.err
    rows = [json.loads(line) for line in predicted.out.splitlines()]
    gold = [json.loads(line)["label"] for line in open(made["dev"])]
    assert len(rows) == 48 and len(rows[0]["probabilities"]) == 2
    assert np.mean([row["choice"] == label for row, label in zip(rows, gold)]) == pytest.approx(record["accuracy"])
    # The export scores each choice over its generating graph (prefill of Part A and [S], then one step per token
    # of the choice) and picks the same, torch blocked.
    exported = str(made["root"] / "exported")
    assert run_cli("export", os.path.join(out, "best"), "--out", exported).code == 0
    done = subprocess.run([sys.executable, "-c", NO_TORCH + "from lmkit.cli import main\nmain()\n", "predict",
                           exported, "--data", made["dev"]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["choice"] for row in got] == [row["choice"] for row in rows]
    np.testing.assert_allclose([row["probabilities"] for row in got], [row["probabilities"] for row in rows],
                               atol=1e-4)


BAD = [
    (["--verbalizer", "0=no,1=yes"], "leave --verbalizer out"),
    (["--labels", "0,1"], "leave --labels out"),
    (["--pattern", "{sentence} [MASK]"], 'no text in "sentence"'),
    (["--pattern", "{question} so it was"], "has no [MASK]"),
]


@pytest.mark.parametrize("flags, message", BAD, ids=[m for _, m in BAD])
def test_bad_multiple_choice_input_is_one_line_and_writes_nothing(made, tmp_path, flags, message):
    out = str(tmp_path / "out")
    pattern = [] if "--pattern" in flags else ["--pattern", PATTERN]
    result = run_cli("finetune", made["glm"], "--task", "multiple-choice", "--train", made["train"], "--out", out,
                     "--steps", 1, *pattern, *flags)
    assert result.code != 0 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err and not os.path.exists(out)
