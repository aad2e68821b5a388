"""GLM fine-tuned on generation (Du et al. 2022 §2.3): `lmkit finetune --task text-to-text` writes each target as a
[gMASK] span after its input (objective glm-text-to-text), the loss on the target alone (checked against full
forward passes written out by hand); the fine-tuned model learns a deterministic mapping (reversal), and
`lmkit generate`, `eval --task` and `predict` answer alike, from the model directory and, torch blocked, from
its export."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import NO_TORCH, run_cli  # noqa: E402

from lmkit.plugins.glm.config import GLMConfig, TextToTextOptions  # noqa: E402
from lmkit.plugins.glm.model import GLMDecoder  # noqa: E402
from lmkit.plugins.glm.text_to_text import GLMTextToText, collate_pairs, fit_pair, pair_inputs  # noqa: E402

IDS = {"[gMASK]": 102, "[S]": 103, "[E]": 104}


def test_a_pair_is_one_gmask_span_after_its_source():
    ids, positions, labels = pair_inputs([10, 11, 12], [20, 21], IDS)
    assert ids.tolist() == [10, 11, 12, 102, 103, 20, 21]
    assert positions[0].tolist() == [0, 1, 2, 3, 3, 3, 3]  # the span sits at its [gMASK]
    assert positions[1].tolist() == [0, 0, 0, 0, 1, 2, 3]  # Part A 0, the span 1, 2, ...
    assert labels.tolist() == [-100, -100, -100, -100, 20, 21, 104]  # [S] predicts y1; yn predicts [E]


def test_long_pairs_are_cut_keeping_half_for_the_target():
    assert fit_pair([1] * 3, [2] * 3, 8) == ([1] * 3, [2] * 3, False)  # 3 + 2 + 3 = 8: fits
    assert fit_pair([1] * 10, [2] * 2, 8) == ([1] * 4, [2] * 2, True)  # a short target is kept whole
    assert fit_pair([1] * 10, [2] * 10, 8) == ([1] * 3, [2] * 3, True)  # half of 6 each
    assert fit_pair([1] * 2, [2] * 10, 8) == ([1] * 2, [2] * 4, True)  # a short source is kept whole


def test_the_loss_is_the_targets_cross_entropy_alone():
    torch.manual_seed(0)
    decoder = GLMDecoder(GLMConfig(vocab_size=128, max_positions=32, d_model=32, n_layers=2, n_heads=4, dropout=0.0))
    objective = GLMTextToText(TextToTextOptions())
    pairs = [([10, 11, 12, 13], [20, 21]), ([30], [40, 41, 42, 43])]  # padded to one width in the batch
    batch = {k: torch.from_numpy(v) for k, v in collate_pairs([pair_inputs(s, t, IDS) for s, t in pairs], 0).items()}
    model = type("Model", (), {"decoder": decoder})()
    loss = objective(model, batch)
    # By hand: each pair alone, one full forward pass with its positions written out, log p of y1..yn and [E]
    # at the positions from [S] on; nothing of the source is predicted.
    terms = []
    for source, target in pairs:
        a = len(source) + 1
        ids = source + [102, 103] + target
        pos1 = list(range(a)) + [a - 1] * (len(target) + 1)
        pos2 = [0] * a + list(range(1, len(target) + 2))
        logits = decoder(torch.tensor([ids]), position_ids=torch.tensor([[pos1, pos2]]))[0].log_softmax(-1)
        terms += [-logits[a + k, token].item() for k, token in enumerate(target + [104])]
    assert len(terms) == 2 + 1 + 4 + 1
    assert loss.item() == pytest.approx(float(np.mean(terms)), abs=1e-5)
    loss.backward()  # and the gradient reaches what reads the source (Part A is bidirectional)
    assert decoder.word_embeddings.weight.grad[[10, 11, 12, 13, 30]].abs().sum(1).min() > 0


# -- from the command line -----------------------------------------------------------------------


WORDS = "red green blue cat dog sun moon tree".split()


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A composed (untrained) glm-tiny fine-tuned to reverse three words, 80 steps, its dev set scored at 40 and 80:
    the second evaluation's must be the weights' of then (the output layer's packed copy once stayed the first's)."""
    root = tmp_path_factory.mktemp("glm-t2t")
    rng = np.random.default_rng(0)

    def rows(n):
        out = []
        for _ in range(n):
            x = list(rng.choice(WORDS, size=3))
            out.append({"input": " ".join(x), "target": " ".join(x[::-1])})
        return out

    train, dev = root / "train.jsonl", root / "dev.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows(256)))
    dev_rows = rows(32)
    dev.write_text("".join(json.dumps(r) + "\n" for r in dev_rows))
    (root / "docs.txt").write_text("".join(" ".join(rng.choice(WORDS, size=8)) + " .\n" for _ in range(100)))
    tok, glm, out = str(root / "tok"), str(root / "glm"), str(root / "gen")
    for args in (("tokenizer", "train", "--kind", "wordpiece", "--vocab-size", 60, root / "docs.txt", "--out", tok),
                 ("compose", "glm-tiny", "--set", f"tokenizer={tok}", "--out", glm)):
        result = run_cli(*args)
        assert result.code == 0, result.err
    result = run_cli("finetune", glm, "--task", "text-to-text", "--train", train, "--dev", dev, "--out", out,
                     "--steps", 80, "--eval-every", 40, "--batch-size", 16, "--lr", "2e-3", "--json")
    assert result.code == 0, result.err
    return {"root": root, "glm": glm, "out": out, "record": json.loads(result.out), "train": str(train),
            "dev": str(dev), "dev_rows": dev_rows}


def test_fine_tuning_learns_to_reverse(tuned):
    record = tuned["record"]
    print(f"\nglm-tiny text to text (reversal), 80 steps: dev exact match {record['exact_match']:.4f}, f1 "
          f"{record['f1']:.4f}; baseline exact match {record['baseline']['exact_match']:.4f}")
    assert record["exact_match"] >= 0.9 > record["baseline"]["exact_match"] + 0.5, record
    spec = json.load(open(os.path.join(tuned["out"], "best", "config.json")))["spec"]
    assert [o["type"] for o in spec["objectives"]] == ["glm-text-to-text"] and spec["decoder"]["type"] == "glm"
    # no GPT markers: the vocabulary is the pretrained model's
    pretrained = json.load(open(os.path.join(tuned["glm"], "config.json")))["spec"]
    assert spec["decoder"]["vocab_size"] == pretrained["decoder"]["vocab_size"]


def test_generate_eval_and_predict_agree(tuned):
    best, rows = os.path.join(tuned["out"], "best"), tuned["dev_rows"][:6]
    generated = json.loads(run_cli("generate", best, *(x for r in rows for x in ("--prompt", r["input"])),
                                   "--json").out)
    answers = [g["spans"][0]["text"].strip() for g in generated]
    assert [g["text"] for g in generated] == [f"{r['input']} {a}" for r, a in zip(rows, answers)]  # the source, filled
    explicit = json.loads(run_cli("generate", best, "--prompt", rows[0]["input"] + " [gMASK]", "--json").out)
    assert explicit[0]["tokens"] == generated[0]["tokens"]  # the [gMASK] it appends is the one written out
    predicted = run_cli("predict", best, "--data", tuned["dev"])
    assert predicted.code == 0, predicted.err
    lines = [json.loads(line) for line in predicted.out.splitlines()]
    assert [line["text"] for line in lines[:6]] == answers and len(lines) == 32
    evaluated = json.loads(run_cli("eval", best, "--task", tuned["dev"], "--json").out)
    assert evaluated["exact_match"] == pytest.approx(tuned["record"]["exact_match"])
    assert f"exact_match {evaluated['exact_match']:.4f}" in predicted.err


def test_the_export_writes_the_same_answers_without_torch(tuned):
    best, exported = os.path.join(tuned["out"], "best"), str(tuned["root"] / "exp")
    result = run_cli("export", best, "--out", exported)
    assert result.code == 0, result.err
    expected = run_cli("predict", best, "--data", tuned["dev"]).out
    done = subprocess.run([sys.executable, "-c", NO_TORCH + "from lmkit.cli import main\nmain()\n", "predict",
                           exported, "--data", tuned["dev"]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected
    prompt = tuned["dev_rows"][0]["input"]
    assert run_cli("generate", exported, "--prompt", prompt).out == run_cli("generate", best, "--prompt", prompt).out


def test_a_decoder_without_a_text_to_text_objective_is_refused(tuned, tmp_path):
    gpt, out = str(tmp_path / "gpt"), str(tmp_path / "out")
    assert run_cli("compose", "gpt2-tiny", "--set", f"tokenizer={tuned['glm']}", "--out", gpt).code == 0
    result = run_cli("finetune", gpt, "--task", "text-to-text", "--train", tuned["train"], "--out", out, "--steps", 1)
    assert result.code != 0 and "has no text-to-text objective" in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err and not os.path.exists(out)


def test_a_pretrained_glm_still_needs_a_blank(tuned):
    result = run_cli("generate", tuned["glm"], "--prompt", "red cat sun")
    assert result.code != 0 and "has no blank to fill" in result.err
    trained = run_cli("train", os.path.join(tuned["out"], "best"), "--data", tuned["dev"], "--steps", 1,
                      "--batch-size", 4, "--seq-len", 16)
    assert trained.code != 0 and "lmkit finetune --task text-to-text" in trained.err, trained.err
