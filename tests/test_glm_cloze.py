"""GLM's NLU fine-tuning as cloze (Du et al. 2022 §2.3): a pattern with one [MASK], each label scored by its
verbalizer word in the blank (`lmkit finetune --pattern --verbalizer`), predicted and evaluated like any
classifier; its scores checked against full forward passes written out by hand, its bad inputs refused in
one line with nothing written."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.errors import LmkitError  # noqa: E402
from lmkit.plugins.glm.cloze import ClozeInputs, ClozeOptions, GLMClozeRecipe, cloze_positions  # noqa: E402
from lmkit.plugins.glm.config import GLMConfig  # noqa: E402
from lmkit.plugins.glm.model import GLMDecoder  # noqa: E402
from lmkit.tasks.cloze import parse_verbalizer, pattern_fields  # noqa: E402

M, S = 100, 103  # [MASK] and [S] of the hand-made rows below

PATTERN = "{text} is it good ? [MASK]"
VERBALIZER = "0=no,1=yes"


def tiny(seed: int = 0) -> GLMDecoder:
    torch.manual_seed(seed)
    return GLMDecoder(GLMConfig(vocab_size=128, max_positions=32, d_model=32, n_layers=2, n_heads=4,
                                dropout=0.0)).eval()


def recipe(word_ids, multi_token=None) -> GLMClozeRecipe:
    return GLMClozeRecipe(ClozeOptions(words=tuple(f"w{i}" for i in range(len(word_ids))), word_ids=word_ids,
                                       multi_token=multi_token, mask_id=M, start_id=S))


def batch_of(rows: list[list[int]]) -> dict:
    """Right-padded cloze inputs (B, 1, T), each row Part A then [S]."""
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), 1, width, dtype=torch.long)
    mask = torch.zeros(len(rows), 1, width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, 0, :len(row)], mask[i, 0, :len(row)] = torch.tensor(row), True
    return {"input_ids": ids, "attention_mask": mask, "extract_index": torch.tensor([[len(r) - 1] for r in rows])}


def by_hand(decoder, part_a: list[int], word: list[int]) -> list[float]:
    """log p of each token of `word` written into the blank of `part_a`, one full forward pass, positions by hand."""
    blank = part_a.index(M)
    ids = part_a + [S] + word[:-1]
    pos1 = list(range(len(part_a))) + [blank] * len(word)
    pos2 = [0] * len(part_a) + list(range(1, len(word) + 1))
    logits = decoder(torch.tensor([ids]), position_ids=torch.tensor([[pos1, pos2]]))[0].float()
    return [logits[len(part_a) + k].log_softmax(-1)[token].item() for k, token in enumerate(word)]


ROWS = [[10, 11, 12, M], [20, M, 21, 22, 23, 24, 25]]  # two Part As of other lengths, the blank in other places


def compose_glm_tiny(root) -> dict:
    """A wordpiece tokenizer trained on root/docs.txt and a glm-tiny composed with it; the task's files
    (root/train.jsonl, root/dev.jsonl) by name."""
    tok, glm = str(root / "tok"), str(root / "glm")
    for args in (("tokenizer", "train", "--kind", "wordpiece", "--vocab-size", 120, root / "docs.txt", "--out", tok),
                 ("compose", "glm-tiny", "--set", f"tokenizer={tok}", "--out", glm)):
        result = run_cli(*args)
        assert result.code == 0, result.err
    return {"root": root, "glm": glm, "train": str(root / "train.jsonl"), "dev": str(root / "dev.jsonl")}


def test_positions_of_a_cloze_row():
    ids = torch.tensor([[10, 11, M, 13, S, 40, 41, 0]])
    positions = cloze_positions(ids, M, torch.tensor([4]))
    assert positions[0, 0].tolist()[:7] == [0, 1, 2, 3, 2, 2, 2]  # the span sits at its [MASK]
    assert positions[0, 1].tolist()[:7] == [0, 0, 0, 0, 1, 2, 3]  # Part A 0, the span 1, 2, ...


def test_one_token_words_score_their_log_probability_at_s():
    decoder = tiny()
    words = ((30,), (31,), (32,))
    scores = recipe(words).label_scores(SimpleNamespace(decoder=decoder), batch_of([r + [S] for r in ROWS]))
    assert scores.shape == (2, 3)
    for row, part_a in enumerate(ROWS):
        expected = [by_hand(decoder, part_a, list(word))[0] for word in words]
        np.testing.assert_allclose(scores[row].detach().numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("how", ["sum", "mean"])
def test_words_of_several_tokens_are_written_into_the_blank(how):
    decoder = tiny(1)
    words = ((30, 31, 32), (33,), (34, 35))
    scores = recipe(words, how).label_scores(SimpleNamespace(decoder=decoder), batch_of([r + [S] for r in ROWS]))
    for row, part_a in enumerate(ROWS):
        tokens = [by_hand(decoder, part_a, list(word)) for word in words]
        expected = [sum(t) if how == "sum" else sum(t) / len(t) for t in tokens]
        np.testing.assert_allclose(scores[row].detach().numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("how", ["sum", "mean"])
def test_the_gradient_is_that_of_the_scores_written_by_hand(how):
    """--multi-token mean once failed to learn in a 30-step trial; its gradient is the one of the definition: the
    loss of label scores computed one label at a time by full forward passes (positions by hand) backpropagates
    to the same weight gradients as the batched rows."""
    words, gold = ((30, 31, 32), (33,), (34, 35)), torch.tensor([0, 2])
    grads = []
    for batched in (True, False):
        decoder = tiny(2).train()
        if batched:
            scores = recipe(words, how).label_scores(SimpleNamespace(decoder=decoder), batch_of([r + [S] for r in ROWS]))
        else:
            rows = []
            for part_a in ROWS:
                row = []
                for word in words:
                    blank, ids = part_a.index(M), part_a + [S] + list(word[:-1])
                    pos1 = list(range(len(part_a))) + [blank] * len(word)
                    pos2 = [0] * len(part_a) + list(range(1, len(word) + 1))
                    log_p = decoder(torch.tensor([ids]), position_ids=torch.tensor([[pos1, pos2]]))[0].log_softmax(-1)
                    terms = torch.stack([log_p[len(part_a) + k, t] for k, t in enumerate(word)])
                    row.append(terms.sum() if how == "sum" else terms.mean())
                rows.append(torch.stack(row))
            scores = torch.stack(rows)
        torch.nn.functional.cross_entropy(scores, gold).backward()
        grads.append({name: p.grad.clone() for name, p in decoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4, msg=name)


def test_scores_train_the_whole_model():
    decoder = tiny()
    decoder.train()
    scores = recipe(((30, 31), (33,)), "sum").label_scores(SimpleNamespace(decoder=decoder),
                                                          batch_of([r + [S] for r in ROWS]))
    torch.nn.functional.cross_entropy(scores, torch.tensor([0, 1])).backward()
    assert decoder.word_embeddings.weight.grad[[30, 31, 33]].abs().sum() > 0
    assert decoder.position_embeddings.weight.grad.abs().sum() > 0


def test_pattern_and_verbalizer_are_read():
    assert pattern_fields("{hypothesis}? [MASK], {premise}") == ("hypothesis", "premise")
    assert parse_verbalizer(" 0 = no , 1=yes") == {"0": "no", "1": "yes"}
    for pattern in ("{text} is it good ?", "{text} [MASK] and [MASK]", "[MASK] alone", "{0} [MASK]", "{text [MASK]"):
        with pytest.raises(LmkitError):
            pattern_fields(pattern)
    for verbalizer in ("0=no,1", "0=no,0=yes", "0=no,1=no", "=no,1=yes"):
        with pytest.raises(LmkitError):
            parse_verbalizer(verbalizer)


# -- from the command line -----------------------------------------------------------------------


WORDS = "the cat dog sat on a mat near door old red small big ran saw house tree river".split()


def sentence(rng, label: int) -> str:
    words = list(rng.choice(WORDS, size=6))
    words.insert(int(rng.integers(0, 7)), "good" if label else "bad")
    return " ".join(words)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A composed glm-tiny and a task: label 1 when the sentence holds "good", 0 when it holds "bad"."""
    root = tmp_path_factory.mktemp("glm-cloze")
    rng = np.random.default_rng(0)
    (root / "docs.txt").write_text("\n".join(sentence(rng, int(rng.integers(0, 2))) + " . is it good ? "
                                             + str(rng.choice(["yes", "no"])) for _ in range(200)) + "\n")
    for name, n in (("train", 96), ("dev", 48)):
        labels = rng.permutation([0, 1] * (n // 2))
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": sentence(rng, int(y)), "label": str(y)}) + "\n"
                                                    for y in labels))
    return compose_glm_tiny(root)


@pytest.fixture(scope="module")
def tuned(made):
    out = str(made["root"] / "tuned")
    result = run_cli("finetune", made["glm"], "--task", "classification", "--train", made["train"], "--dev",
                     made["dev"], "--pattern", PATTERN, "--verbalizer", VERBALIZER, "--out", out, "--steps", 30,
                     "--eval-every", 15, "--batch-size", 16, "--lr", "1e-3", "--json")
    assert result.code == 0, result.err
    return out, json.loads(result.out)


def test_cloze_fine_tuning_learns_the_task(tuned):
    out, record = tuned
    print(f"\ncloze fine-tuning, 30 steps: dev accuracy {record['accuracy']:.4f} (step {record['step']}), baseline "
          f"{record['baseline']['accuracy']:.4f}")
    # A composed (untrained) glm-tiny learns it in 30 steps through the blank: the label's word is the answer.
    assert record["accuracy"] >= 0.9 > record["baseline"]["accuracy"] + 0.3, record
    spec = json.loads(open(os.path.join(out, "best", "config.json")).read())["spec"]
    head = next(o for o in spec["objectives"] if o["type"] == "sequence-head")
    assert head["recipe"] == "glm-cloze" and head["labels"] == ["0", "1"]
    assert head["recipe_options"]["pattern"] == PATTERN and head["recipe_options"]["words"] == ["no", "yes"]


def test_predict_reads_the_pattern_and_scores_as_training_did(made, tuned):
    out, record = tuned
    result = run_cli("predict", os.path.join(out, "best"), "--data", made["dev"])
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in result.out.splitlines()]
    gold = [json.loads(line)["label"] for line in open(made["dev"])]
    assert len(rows) == 48 and set(rows[0]["probabilities"]) == {"0", "1"}
    accuracy = np.mean([row["label"] == label for row, label in zip(rows, gold)])
    assert accuracy == pytest.approx(record["accuracy"])
    assert f"accuracy {record['accuracy']:.4f}" in result.err


def test_an_exported_cloze_model_predicts_the_same_without_torch(made, tuned, tmp_path):
    """The export holds no layer of its own: the recipe scores each label's word over the generating graph
    (backend_label_scores), prefill of Part A and [S], as on the model directory."""
    import subprocess
    import sys

    from conftest import NO_TORCH

    best, out = os.path.join(tuned[0], "best"), str(tmp_path / "exported")
    result = run_cli("export", best, "--out", out)
    assert result.code == 0, result.err
    manifest = json.load(open(os.path.join(out, "lmkit-onnx.json")))
    assert manifest["task_head"]["recipe"] == "glm-cloze" and "file" not in manifest["task_head"]
    expected = [json.loads(line) for line in run_cli("predict", best, "--data", made["dev"]).out.splitlines()]
    done = subprocess.run([sys.executable, "-c", NO_TORCH + "from lmkit.cli import main\nmain()\n", "predict", out,
                           "--data", made["dev"]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["label"] for row in got] == [row["label"] for row in expected]
    assert max(abs(row["probabilities"][k] - other["probabilities"][k]) for row, other in zip(got, expected)
               for k in row["probabilities"]) < 1e-4


BAD = [
    (["--pattern", "{text} is it good ?", "--verbalizer", VERBALIZER], "has no [MASK]"),
    (["--pattern", "{text} [MASK] or [MASK]", "--verbalizer", VERBALIZER], "has 2 [MASK]"),
    (["--pattern", "is it good ? [MASK]", "--verbalizer", VERBALIZER], "reads no text"),
    (["--pattern", "{sentence} [MASK]", "--verbalizer", VERBALIZER], 'no text in "sentence"'),
    (["--pattern", PATTERN], "--verbalizer is missing"),
    (["--verbalizer", VERBALIZER], "--pattern is missing"),
    (["--pattern", PATTERN, "--verbalizer", "0=no,1"], "is not label=word"),
    (["--pattern", PATTERN, "--verbalizer", "0=no,2=yes"], 'label "1" is not one of the declared labels (0, 2)'),
    (["--pattern", PATTERN, "--verbalizer", VERBALIZER, "--labels", "0,1,2"], "no word for label '2'"),
    (["--pattern", PATTERN, "--verbalizer", "0=no,1=yes,2=maybe", "--labels", "0,1"], "names label '2'"),
    (["--pattern", PATTERN, "--verbalizer", "0=no,1=no"], "to several labels"),
    (["--pattern", PATTERN, "--verbalizer", "0=no,1=zzqx"], "'zzqx' (label 1) is [UNK]"),
    (["--pattern", PATTERN, "--verbalizer", "0=no,1=yesno"], "'yesno' is 3 tokens (yes ##n ##o)"),
    (["--pattern", PATTERN, "--verbalizer", VERBALIZER, "--task", "regression"], "--task regression is not one"),
    (["--pattern", PATTERN, "--verbalizer", VERBALIZER, "--recipe", "decoder"], "the decoder recipe is not one"),
    (["--pattern", PATTERN, "--verbalizer", VERBALIZER, "--aux-lm-weight", "0.5"], "leave it out"),
]


@pytest.mark.parametrize("flags, message", BAD, ids=[m for _, m in BAD])
def test_bad_cloze_input_is_one_line_and_writes_nothing(made, tmp_path, flags, message):
    out = str(tmp_path / "out")
    result = run_cli("finetune", made["glm"], "--task", "classification", "--train", made["train"], "--out", out,
                     "--steps", 1, *flags)
    assert result.code != 0 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert not os.path.exists(out) and not [p for p in os.listdir(tmp_path) if p != "out"]


def test_a_model_without_a_cloze_recipe_refuses_the_pattern(made, tmp_path):
    gpt, out = str(tmp_path / "gpt"), str(tmp_path / "out")
    assert run_cli("compose", "gpt2-tiny", "--set", f"tokenizer={made['glm']}", "--out", gpt).code == 0
    result = run_cli("finetune", gpt, "--task", "classification", "--train", made["train"], "--out", out,
                     "--pattern", PATTERN, "--verbalizer", VERBALIZER)
    assert result.code != 0 and "has no cloze recipe" in result.err and not os.path.exists(out)


def test_inputs_cut_the_text_and_keep_the_pattern(made):
    from lmkit.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(made["glm"])
    r = GLMClozeRecipe(ClozeOptions(pattern=PATTERN, words=("no", "yes")))
    r.prepare(tokenizer)
    pattern_tail = tokenizer.encode(" is it good ? [MASK]")
    text = "the cat sat on the mat near the old red door"
    ids, _, start, cut = ClozeInputs(r.options, tokenizer, 64).encode((text,))
    assert ids == tokenizer.encode(text) + pattern_tail + [r.options.start_id] and start == len(ids) - 1 and cut == 0
    short, _, start, cut = ClozeInputs(r.options, tokenizer, len(pattern_tail) + 4).encode((text,))
    assert short == tokenizer.encode(text)[:3] + pattern_tail + [r.options.start_id] and cut > 0
