"""CVT (Clark et al. 2018): no runnable reference exists (cvt_text is TF1), so the mechanics are checked directly.

View isolation, the teacher (no gradient, no dropout), the unlabelled loss against a hand-computed
soft cross-entropy sum, the alternation of batches, the paper's schedule, the CLI from compose to
a torch-free prediction of the exported tagger, and the bad inputs of `--unlabeled` and CoNLL files.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import NO_TORCH, run_cli  # noqa: E402

from lmkit.model import build_model  # noqa: E402
from lmkit.plugins.cvt.config import cvt_rate  # noqa: E402
from lmkit.plugins.cvt.synthetic import write_task  # noqa: E402
from lmkit.registry import PluginHost  # noqa: E402
from lmkit.spec import resolve  # noqa: E402

LABELS = 5


def tiny_model(dropout: float = 0.3, views=("forward", "backward", "future", "past", "full"), label_smoothing=0.0,
               unlabeled_dropout=0.2):
    spec = {"encoder": {"type": "cvt-tagger", "vocab_size": 40, "d_word": 8, "max_characters_per_token": 8,
                        "d_char": 4, "filters": [[2, 4], [3, 4]], "d_first": 6, "d_second": 5, "d_projection": 7,
                        "dropout": dropout},
            "objectives": [{"type": "token-head", "num_labels": LABELS, "recipe": "cvt", "dropout": dropout,
                            "label_smoothing": label_smoothing},
                           {"type": "cvt", "num_labels": LABELS, "views": list(views),
                            "unlabeled_dropout": unlabeled_dropout}]}
    model = build_model(resolve(spec, PluginHost()), seed=0)
    with torch.no_grad():  # a char table as bind_tokenizer would make it: every id spelled differently
        model.encoder.char_table.copy_(torch.randint(1, 262, model.encoder.char_table.shape))
    return model


def test_forward_view_ignores_later_tokens_and_backward_view_earlier_ones():
    model = tiny_model(dropout=0.0).eval()
    ids = torch.randint(1, 40, (2, 9))
    t = 4
    later, earlier = ids.clone(), ids.clone()
    later[:, t + 1:] = torch.randint(1, 40, (2, 9 - t - 1))
    earlier[:, :t] = torch.randint(1, 40, (2, t))
    with torch.no_grad():
        base, after, before = (model.encoder.views(x) for x in (ids, later, earlier))
    torch.testing.assert_close(after["forward"][:, :t + 1], base["forward"][:, :t + 1], rtol=0, atol=0)
    torch.testing.assert_close(before["backward"][:, t:], base["backward"][:, t:], rtol=0, atol=0)
    # the other direction and the full view do read them: the check above can fail
    assert not torch.allclose(after["backward"][:, :t + 1], base["backward"][:, :t + 1])
    assert not torch.allclose(before["forward"][:, t:], base["forward"][:, t:])
    assert not torch.allclose(after["full"][:, t], base["full"][:, t])


def test_views_of_a_padded_row_equal_the_row_alone():
    model = tiny_model(dropout=0.0).eval()
    ids = torch.randint(1, 40, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[True] * 6 + [False] * 3])
    with torch.no_grad():
        alone, with_padding = model.encoder.views(ids), model.encoder.views(padded, mask)
    for name in ("forward", "backward", "full"):
        torch.testing.assert_close(with_padding[name][:, :6], alone[name], rtol=1e-5, atol=1e-6)


def test_teacher_has_no_dropout_and_no_gradient():
    model = tiny_model(dropout=0.5).train()
    objective = model.objectives["cvt"]
    ids, mask = torch.randint(1, 40, (3, 7)), torch.ones(3, 7, dtype=torch.bool)
    first, second = objective.teacher(model, ids, mask), objective.teacher(model, ids, mask)
    assert not first.requires_grad
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # no dropout: the same every call
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model.objectives["token-head"].score(model.encoder(ids, mask).last_hidden_state), -1)
    torch.testing.assert_close(first, expected)
    model.train()
    assert model.training  # the teacher puts the model back in training mode
    # dropout is on for the students: two student passes differ
    a = objective.student_logits(model, ids, mask)["forward"][0]
    b = objective.student_logits(model, ids, mask)["forward"][0]
    assert not torch.allclose(a, b)
    loss, _ = model.loss({"input_ids": ids, "attention_mask": mask, "unlabeled": torch.ones(3, dtype=torch.bool)})
    loss.backward()
    # the primary module (the encoder's hidden layer and the head) gets no gradient; the shared LSTMs and the
    # auxiliary modules do
    assert model.encoder.primary.weight.grad is None
    assert model.objectives["token-head"].score.weight.grad is None
    assert model.encoder.forward_lstm.lstm.weight_ih_l0.grad.abs().sum() > 0
    for module in objective.modules_by_view.values():
        assert module.score.weight.grad.abs().sum() > 0


def test_unlabeled_loss_is_the_hand_computed_soft_cross_entropy_sum():
    model = tiny_model(dropout=0.0).eval()
    objective = model.objectives["cvt"]
    ids = torch.randint(1, 40, (2, 6))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    with torch.no_grad():
        loss = objective.unlabeled_loss(model, ids, mask).item()
        teacher = objective.teacher(model, ids, mask)
        views = model.encoder.views(ids, mask)
        modules = objective.modules_by_view
        expected = 0.0
        for view, states, shift in (("forward", "forward", 0), ("backward", "backward", 0), ("future", "forward", 1),
                                    ("past", "backward", -1), ("full", "full", 0)):
            terms = []
            for b in range(2):
                n = int(mask[b].sum())
                for t in range(n):
                    target = t + shift
                    if not 0 <= target < n:
                        continue
                    q = torch.softmax(modules[f"{view}_module"](views[states][b, t]), -1)
                    p = teacher[b, target]
                    terms.append(-sum(p[y].item() * math.log(q[y].item()) for y in range(LABELS)))
            expected += sum(terms) / len(terms)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_labelled_batches_train_the_head_and_unlabelled_ones_the_views():
    model = tiny_model(dropout=0.0)
    ids, mask = torch.randint(1, 40, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
    labels = torch.randint(0, LABELS, (2, 5))
    _, parts = model.loss({"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert parts["cvt"].item() == 0 and parts["token-head"].item() > 0
    _, parts = model.loss({"input_ids": ids, "attention_mask": mask, "unlabeled": torch.ones(2, dtype=torch.bool)})
    assert parts["token-head"].item() == 0 and parts["cvt"].item() > 0


def test_labelled_loss_with_label_smoothing_is_the_hand_computed_value():
    model = tiny_model(dropout=0.0, label_smoothing=0.1).eval()
    head = model.objectives["token-head"]
    ids, mask = torch.randint(1, 40, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
    labels = torch.randint(0, LABELS, (2, 5))
    labels[0, 1] = labels[1, 4] = -100  # not scored (a word's later pieces)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        loss = head(model, batch).item()
        log_p = torch.log_softmax(head.scores(model, batch).double(), -1)
    terms = [0.9 * -log_p[b, t, labels[b, t]].item() + 0.1 * -log_p[b, t].mean().item()
             for b in range(2) for t in range(5) if labels[b, t] >= 0]
    assert loss == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    plain = sum(-log_p[b, t, labels[b, t]].item() for b in range(2) for t in range(5) if labels[b, t] >= 0) / len(terms)
    assert abs(loss - plain) > 1e-4  # the smoothing did change the loss


def dropout_rates_seen(model, batch) -> dict[str, set]:
    """{dropout module name: the rates it ran at while training} over one model.loss(batch)."""
    seen, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            handles.append(module.register_forward_pre_hook(
                lambda m, _, name=name: seen.setdefault(name, set()).add(m.p) if m.training else None))
    try:
        model.loss(batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_labelled_batches_run_at_the_encoders_dropout_and_unlabelled_ones_at_unlabeled_dropout():
    model = tiny_model(dropout=0.5, unlabeled_dropout=0.2).train()
    ids, mask = torch.randint(1, 40, (2, 6)), torch.ones(2, 6, dtype=torch.bool)
    labelled = {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, LABELS, (2, 6))}
    unlabelled = {"input_ids": ids, "attention_mask": mask, "unlabeled": torch.ones(2, dtype=torch.bool)}
    seen = dropout_rates_seen(model, labelled)
    assert seen["encoder.drop"] == {0.5} and seen["objectives.token-head.dropout"] == {0.5}
    seen = dropout_rates_seen(model, unlabelled)
    assert seen["encoder.drop"] == {0.2}
    assert {name for name in seen if "modules_by_view" in name} == {
        f"objectives.cvt.modules_by_view.{v}_module.drop" for v in ("forward", "backward", "future", "past", "full")}
    assert all(rates == {0.2} for rates in seen.values())  # the teacher ran in eval mode: no rate recorded
    assert model.encoder.drop.p == 0.5  # put back for the next labelled batch
    # what the rates do: without unlabelled dropout two unlabelled passes agree exactly, labelled ones do not
    model = tiny_model(dropout=0.5, unlabeled_dropout=0.0).train()
    first, second = (model.loss(unlabelled)[0].item() for _ in range(2))
    assert first == second
    first, second = (model.loss(labelled)[0].item() for _ in range(2))
    assert first != second


def test_schedule_is_the_papers():
    assert cvt_rate(0, 0.5) == pytest.approx(0.5 * (1 / 5000) / (1 + 0.005))
    assert cvt_rate(9999, 0.5) == pytest.approx(0.5 / (1 + 0.005 * 100))
    assert cvt_rate(4999, 0.5) == pytest.approx(0.5 / (1 + 0.005 * math.sqrt(5000)))


# -- the CLI ---------------------------------------------------------------------------------------


def cli(*args):
    result = run_cli(*args)
    assert result.code == 0, result.err
    return result


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvt")
    files = write_task(str(root), labelled=40, unlabeled=120, dev=20, n_names=200, scheme="BIOES")
    cli("tokenizer", "train", "--kind", "word", "--vocab-size", 300, "--set",
        'special_tokens=["<pad>","<unk>","<s>","</s>"]', files["unlabeled"], "--out", root / "tok")
    cli("compose", "cvt-tiny", "--set", f"tokenizer={root / 'tok'}", "--out", root / "model")
    return {**files, "root": root, "model": str(root / "model")}


def test_finetune_with_unlabeled_text_then_predict_and_export(task, tmp_path):
    out = tmp_path / "ner"
    tuned = cli("finetune", task["model"], "--task", "token-classification", "--recipe", "cvt", "--train",
                task["train"], "--unlabeled", task["unlabeled"], "--dev", task["dev"], "--out", out, "--steps", 6,
                "--batch-size", 8)
    assert "lr 0.001: the cvt recipe's 0.001 (--lr to choose)" in tuned.err  # no "at width 1" (a trial's)
    config = json.loads((out / "best" / "config.json").read_text())
    assert [o["type"] for o in config["spec"]["objectives"]] == ["token-head", "cvt"]
    head, cvt = config["spec"]["objectives"]
    assert head["label_smoothing"] == 0.1 and cvt["unlabeled_dropout"] == 0.2  # the paper's, unless told
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("loss_cvt", 0) > 0 for m in metrics)  # unlabelled batches did train the views
    predicted = cli("predict", out / "best", "--data", task["dev"])
    rows = [json.loads(line) for line in predicted.out.splitlines()]
    assert len(rows) == 20 and all(set(r["tags"]) <= {"O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "E-LOC",
                                                       "S-LOC", "B-ORG", "E-ORG", "S-ORG", "I-LOC", "I-ORG"}
                                   for r in rows)
    cli("export", out / "best", "--out", tmp_path / "exported")
    child = NO_TORCH + "from lmkit.cli import main\nmain()\n"
    done = subprocess.run([sys.executable, "-c", child, "predict", str(tmp_path / "exported"), "--data", task["dev"]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    served = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["tags"] for r in served] == [r["tags"] for r in rows]
    np.testing.assert_allclose([p for r in served for p in r["probabilities"]],
                               [p for r in rows for p in r["probabilities"]], atol=1e-4)


def one_line_error(result, *fragments):
    assert result.code != 0
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err, result.err
    for fragment in fragments:
        assert fragment in result.err, result.err


def finetune_args(task, out, *extra):
    return ("finetune", task["model"], "--task", "token-classification", "--train", task["train"], "--dev",
            task["dev"], "--out", out, "--steps", 1, *extra)


def test_label_smoothing_and_dropout_rates_from_the_command_line(task, tmp_path):
    out = tmp_path / "ner"
    cli("finetune", task["model"], "--task", "token-classification", "--recipe", "cvt", "--train", task["train"],
        "--unlabeled", task["unlabeled"], "--out", out, "--steps", 2, "--batch-size", 4, "--label-smoothing", 0,
        "--set", "encoder.dropout=0.5", "--set", "objectives.cvt.unlabeled_dropout=0.3")
    spec = json.loads((out / "config.json").read_text())["spec"]
    head, cvt = spec["objectives"]
    assert head["label_smoothing"] == 0.0 and cvt["unlabeled_dropout"] == 0.3 and spec["encoder"]["dropout"] == 0.5
    # the encoder recipe smooths nothing unless told
    cli("finetune", task["model"], "--task", "token-classification", "--recipe", "encoder", "--train", task["train"],
        "--out", tmp_path / "plain", "--steps", 1, "--batch-size", 4)
    head = json.loads((tmp_path / "plain" / "config.json").read_text())["spec"]["objectives"][0]
    assert head.get("label_smoothing", 0.0) == 0.0
    one_line_error(run_cli(*finetune_args(task, tmp_path / "a", "--set", "encoder.dropout=1.5")), "dropout")
    one_line_error(run_cli(*finetune_args(task, tmp_path / "b", "--set", "tokenizer=x")), "--set tokenizer")
    one_line_error(run_cli("finetune", "--resume", "--out", out, "--set", "encoder.dropout=0.1"), "--resume")
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_bad_unlabeled_text_is_a_one_line_error(task, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    one_line_error(run_cli(*finetune_args(task, tmp_path / "a", "--unlabeled", empty)), "holds no text")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"good words\nmore words\ncaf\xe9 au lait\n")
    one_line_error(run_cli(*finetune_args(task, tmp_path / "b", "--unlabeled", latin)), "not UTF-8", "line 3",
                   "byte offset 25 (0xe9)")
    one_line_error(run_cli(*finetune_args(task, tmp_path / "c", "--unlabeled", task["unlabeled"], "--recipe",
                                          "encoder")), "--unlabeled", "encoder recipe")
    sentences = tmp_path / "sentences.jsonl"
    sentences.write_text("".join(json.dumps({"text": "mr bobe said", "label": label}) + "\n" for label in "abab"))
    one_line_error(run_cli("finetune", task["model"], "--task", "classification", "--train", sentences,
                           "--unlabeled", task["unlabeled"], "--out", tmp_path / "d"), "token classification only")
    records = tmp_path / "records.jsonl"  # a trial's --unlabeled dev.jsonl was read as text, braces and all
    records.write_text(json.dumps({"input": "mr bobe said", "target": "x"}) + "\n")
    one_line_error(run_cli(*finetune_args(task, tmp_path / "e", "--unlabeled", records)), "records.jsonl:1",
                   'no \'text\' field', 'records with a "text" string')
    for name in ("a", "b", "c", "d", "e"):
        assert not os.path.exists(tmp_path / name)


def test_unlabeled_jsonl_gives_the_lines_of_its_texts(tmp_path):
    from lmkit.tasks.unlabeled import read_unlabeled

    records = tmp_path / "raw.jsonl"
    records.write_text(json.dumps({"text": "mr bobe said"}) + "\n\n" + json.dumps({"text": "so  it\nwent on"}) + "\n")
    assert read_unlabeled(str(records)) == [("mr", "bobe", "said"), ("so", "it"), ("went", "on")]


def test_bad_conll_files_are_one_line_errors(task, tmp_path):
    missing = tmp_path / "missing.conll"
    missing.write_text("mr O\nbobe B-PER\nsaid\n\n")
    one_line_error(run_cli("finetune", task["model"], "--task", "token-classification", "--train", missing,
                           "--out", tmp_path / "a"), "line 3")
    other = tmp_path / "other.conll"
    other.write_text("mr O\nbobe B-MISC\nsaid O\n\n")
    one_line_error(run_cli("finetune", task["model"], "--task", "token-classification", "--train", task["train"],
                           "--dev", other, "--out", tmp_path / "b"), "B-MISC", "line 2")


def test_moving_average_follows_the_weights_and_is_swapped_in_for_evaluation():
    model = tiny_model(dropout=0.0).train()
    objective = model.objectives["cvt"]
    head = model.objectives["token-head"].score
    batch = {"input_ids": torch.randint(1, 40, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.bool),
             "labels": torch.randint(0, LABELS, (2, 5))}
    model.loss(batch)  # the first update copies the weights
    first = head.weight.detach().clone()
    with torch.no_grad():
        head.weight.add_(1.0)
    model.loss(batch)  # update 1: decay min(0.998, 2 / 11)
    decay = 2 / 11
    with objective.averaged_weights(model):
        torch.testing.assert_close(head.weight, decay * first + (1 - decay) * (first + 1.0))
    torch.testing.assert_close(head.weight, first + 1.0)  # put back
    assert int(objective.ema_updates) == 2


def test_resumed_cvt_run_ends_where_the_whole_one_does(task, tmp_path, monkeypatch):
    """A run stopped after its step-2 checkpoint, then resumed, ends bit for bit where the whole run does:
    labelled and unlabelled batches, and the moving average, pick up where the checkpoint left them."""
    from safetensors.torch import load_file

    from lmkit.training import trainer

    whole, halves = tmp_path / "whole", tmp_path / "halves"
    common = ("--task", "token-classification", "--recipe", "cvt", "--train", task["train"], "--unlabeled",
              task["unlabeled"], "--dev", task["dev"], "--batch-size", 8, "--eval-every", 2, "--steps", 4,
              # the paper's optimisation: SGD with momentum 0.9 at 0.5 on the cvt schedule
              "--optimizer", "sgd", "--optimizer-set", "momentum=0.9", "--schedule", "cvt", "--lr", 0.5)
    cli("finetune", task["model"], *common, "--out", whole)
    save = trainer.save_checkpoint

    def save_then_stop(directory, model, optimizer, names, state):
        save(directory, model, optimizer, names, state)
        if state["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_stop)
    assert run_cli("finetune", task["model"], *common, "--out", halves).code == 130
    monkeypatch.undo()
    cli("finetune", "--resume", "--out", halves)
    lrs = [json.loads(line)["lr"] for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] == pytest.approx(cvt_rate(3, 0.5))
    a, b = load_file(f"{whole}/model.safetensors"), load_file(f"{halves}/model.safetensors")
    assert a.keys() == b.keys() and any(name.startswith("objectives.cvt.ema_") for name in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_bio_and_bioes_tags_of_the_same_sentences_give_the_same_entities(tmp_path):
    from lmkit.tasks import chunks
    from lmkit.tasks.tokens import read_conll

    entities = {}
    for scheme in ("BIO", "BIOES"):
        (tmp_path / scheme).mkdir()
        files = write_task(str(tmp_path / scheme), labelled=30, unlabeled=1, dev=1, scheme=scheme, seed=3)
        data = read_conll(files["train"])
        resolved = chunks.resolve_scheme("auto", data.labels)
        strict = {"BIO": "iob2", "BIOES": "iobes"}[scheme]
        assert resolved in ({"conlleval", "iob2"} if scheme == "BIO" else {"iobes"})
        tags = [[data.labels[t] for t in sentence.tags] for sentence in data.examples]
        assert chunks.entity_f1(tags, tags, resolved)["entity_f1"] == 1.0
        entities[scheme] = [chunks.strict_entities(row, strict) for row in tags]
    assert entities["BIO"] == entities["BIOES"] and sum(map(len, entities["BIO"])) > 30


def test_the_harder_synthetic_task_holds_out_names_and_types_bare_mentions(tmp_path):
    from lmkit.plugins.cvt.synthetic import TRIGGERS, name_type, names
    from lmkit.tasks.tokens import read_conll

    files = write_task(str(tmp_path), labelled=50, unlabeled=400, dev=200, n_names=300, seen_names=20, held_out=100,
                       distractors=0.3)
    pool = names(300)
    raw = {word for line in open(files["unlabeled"], encoding="utf-8") for word in line.split()}
    assert raw.isdisjoint(pool[200:]) and len(raw & set(pool[:200])) > 100  # the last 100 appear in no raw text
    dev = read_conll(files["dev"])
    dev_names = {w for s in dev.examples for w, t in zip(s.words, s.tags) if dev.labels[t] != "O"}
    assert dev_names & set(pool[200:])  # but in dev sentences
    train = read_conll(files["train"])
    outside = [w for s in train.examples for w, t in zip(s.words, s.tags) if train.labels[t] == "O" and w in pool]
    assert outside  # distractors: names tagged O
    (tmp_path / "bare").mkdir()
    files = write_task(str(tmp_path / "bare"), labelled=200, unlabeled=1, dev=1, n_names=300, bare=0.5)
    data = read_conll(files["train"])
    bare = 0
    for s in data.examples:
        for i, (word, tag) in enumerate(zip(s.words, s.tags)):
            if data.labels[tag].startswith("B-"):
                assert data.labels[tag][2:] == name_type(word)  # a name keeps its type
                bare += s.words[i - 1] not in TRIGGERS
    assert bare > 50


def test_lmkit_train_on_a_model_without_objectives_says_to_fine_tune(task):
    # A trial's `lmkit train` of cvt-tiny was told to add an objective "that says what data it trains on".
    result = run_cli("train", task["model"], "--data", task["unlabeled"], "--steps", 1, "--batch-size", 2,
                     "--seq-len", 8)
    assert result.code == 1 and result.err.strip().splitlines() == [
        "error: this model has no training objective (its spec lists none): train it on a task with lmkit "
        "finetune, or compose it with an objective to pre-train with lmkit train"], result.err
