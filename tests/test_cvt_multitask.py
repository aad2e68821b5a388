"""Multi-task CVT (Clark et al. 2018 §3.3): tasks drawn in proportion to sqrt(size), one primary and one set of
auxiliary modules per task on a shared encoder, one unlabelled loss over all tasks, a single-task model per task."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.model import build_model  # noqa: E402
from lmkit.plugins.cvt.multitask import NAME, MultitaskBatches, TaskDraws, single_task_model  # noqa: E402
from lmkit.plugins.cvt.synthetic import write_task  # noqa: E402
from lmkit.registry import PluginHost  # noqa: E402
from lmkit.spec import resolve  # noqa: E402

LABELS = {"ner": ["B-PER", "I-PER", "O"], "pos": ["D", "N", "P", "V"]}


def tiny_model(dropout: float = 0.3):
    spec = {"encoder": {"type": "cvt-tagger", "vocab_size": 40, "d_word": 8, "max_characters_per_token": 8,
                        "d_char": 4, "filters": [[2, 4], [3, 4]], "d_first": 6, "d_second": 5, "d_projection": 7,
                        "dropout": dropout},
            "objectives": [{"type": NAME, "tasks": list(LABELS), "labels": list(LABELS.values()),
                            "tag_schemes": ["iob2", "none"]}]}
    model = build_model(resolve(spec, PluginHost()), seed=0)
    with torch.no_grad():
        model.encoder.char_table.copy_(torch.randint(1, 262, model.encoder.char_table.shape))
    return model


def test_tasks_are_drawn_in_proportion_to_the_square_root_of_their_size():
    sizes = [100, 400, 1600]  # sqrt: 10, 20, 40
    draws = TaskDraws(sizes, seed=3)
    n = 7000
    tasks = np.array([draws(j)[0] for j in range(n)])
    expected = np.array([1, 2, 4]) / 7
    frequencies = np.bincount(tasks, minlength=3) / n
    assert np.all(np.abs(frequencies - expected) < 4 * np.sqrt(expected * (1 - expected) / n)), frequencies
    # not proportional to size (1/21, 4/21, 16/21), which the check above would tell apart
    assert abs(frequencies[2] - 16 / 21) > 0.1
    # each draw knows how many batches its task had before it: it reads on from there in the task's order
    for j in (0, 1, 57, 4095, 4096, 6999):
        k, before = draws(j)
        assert before == int(np.sum(tasks[:j] == k))
    # seeded: the same stream from a fresh start, asked out of order (a resumed run); another seed differs
    again = TaskDraws(sizes, seed=3)
    assert again(6999) == draws(6999) and [again(j)[0] for j in range(200)] == list(tasks[:200])
    assert [TaskDraws(sizes, seed=4)(j)[0] for j in range(200)] != list(tasks[:200])


def test_labelled_batches_carry_their_drawn_task_and_unlabelled_ones_follow_each():
    from types import SimpleNamespace

    from lmkit.tasks.tokens import EncodedSentence

    def sentences(count, tag):
        return [EncodedSentence([1, 2, 3], [0, 0, 0], [tag] * 3, 3) for _ in range(count)]

    tokenizer = SimpleNamespace(pad_id=0)
    args = SimpleNamespace(batch_size=4, seed=0)
    batches = MultitaskBatches({"ner": sentences(9, 0), "pos": sentences(36, 1)}, {}, None, tokenizer, args)
    draws = TaskDraws([9, 36], seed=0)
    for j in range(30):
        batch = batches.train(4 * j, 4)
        k = draws(j)[0]
        assert set(batch["task"]) == {k} and set(batch["labels"].ravel()) == {k}  # rows of the drawn task
    # with unlabelled text: steps alternate, and the labelled steps draw the same tasks in the same order
    mixed = MultitaskBatches({"ner": sentences(9, 0), "pos": sentences(36, 1)}, {}, None, tokenizer, args)
    mixed.unlabeled = _Unlabelled(mixed)
    for step in range(20):
        batch = mixed.train(4 * step, 4)
        if step % 2:
            assert "unlabeled" in batch
        else:
            assert set(batch["task"]) == {draws(step // 2)[0]}


class _Unlabelled:
    """AlternatingBatches' stepping over made-up unlabelled rows (encoding real text needs a tokenizer)."""

    def __init__(self, batches):
        from lmkit.plugins.cvt.multitask import _Labelled
        from lmkit.plugins.cvt.recipe import AlternatingBatches

        alternating = AlternatingBatches.__new__(AlternatingBatches)
        alternating.labelled, alternating.batch_size, alternating.pad_id = _Labelled(batches), 4, 0
        alternating.unlabeled = [[5, 6, 7]] * 10
        from lmkit.data import SeededOrder

        alternating.order = SeededOrder(10, 1)
        self.train = alternating.train


def test_each_task_trains_its_own_primary_and_unlabelled_batches_every_tasks_views():
    model = tiny_model(dropout=0.3).train()
    objective = model.objectives[NAME]
    ids, mask = torch.randint(1, 40, (2, 6)), torch.ones(2, 6, dtype=torch.bool)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (2, 6)),
             "task": torch.zeros(2, dtype=torch.long)}
    model.loss(batch)[0].backward()
    assert objective.primaries["ner"].score.weight.grad.abs().sum() > 0
    assert objective.primaries["pos"].score.weight.grad is None  # the other task's primary: untouched
    assert all(p.grad is None for p in objective.auxiliaries.parameters())
    model.zero_grad(set_to_none=True)
    model.loss({"input_ids": ids, "attention_mask": mask, "unlabeled": torch.ones(2, dtype=torch.bool)})[0].backward()
    assert all(p.grad is None for p in objective.primaries.parameters())  # the teachers are constants
    for task in LABELS:
        for module in objective.auxiliaries[task].values():
            assert module.score.weight.grad.abs().sum() > 0
    assert model.encoder.forward_lstm.lstm.weight_ih_l0.grad.abs().sum() > 0


def test_both_tasks_learn_on_one_encoder():
    torch.manual_seed(0)
    model = tiny_model(dropout=0.0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    ids, mask = torch.randint(1, 40, (4, 6)), torch.ones(4, 6, dtype=torch.bool)
    labels = {"ner": ids % 3, "pos": (ids // 3) % 4}  # tags that the words decide
    batches = [{"input_ids": ids, "attention_mask": mask, "labels": labels[task],
                "task": torch.full((4,), k, dtype=torch.long)} for k, task in enumerate(LABELS)]
    unlabelled = {"input_ids": torch.randint(1, 40, (4, 6)), "attention_mask": mask,
                  "unlabeled": torch.ones(4, dtype=torch.bool)}

    def losses():
        with torch.no_grad():
            return [model.loss(batch)[0].item() for batch in batches]

    before = losses()
    for step in range(30):
        batch = batches[step % 2] if step % 3 else unlabelled
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = losses()
    assert all(a < 0.75 * b for a, b in zip(after, before)), (before, after)


def test_a_tasks_own_model_tags_as_the_multitask_model_does():
    model = tiny_model(dropout=0.3).eval()
    objective = model.objectives[NAME]
    ids, mask = torch.randint(1, 40, (2, 7)), torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    for task in LABELS:
        single = single_task_model(model, task, head_dropout=0.1).eval()
        with torch.no_grad():
            expected = objective.task_logits(model, task, ids, mask)
            got = single.objectives["token-head"].scores(single, {"input_ids": ids, "attention_mask": mask})
        torch.testing.assert_close(got[mask], expected[mask], rtol=1e-5, atol=1e-6)
        assert single.objectives["token-head"].options.labels == tuple(LABELS[task])
        aux = single.objectives["cvt"].modules_by_view["future_module"].score.weight
        torch.testing.assert_close(aux, objective.auxiliaries[task]["future_module"].score.weight)


# -- the CLI ---------------------------------------------------------------------------------------


def cli(*args):
    result = run_cli(*args)
    assert result.code == 0, result.err
    return result


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvt-multitask")
    os.makedirs(root / "ner")
    os.makedirs(root / "pos")
    ner = write_task(str(root / "ner"), labelled=40, unlabeled=120, dev=20, n_names=200)
    pos = write_task(str(root / "pos"), labelled=80, unlabeled=1, dev=20, n_names=200, seed=1, task="pos")
    cli("tokenizer", "train", "--kind", "word", "--vocab-size", 300, "--set",
        'special_tokens=["<pad>","<unk>","<s>","</s>"]', ner["unlabeled"], "--out", root / "tok")
    cli("compose", "cvt-tiny", "--set", f"tokenizer={root / 'tok'}", "--out", root / "model")
    return {"ner": ner, "pos": pos, "model": str(root / "model")}


def test_multitask_from_the_command_line_then_predict_each_task(tasks, tmp_path):
    out = tmp_path / "mt"
    ner, pos = tasks["ner"], tasks["pos"]
    done = cli("finetune", tasks["model"], "--recipe", "cvt", "--multitask",
               f"ner={ner['train']},pos={pos['train']}", "--dev", f"ner={ner['dev']},pos={pos['dev']}",
               "--unlabeled", ner["unlabeled"], "--out", out, "--steps", 8, "--batch-size", 8, "--eval-every", 4,
               "--json")
    record = json.loads(done.out)
    assert set(record["tasks"]) == {"ner", "pos"} and "entity_f1" in record["tasks"]["ner"]
    spec = json.loads((out / "config.json").read_text())["spec"]
    assert spec["objectives"][0]["type"] == NAME and spec["objectives"][0]["tasks"] == ["ner", "pos"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("pos/accuracy" in m for m in metrics)
    for task, files in (("ner", ner), ("pos", pos)):
        best = out / "best" / task
        head = json.loads((best / "config.json").read_text())["spec"]["objectives"][0]
        assert head["type"] == "token-head" and head["label_smoothing"] == 0.1
        predicted = run_cli("predict", best, "--data", files["dev"])
        assert predicted.code == 0, predicted.err
        assert len(predicted.out.splitlines()) == 20
        # its own model scores its dev set as the multi-task run's evaluation did (the averaged weights)
        first = "entity_f1" if task == "ner" else "accuracy"
        assert f"{first} {record['tasks'][task][first]:.4f}" in predicted.err
        # the run folder itself, with the task named, is that task's best model
        from_run = run_cli("predict", out, "--task", task, "--data", files["dev"])
        assert from_run.code == 0, from_run.err
        assert from_run.out == predicted.out and from_run.err == predicted.err
    # a task's model exports as any CVT tagger (the primary module alone), and its export tags the same
    cli("export", out / "best" / "pos", "--out", tmp_path / "exported")
    served = cli("predict", tmp_path / "exported", "--data", pos["dev"]).out
    assert [json.loads(line)["tags"] for line in served.splitlines()] == [
        json.loads(line)["tags"] for line in predicted.out.splitlines()]


def one_line_error(result, *fragments):
    assert result.code != 0
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err, result.err
    for fragment in fragments:
        assert fragment in result.err, result.err


def test_bad_multitask_specs_are_one_line_errors(tasks, tmp_path):
    ner, pos = tasks["ner"], tasks["pos"]

    def run(name, *args):
        return run_cli("finetune", tasks["model"], "--recipe", "cvt", "--out", tmp_path / name, "--steps", 1, *args)

    one_line_error(run("a", "--multitask", f"ner={ner['train']},pos={ner['train']}"), "named twice")
    one_line_error(run("b", "--multitask", f"ner={ner['train']},ner={pos['train']}"), "task 'ner' is named twice")
    one_line_error(run("c", "--multitask", f"ner={ner['train']},pos={pos['train']}", "--dev", f"chunk={pos['dev']}"),
                   "chunk", "known tasks: ner, pos")
    one_line_error(run("d", "--multitask", f"ner={ner['train']}"), "at least two")
    one_line_error(run("e", "--multitask", f"ner={ner['train']},pos={pos['train']}", "--task", "classification"),
                   "token-classification")
    one_line_error(run("f", "--multitask", f"ner={ner['train']},pos"), "NAME=FILE")
    one_line_error(run_cli("finetune", tasks["model"], "--recipe", "encoder", "--multitask",
                           f"ner={ner['train']},pos={pos['train']}", "--out", tmp_path / "g"), "one task at a time")
    one_line_error(run("h", "--multitask", f"ner={ner['train']},pos={tmp_path / 'none.conll'}"), "does not exist")
    for name in "abcdefgh":
        assert not os.path.exists(tmp_path / name)


def test_resumed_multitask_run_ends_where_the_whole_one_does(tasks, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from lmkit.training import trainer

    ner, pos = tasks["ner"], tasks["pos"]
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    common = ("--recipe", "cvt", "--multitask", f"ner={ner['train']},pos={pos['train']}", "--dev",
              f"ner={ner['dev']}", "--unlabeled", ner["unlabeled"], "--batch-size", 4, "--eval-every", 2,
              "--steps", 4)
    cli("finetune", tasks["model"], *common, "--out", whole)
    save = trainer.save_checkpoint

    def save_then_stop(directory, model, optimizer, names, state):
        save(directory, model, optimizer, names, state)
        if state["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_stop)
    assert run_cli("finetune", tasks["model"], *common, "--out", halves).code == 130
    monkeypatch.undo()
    cli("finetune", "--resume", "--out", halves)
    a, b = load_file(f"{whole}/model.safetensors"), load_file(f"{halves}/model.safetensors")
    assert a.keys() == b.keys() and any(".ema_" in name for name in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert os.path.isdir(halves / "best" / "ner") and os.path.isdir(halves / "best" / "pos")


def test_predict_on_a_multitask_run_names_its_tasks_when_the_task_is_missing_or_unknown(tasks, tmp_path):
    run = tmp_path / "mt"
    os.makedirs(run / "best" / "ner")
    (run / "task.json").write_text(json.dumps({"kind": "token-classification", "multitask": "ner=a.conll,pos=b.conll"}))
    (run / "best" / "ner" / "config.json").write_text("{}")
    data = tasks["ner"]["dev"]
    one_line_error(run_cli("predict", run, "--data", data), "is a multi-task run of ner, pos: choose one with --task")
    one_line_error(run_cli("predict", run, "--task", "chunk", "--data", data),
                   "--task chunk:", "trained no such task; its tasks: ner, pos")
    one_line_error(run_cli("predict", run, "--task", "pos", "--data", data), "has no model of task pos yet")
    one_line_error(run_cli("predict", tasks["model"], "--task", "ner", "--data", data),
                   "is not a multi-task run (lmkit finetune --multitask); leave --task out")
