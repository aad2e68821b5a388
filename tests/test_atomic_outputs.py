"""Every command that writes a directory writes it whole or not at all.

A failure at any point (bad arguments, an error or Ctrl-C while writing) leaves no --out behind, or
leaves the one --force was to replace byte for byte as it was; the retry then works. `lmkit train`
trains in place: a run that fails before its first checkpoint leaves the model directory as it was.
Fine-tuning is written under a temporary name until its first checkpoint, then becomes --out.
"""
import json
import os
import shutil

import pytest

pytest.importorskip("torch")

import lmkit.model as model_module  # noqa: E402
import lmkit.training.trainer as trainer_module  # noqa: E402


def snapshot(directory) -> dict:
    """Every file under `directory`, by relative path, with its bytes."""
    found = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, directory)] = handle.read()
    return found


def assert_clean(parent, expected: set[str]) -> None:
    """`parent` holds exactly `expected`: no --out, no staging or retired directory left behind."""
    assert set(os.listdir(parent)) == expected, sorted(os.listdir(parent))


def interrupt_after(monkeypatch, module, name):
    """Make module.name do its work and then raise KeyboardInterrupt: a Ctrl-C in the middle of writing."""
    original = getattr(module, name)

    def interrupted(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, name, interrupted)


def old_output(tmp_path, name="out"):
    """A previous --out, for --force to replace: its files must come through a failure unchanged."""
    out = tmp_path / name
    (out / "sub").mkdir(parents=True)
    (out / "config.json").write_text('{"old": true}\n')
    (out / "sub" / "weights.bin").write_bytes(os.urandom(64))
    return out, snapshot(out)


# -- lmkit compose ---------------------------------------------------------------------------------


def test_compose_writes_its_directory_whole_or_not_at_all(run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    bad = run("compose", "gpt2-tiny", "--set", "decoder.n_layer=-1", "--out", out)
    assert bad.code == 1 and len(bad.err.strip().splitlines()) == 1
    assert_clean(tmp_path, set())

    interrupt_after(monkeypatch, model_module, "save_weights")  # the weights written, then Ctrl-C
    assert run("compose", "gpt2-tiny", "--out", out).code == 130
    assert_clean(tmp_path, set())
    _, before = old_output(tmp_path)
    assert run("compose", "gpt2-tiny", "--out", out, "--force").code == 130
    assert snapshot(out) == before
    assert_clean(tmp_path, {"out"})

    monkeypatch.undo()
    retry = run("compose", "gpt2-tiny", "--out", out, "--force")
    assert retry.code == 0, retry.err
    assert {"config.json", "model.safetensors"} <= set(os.listdir(out))
    assert_clean(tmp_path, {"out"})


# -- lmkit tokenizer train -------------------------------------------------------------------------


def test_tokenizer_train_writes_its_directory_whole_or_not_at_all(run, tmp_path, monkeypatch):
    from lmkit.registry import get_host, reset_host

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\n" * 50)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "tok"
    bad = run("tokenizer", "train", corpus, "--kind", "char", "--set", "no_such_option=1", "--out", out)
    assert bad.code == 1 and len(bad.err.strip().splitlines()) == 1
    assert_clean(work, set())

    from lmkit.options import build_options

    reset_host()
    component = get_host().component("tokenizer", "char")
    trained = component.load().train([str(corpus)], build_options(component.options_class(), {}, "char"))
    reset_host()
    tokenizer_class = type(trained)
    original = tokenizer_class.save

    def save_then_fail(self, directory):
        original(self, directory)
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer_class, "save", save_then_fail)
    failed = run("tokenizer", "train", corpus, "--kind", "char", "--out", out)
    assert failed.code == 1 and "disk full" in failed.err
    assert_clean(work, set())

    monkeypatch.undo()
    retry = run("tokenizer", "train", corpus, "--kind", "char", "--out", out)
    assert retry.code == 0, retry.err
    assert "tokenizer.json" in os.listdir(out)
    assert_clean(work, {"tok"})


# -- lmkit export ----------------------------------------------------------------------------------


def test_export_writes_its_directory_whole_or_not_at_all(run, tiny_gpt2, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import lmkit.exports.export as export_module

    out = tmp_path / "out"
    bad = run("export", tiny_gpt2, "--out", out, "--dtype", "fp16", "--atol", "0.1")
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1
    assert_clean(tmp_path, set())

    def graphs_written_then_interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "validate", graphs_written_then_interrupted)
    assert run("export", tiny_gpt2, "--out", out).code == 130
    assert_clean(tmp_path, set())
    _, before = old_output(tmp_path)
    assert run("export", tiny_gpt2, "--out", out, "--force").code == 130
    assert snapshot(out) == before
    assert_clean(tmp_path, {"out"})

    monkeypatch.undo()
    retry = run("export", tiny_gpt2, "--out", out, "--force")
    assert retry.code == 0, retry.err
    assert "lmkit-onnx.json" in os.listdir(out)
    assert_clean(tmp_path, {"out"})


# -- lmkit finetune --------------------------------------------------------------------------------


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n"
                            for text, label in [("the cat sat", "pos"), ("a dog ran away", "neg")] * 4))
    return path


def test_finetune_leaves_no_out_until_its_first_checkpoint(run, tiny_gpt2, task_file, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    args = ["finetune", tiny_gpt2, "--task", "classification", "--train", task_file, "--out", out,
            "--steps", "2", "--batch-size", "4"]
    # An argument found wrong only once the model is read: it used to leave config, weights and task.json.
    bad = run(*args, "--max-length", "4000")
    assert bad.code == 1 and "beyond the model's" in bad.err and len(bad.err.strip().splitlines()) == 1
    assert_clean(work, set())

    # A model training cannot go on with: it used to leave config, weights, task.json and metrics.jsonl,
    # and the retry was refused with "exists and is not empty".
    def cannot_train(self):
        raise RuntimeError("the model cannot be fine-tuned")

    monkeypatch.setattr(trainer_module.Trainer, "_train_step", cannot_train)
    failed = run(*args)
    assert failed.code == 1 and "cannot be fine-tuned" in failed.err
    assert_clean(work, set())

    monkeypatch.setattr(trainer_module.Trainer, "_train_step", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    _, before = old_output(work)
    assert run(*args, "--force").code == 130
    assert snapshot(out) == before  # --force replaces the old run only once the new one has a checkpoint
    assert_clean(work, {"out"})

    monkeypatch.undo()
    retry = run(*args, "--force")
    assert retry.code == 0, retry.err
    assert {"config.json", "model.safetensors", "task.json", "trainer_state.json", "metrics.jsonl"} <= set(
        os.listdir(out))
    assert "old" not in (out / "config.json").read_text()
    assert_clean(work, {"out"})


def test_finetune_interrupted_after_its_first_checkpoint_is_out_and_resumes(run, tiny_gpt2, task_file, tmp_path,
                                                                          monkeypatch):
    out = tmp_path / "out"
    save = trainer_module.Trainer.save

    def save_then_interrupt(self, elapsed):
        save(self, elapsed)
        if self.step == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "save", save_then_interrupt)
    args = ["finetune", tiny_gpt2, "--task", "classification", "--train", task_file, "--out", out,
            "--steps", "2", "--batch-size", "4", "--eval-every", "1"]
    interrupted = run(*args)
    assert interrupted.code == 130
    # says how to go on (a trial's interrupted finetune printed "aborted" alone)
    assert interrupted.err.strip().splitlines()[-1] == (f"aborted; lmkit finetune --resume --out {out} goes on from "
                                                        "the last checkpoint"), interrupted.err
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 1
    assert_clean(tmp_path, {"out", "train.jsonl"})
    monkeypatch.undo()
    resumed = run("finetune", "--resume", "--out", out)
    assert resumed.code == 0, resumed.err
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 2


# -- lmkit train (in place) ------------------------------------------------------------------------


def test_train_that_fails_before_its_first_checkpoint_leaves_the_model_as_it_was(run, tiny_gpt2, tmp_path,
                                                                                monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_gpt2, model)
    before = snapshot(model)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog ran far away home\n" * 40)
    args = ["train", model, "--data", corpus, "--steps", "4", "--batch-size", "2", "--seq-len", "16",
            "--eval-every", "0", "--save-every", "0", "--log-every", "1"]
    bad = run(*args, "--beta2", "1.5")
    assert bad.code == 1 and "--beta2 must be at least 0 and below 1" in bad.err
    assert snapshot(model) == before

    step = trainer_module.Trainer._train_step

    def interrupt_at_step_three(self):
        if self.step == 2:  # two steps logged to metrics.jsonl, no checkpoint yet
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(trainer_module.Trainer, "_train_step", interrupt_at_step_three)
    interrupted = run(*args)
    assert interrupted.code == 130 and interrupted.err.strip().splitlines()[-1] == "aborted"  # nothing to go on from
    assert snapshot(model) == before  # no metrics.jsonl of steps no checkpoint holds

    monkeypatch.undo()
    retry = run(*args, "--beta2", "0.98")
    assert retry.code == 0, retry.err
    state = json.loads((model / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["arguments"]["beta2"] == 0.98
    assert len((model / "metrics.jsonl").read_text().splitlines()) == 4

    def interrupt_at_step_five(self):
        if self.step == 4:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(trainer_module.Trainer, "_train_step", interrupt_at_step_five)
    interrupted = run("train", model, "--resume", "--steps", "6")  # a checkpoint to go on from: said how
    assert interrupted.code == 130
    assert interrupted.err.strip().splitlines()[-1] == f"aborted; lmkit train {model} --resume goes on from the last checkpoint"


# -- lmkit demo ------------------------------------------------------------------------------------


def test_demo_leaves_no_out_when_it_fails_and_keeps_the_one_force_replaces(run, tmp_path, monkeypatch):
    import lmkit.training

    def interrupted(*args, **kwargs):  # the corpus, tokenizer and model written; Ctrl-C in training
        raise KeyboardInterrupt

    monkeypatch.setattr(lmkit.training, "train", interrupted)
    out = tmp_path / "demo"
    assert run("demo", "--out", out, "--steps", "1").code == 130
    assert_clean(tmp_path, set())
    _, before = old_output(tmp_path, "demo")
    refused = run("demo", "--out", out, "--steps", "1")
    assert refused.code == 1 and "exists and is not empty" in refused.err
    assert run("demo", "--out", out, "--steps", "1", "--force").code == 130
    assert snapshot(out) == before
    assert_clean(tmp_path, {"demo"})


# -- an --out that would delete what the command reads, or cannot be made ----------------------------


def test_out_may_not_be_or_hold_what_the_command_reads(run, tiny_gpt2, tmp_path):
    # A trial's `lmkit export runs/g --out runs/g --force` replaced the trained model with its export.
    pytest.importorskip("onnxruntime")
    model = tmp_path / "work" / "model"
    shutil.copytree(tiny_gpt2, model)
    corpus = tmp_path / "work" / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the cat sat on the mat\n" * 50)
    hf = tmp_path / "work" / "hf"
    assert run("export-hf", model, "--out", hf).code == 0
    before = snapshot(tmp_path / "work")
    commands = [
        ("export", model, "--out", model),  # the model itself
        ("export", model, "--out", tmp_path / "work"),  # a folder that holds it
        ("export-hf", model, "--out", model),
        ("import-hf", hf, "--out", hf),
        ("train", model, "--data", corpus, "--steps", "1", "--batch-size", "2", "--seq-len", "8", "--out", corpus),
        ("tokenizer", "train", corpus, "--kind", "char", "--out", corpus),
        ("compose", "gpt2-tiny", "--set", f"tokenizer={model}", "--out", tmp_path / "work"),
    ]
    for command in commands:
        result = run(*command, "--force")
        assert result.code == 1, (command, result.out, result.err)
        assert len(result.err.strip().splitlines()) == 1 and "this command reads" in result.err, result.err
        assert snapshot(tmp_path / "work") == before, command
    assert_clean(tmp_path / "work", {"model", "corpus", "hf"})


def test_an_out_that_cannot_be_made_is_one_line(run, tiny_gpt2, tmp_path):
    pytest.importorskip("onnxruntime")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\n" * 50)
    for command in (("export", tiny_gpt2), ("compose", "gpt2-tiny"), ("tokenizer", "train", corpus, "--kind", "char")):
        result = run(*command, "--out", notes / "sub" / "out")
        assert result.code == 1, (command, result.err)
        assert result.err.strip().splitlines() == [f"error: {notes} is a file, so --out {notes / 'sub' / 'out'} "
                                                   "cannot be made under it; choose another --out"]
    if os.path.isdir("/proc/self") and os.geteuid() != 0:  # a folder no one may create anything in
        result = run("compose", "gpt2-tiny", "--out", "/proc/lmkit-out")
        assert result.code == 1 and len(result.err.strip().splitlines()) == 1 and "cannot write" in result.err
    assert_clean(tmp_path, {"notes.txt", "corpus.txt"})


def test_an_export_held_to_no_difference_at_all_is_validated(run, tiny_gpt2, tmp_path):
    # --atol 0 divided by the allowed difference (a trial's ZeroDivisionError): it asks for PyTorch's values exactly.
    pytest.importorskip("onnxruntime")
    result = run("export", tiny_gpt2, "--out", tmp_path / "out", "--atol", "0")
    if result.code == 0:  # onnxruntime computed every value exactly as PyTorch did
        assert "lmkit-onnx.json" in os.listdir(tmp_path / "out")
    else:
        assert result.code == 1 and "internal error" not in result.err
        assert "more than the 0 allowed; nothing was written" in result.err.strip().splitlines()[-1], result.err
        assert_clean(tmp_path, set())
