"""Training: the loss goes down, metrics and checkpoints are written, resume is exact, DDP and FSDP2 (--shard)
match one process, and a run resumes on another number of processes, sharded or not."""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmkit.errors import LmkitError
from lmkit.training import TrainingError, build_optimizer, learning_rate, train
from lmkit.training import checkpoint as checkpoint_module
from lmkit.training import trainer as trainer_module
from lmkit.training.arguments import TrainingArguments

WORDS = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "far", "away", "quickly", "home"]
QUICK = dict(batch_size=4, seq_len=16, lr=3e-3, warmup=2, log_every=1, eval_every=0, eval_batches=2, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for index in range(4):
        lines = (" ".join(rng.choice(WORDS, size=10)) for _ in range(150))
        (folder / f"part{index}.txt").write_text("\n".join(lines) + "\n")
    return str(folder)


def compose_model(corpus, out, *overrides) -> str:
    from lmkit.model import compose
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions

    tokenizer_dir = os.path.join(os.path.dirname(out), "tokenizer")
    if not os.path.isdir(tokenizer_dir):
        ByteLevelBPE.train([corpus], ByteLevelBPEOptions(vocab_size=300), progress=False).save(tokenizer_dir)
    compose("gpt2-tiny", ["decoder.n_layers=1", f"tokenizer={tokenizer_dir}", *overrides], out)
    return out


@pytest.fixture(scope="module")
def template(corpus, tmp_path_factory):
    return compose_model(corpus, str(tmp_path_factory.mktemp("models") / "plain"))


@pytest.fixture(scope="module")
def dropout_template(corpus, tmp_path_factory):
    """With dropout, an exact resume also needs the random generators restored."""
    return compose_model(corpus, str(tmp_path_factory.mktemp("models") / "dropout"), "decoder.dropout=0.1")


@pytest.fixture
def copy_model(tmp_path):
    def copy(source: str, name: str) -> str:
        return shutil.copytree(source, str(tmp_path / name))

    return copy


def weights(model_dir: str) -> dict:
    return load_file(os.path.join(model_dir, "model.safetensors"))


def metrics(model_dir: str) -> list[dict]:
    with open(os.path.join(model_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def assert_same_tensors(a: dict, b: dict, exact: bool = True, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        same = torch.equal(a[name], b[name]) if exact else torch.allclose(a[name], b[name], rtol=0, atol=atol)
        assert same, f"{name} differs by {(a[name] - b[name]).abs().max().item()}"


# -- pieces --------------------------------------------------------------------------------------------


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    rates = [learning_rate(step, lr=1.0, warmup=4, steps=20, min_lr_ratio=0.1) for step in range(20)]
    assert rates[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert rates[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))
    assert rates[-1] == pytest.approx(0.1, abs=0.01)
    assert learning_rate(50, lr=1.0, warmup=4, steps=20, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_weight_decay_applies_to_matrices_only(template):
    from lmkit.model import load_model

    model, _, _ = load_model(template)
    args = TrainingArguments(data=("x",), steps=1, batch_size=1, seq_len=8)
    decayed, plain = build_optimizer(model, args, torch.device("cpu")).param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert decayed["fused"] is True  # one kernel per step on the CPU too (lmkit.training.schedule)
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


# -- training ------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_writes_metrics_and_a_checkpoint(template, corpus, copy_model):
    model_dir = copy_model(template, "model")
    before = weights(model_dir)
    record = train(model_dir, corpus, **{**QUICK, "steps": 40, "batch_size": 8, "seq_len": 32, "log_every": 5,
                                          "eval_every": 20, "save_every": 20})
    records = metrics(model_dir)
    assert [r["step"] for r in records] == list(range(5, 41, 5))
    assert set(records[0]) == {"step", "loss", "lr", "tokens_per_s", "tflops", "elapsed"}  # no "mfu" on a CPU
    from lmkit.model import load_model

    weights_trained = sum(p.numel() for p in load_model(model_dir)[0].parameters())  # tied ones once
    assert records[0]["tflops"] == pytest.approx(records[0]["tokens_per_s"] * 6 * weights_trained / 1e12)
    evaluated = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evaluated] == [20, 40]
    assert evaluated[-1]["val_ppl"] == pytest.approx(math.exp(evaluated[-1]["val_loss"]))
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    assert evaluated[-1]["val_loss"] < math.log(300) - 1.0  # well below a uniform guess
    assert record == records[-1]

    assert {"model.safetensors", "optimizer.safetensors", "trainer_state.json", "metrics.jsonl"} <= set(
        os.listdir(model_dir))
    assert not [name for name in os.listdir(model_dir) if name.startswith(".")]
    state = json.load(open(os.path.join(model_dir, "trainer_state.json")))
    assert state["step"] == 40 and state["data"]["samples_seen"] == 40 * 8
    assert state["arguments"]["data"] == [corpus] and state["arguments"]["seq_len"] == 32
    assert len(state["rng"]) == 1 and state["spec"]["decoder"]["n_layers"] == 1
    assert not torch.equal(weights(model_dir)["decoder.wte.weight"], before["decoder.wte.weight"])
    optimizer = load_file(os.path.join(model_dir, "optimizer.safetensors"))
    assert optimizer["decoder.wte.weight.exp_avg"].shape == before["decoder.wte.weight"].shape
    assert optimizer["decoder.wte.weight.step"].item() == 40


class Interrupted(Exception):
    pass


def interrupt_after_checkpoint(monkeypatch, at_step: int) -> None:
    """Stop training right after the checkpoint of `at_step` is saved, as a crash would."""
    save = trainer_module.save_checkpoint

    def save_then_stop(directory, model, optimizer, names, state):
        save(directory, model, optimizer, names, state)
        if state["step"] == at_step:
            raise Interrupted

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_stop)


def test_resume_continues_bit_for_bit(dropout_template, corpus, copy_model, monkeypatch):
    run = {**QUICK, "steps": 8, "save_every": 4, "eval_every": 4}
    straight = copy_model(dropout_template, "straight")
    train(straight, corpus, **run)

    resumed = copy_model(dropout_template, "resumed")
    interrupt_after_checkpoint(monkeypatch, at_step=4)
    with pytest.raises(Interrupted):
        train(resumed, corpus, **run)
    monkeypatch.undo()
    assert json.load(open(os.path.join(resumed, "trainer_state.json")))["step"] == 4
    train(resumed, resume=True, progress=False)

    assert_same_tensors(weights(resumed), weights(straight))
    assert_same_tensors(load_file(os.path.join(resumed, "optimizer.safetensors")),
                        load_file(os.path.join(straight, "optimizer.safetensors")))
    assert [r["step"] for r in metrics(resumed)] == list(range(1, 9))
    assert [r["loss"] for r in metrics(resumed)] == [r["loss"] for r in metrics(straight)]


def test_a_crash_while_saving_leaves_the_last_checkpoint(template, corpus, copy_model, monkeypatch):
    run = {**QUICK, "steps": 6, "save_every": 2}
    straight = copy_model(template, "straight")
    train(straight, corpus, **run)

    # A failure while the second checkpoint is being written: the first stays as it was.
    crashed = copy_model(template, "crashed")
    write_optimizer, calls = checkpoint_module.save_optimizer_state, []

    def fail_second_time(*args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        write_optimizer(*args)

    monkeypatch.setattr(checkpoint_module, "save_optimizer_state", fail_second_time)
    with pytest.raises(OSError, match="disk full"):
        train(crashed, corpus, **run)
    monkeypatch.undo()
    assert json.load(open(os.path.join(crashed, "trainer_state.json")))["step"] == 2
    assert os.path.isdir(os.path.join(crashed, ".checkpoint.partial"))  # the half-written one

    # A crash after the checkpoint of step 4 is committed but before its files are moved into
    # place: the next run moves them, and goes on from step 4.
    install, calls = checkpoint_module.finish_interrupted_save, []

    def crash_while_installing(directory):
        calls.append(1)
        if len(calls) == 1:
            os.replace(os.path.join(directory, ".checkpoint.ready", "model.safetensors"),
                       os.path.join(directory, "model.safetensors"))
            raise KeyboardInterrupt
        install(directory)

    monkeypatch.setattr(checkpoint_module, "finish_interrupted_save", crash_while_installing)
    with pytest.raises(KeyboardInterrupt):
        train(crashed, resume=True, progress=False)
    monkeypatch.undo()
    assert json.load(open(os.path.join(crashed, "trainer_state.json")))["step"] == 2
    train(crashed, resume=True, progress=False)

    assert_same_tensors(weights(crashed), weights(straight))
    assert not [name for name in os.listdir(crashed) if name.startswith(".checkpoint")]


def test_training_on_the_cpu_runs_its_products_in_onednn(template, corpus, copy_model, monkeypatch):
    from lmkit.nn import onednn

    if not onednn._works():
        pytest.skip("this torch has no working oneDNN linear")
    calls = []
    apply = onednn._Product.apply
    monkeypatch.setattr(onednn._Product, "apply", lambda *args: calls.append(args[1].shape) or apply(*args))
    train(copy_model(template, "onednn"), corpus, **{**QUICK, "steps": 1})
    shapes = {tuple(shape) for shape in calls}  # the block's four layers and the tied output layer (vocab, 64)
    assert {(192, 64), (64, 64), (256, 64), (64, 256)} < shapes and len(shapes) == 5


def test_gradient_accumulation_equals_a_bigger_batch(template, corpus, copy_model):
    whole = copy_model(template, "whole")
    train(whole, corpus, **{**QUICK, "steps": 3, "batch_size": 8})
    accumulated = copy_model(template, "accumulated")
    train(accumulated, corpus, **{**QUICK, "steps": 3, "batch_size": 4, "grad_accum": 2})
    assert_same_tensors(weights(accumulated), weights(whole), exact=False, atol=1e-5)
    assert [r["loss"] for r in metrics(accumulated)] == pytest.approx([r["loss"] for r in metrics(whole)], abs=1e-5)


def test_two_processes_train_like_one(template, corpus, copy_model):
    # Each process takes 4 of the 8 windows of a step, in two passes of 2; one process reads them in
    # 2 passes of 4. Both evaluate on the same 8 windows.
    arguments = ["--data", corpus, "--steps", "4", "--batch-size", "2", "--grad-accum", "4", "--seq-len", "16",
                 "--lr", "3e-3", "--warmup", "2", "--log-every", "1", "--eval-every", "2", "--eval-batches", "4"]
    one = copy_model(template, "one")
    train(one, corpus, **{**QUICK, "steps": 4, "grad_accum": 2, "eval_every": 2})
    two = copy_model(template, "two")
    done = torchrun("-m", "lmkit", "train", two, *arguments)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [two]  # only the first process reports
    state = json.load(open(os.path.join(two, "trainer_state.json")))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    # The same windows, summed in another order: equal up to rounding.
    assert_same_tensors(weights(two), weights(one), exact=False, atol=1e-5)
    for a, b in zip(metrics(two), metrics(one), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a.get("val_loss") == pytest.approx(b.get("val_loss"), abs=1e-5)


# -- sharded (FSDP2) -----------------------------------------------------------------------------------

# 8 windows a step, in passes of 2 windows: one process makes 4 passes, each of two processes 2.
STEP = {**QUICK, "batch_size": 2, "grad_accum": 4, "eval_every": 0}


def torchrun(*arguments: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 ARGUMENTS`, without LMKIT_ settings. Run again once where its
    rendezvous lost the port it picked to another process (torchrun picks a free port, then binds it)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LMKIT_")}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               *arguments], capture_output=True, text=True, env=environment, timeout=300)
        if done.returncode == 0 or "address already in use" not in done.stderr.lower():
            break
    return done


def torchrun_train(model_dir: str, corpus: str, *arguments: str) -> None:
    done = torchrun("-m", "lmkit", "train", model_dir, *arguments)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def two_block_template(corpus, tmp_path_factory):
    return compose_model(corpus, str(tmp_path_factory.mktemp("models") / "two_blocks"), "decoder.dropout=0.1",
                         "decoder.n_layers=2")


def test_sharded_runs_equal_one_process_and_resume_across_process_counts(two_block_template, corpus, copy_model):
    reference = copy_model(two_block_template, "reference")
    train(reference, corpus, **{**STEP, "steps": 4})
    flags = ["--batch-size", "2", "--grad-accum", "4", "--seq-len", "16", "--lr", "3e-3", "--warmup", "2",
             "--log-every", "1", "--eval-every", "0", "--eval-batches", "2"]

    # Two sharded processes for 2 steps, then one unsharded process to step 4.
    sharded_first = copy_model(two_block_template, "sharded_first")
    torchrun_train(sharded_first, corpus, "--data", corpus, "--steps", "2", "--shard", *flags)
    state = json.load(open(os.path.join(sharded_first, "trainer_state.json")))
    assert state["world_size"] == 2 and state["optimizer_format"] == "dcp"
    assert os.path.isdir(os.path.join(sharded_first, "optimizer.dcp"))
    assert not os.path.exists(os.path.join(sharded_first, "optimizer.safetensors"))
    assert weights(sharded_first).keys() == weights(reference).keys()  # whole tensors, gathered
    train(sharded_first, resume=True, steps=4, progress=False)
    assert not os.path.exists(os.path.join(sharded_first, "optimizer.dcp"))  # the other format's file went
    assert_same_tensors(weights(sharded_first), weights(reference), exact=False, atol=1e-5)

    # One unsharded process for 2 steps, then two sharded processes to step 4.
    sharded_last = copy_model(two_block_template, "sharded_last")
    train(sharded_last, corpus, **{**STEP, "steps": 2, "eval_batches": 3})
    # 3 validation batches: 2 for one process, 1 for the other. Every forward pass of a sharded model is collective,
    # so the other runs one more, counted for nothing (it waited forever in a trial); the loss is the 3 batches'.
    torchrun_train(sharded_last, corpus, "--resume", "--steps", "4", "--shard")
    assert np.isfinite(metrics(sharded_last)[-1]["val_loss"])
    assert_same_tensors(weights(sharded_last), weights(reference), exact=False, atol=1e-5)
    for run in (sharded_first, sharded_last):
        assert [r["loss"] for r in metrics(run)] == pytest.approx([r["loss"] for r in metrics(reference)], abs=1e-5)


def test_shard_needs_torchrun(two_block_template, corpus, copy_model):
    with pytest.raises(LmkitError, match="--shard splits the model over the processes of torchrun") as caught:
        train(copy_model(two_block_template, "alone"), corpus, **{**STEP, "steps": 1, "shard": True})
    assert "\n" not in str(caught.value)


def test_the_shard_units_are_the_blocks(two_block_template):
    from lmkit.model import load_model
    from lmkit.training.sharding import shard_units

    model, _, _ = load_model(two_block_template)
    units = shard_units(model)
    assert len(units) == 2 and all(isinstance(unit, torch.nn.Module) for unit in units)
    assert {id(u) for u in units} == {id(b) for b in model.decoder.h}


TENSOR_PARALLEL = """
import sys, torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from lmkit.model import load_model

torch.manual_seed(0)
model, _, _ = load_model(sys.argv[1])
ids = torch.randint(0, 100, (2, 12))
expected = model.decoder(ids)
expected.sum().backward()
expected_grad = model.decoder.h[0].mlp.c_fc.weight.grad.clone()
model.zero_grad()
mesh = init_device_mesh("cpu", (2,))
for block in model.decoder.h:  # Megatron's MLP split: c_fc by output columns, c_proj by input rows
    parallelize_module(block.mlp, mesh, {"c_fc": ColwiseParallel(), "c_proj": RowwiseParallel()})
got = model.decoder(ids)
got.sum().backward()
grad = model.decoder.h[0].mlp.c_fc.weight.grad.full_tensor()
assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
assert torch.allclose(grad, expected_grad, atol=1e-5), (grad - expected_grad).abs().max()
assert model.decoder.h[0].mlp.c_fc.weight.to_local().shape[0] * 2 == expected_grad.shape[0]  # really split
print("ok")
"""


def test_blocks_work_with_torch_tensor_parallel(two_block_template, tmp_path):
    # docs/distributed.md: which of torch's model-parallel APIs lmkit's blocks work with; this is the one
    # that runs on CPU (gloo): the MLPs split over 2 processes give the same outputs and gradients.
    script = tmp_path / "tensor_parallel.py"
    script.write_text(TENSOR_PARALLEL)
    done = torchrun(str(script), two_block_template)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("ok") == 2  # both processes (their lines may interleave)


# -- what is refused -----------------------------------------------------------------------------------


def refused(call, error=LmkitError) -> str:
    with pytest.raises(error) as caught:
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_resume_refuses_what_would_not_continue_the_run(template, corpus, copy_model):
    model_dir = copy_model(template, "model")
    assert "has no trainer_state.json to resume from" in refused(lambda: train(model_dir, resume=True, steps=4))
    train(model_dir, corpus, **{**QUICK, "steps": 2})
    assert "already holds a training run; pass --resume" in refused(lambda: train(model_dir, corpus, **QUICK, steps=4))
    assert "--batch-size 8 differs from the run being resumed (4)" in refused(
        lambda: train(model_dir, resume=True, steps=4, batch_size=8))
    assert "already at step 2 of 2" in refused(lambda: train(model_dir, resume=True))

    config_path = os.path.join(model_dir, "config.json")
    config = json.load(open(config_path))
    config["spec"]["decoder"]["dropout"] = 0.1
    json.dump(config, open(config_path, "w"))
    message = refused(lambda: train(model_dir, resume=True, steps=4), TrainingError)
    assert "config.json changed since step 2 was saved: decoder.dropout was 0.0, now 0.1" in message


@pytest.mark.parametrize("arguments, message", [
    (["--steps", "0"], "error: --steps must be at least 1, got 0"),
    (["--batch-size", "-2"], "error: --batch-size must be at least 1, got -2"),
    (["--lr", "0"], "error: --lr must be positive, got 0.0"),
    (["--seq-len", "65"], "error: --seq-len 65 is beyond the model's context of 64 positions"),
    (["--batch-size", "4000"], "error: a batch needs batch_size*grad_accum*(seq_len+1) = 4000*17"),
    (["--device", "tpu:9"], "error: --device 'tpu:9' is not a device"),
    (["--device", "cpu:1"], "error: --device cpu:1: the CPU is one device"),
    (["--optimizer-set", "momentum=0.9"], "error: --optimizer adamw takes no options; drop 'momentum'"),
    (["--schedule-set", "warmup_steps=9"], "error: --schedule cosine takes no options; drop 'warmup_steps'"),
])
def test_bad_arguments_are_one_line_errors(run, template, corpus, copy_model, arguments, message):
    model_dir = copy_model(template, "model")
    given = {"--steps": "2", "--batch-size": "2", "--seq-len": "16"}
    given.update(zip(arguments[::2], arguments[1::2]))
    result = run("train", model_dir, "--data", corpus, *[item for pair in given.items() for item in pair])
    assert result.code == 1
    assert result.err.splitlines()[-1].startswith(message), result.err


def test_the_command_trains_and_resumes(run, template, corpus, copy_model):
    model_dir = copy_model(template, "model")
    first = run("train", model_dir, "--data", corpus, "--steps", "3", "--batch-size", "2", "--seq-len", "16",
                "--eval-every", "0", "--log-every", "1")
    assert first.code == 0 and first.out == model_dir + "\n"
    assert first.err.splitlines()[-1].startswith("trained step 3: loss ")
    lines = [line for line in first.err.splitlines() if line.startswith("step ")]  # no terminal: a line a record
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert re.search(r"tok/s [\d,]+  TFLOP/s \d\.\d{3}  eta \d\d:\d\d$", lines[0]), lines[0]
    again = run("train", model_dir, "--resume", "--steps", "5")
    assert again.code == 0, again.err
    assert [r["step"] for r in metrics(model_dir)] == [1, 2, 3, 4, 5]
    assert "val_loss" in metrics(model_dir)[-1]  # the end of training always evaluates


# -- plot ----------------------------------------------------------------------------------------------


def write_metrics(model_dir) -> None:
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "metrics.jsonl"), "w") as out:
        for step in range(10, 101, 10):
            record = {"step": step, "loss": 5 / step ** 0.3, "lr": 1e-3, "tokens_per_s": 1000.0, "elapsed": step}
            if step % 50 == 0:
                record.update(val_loss=record["loss"] + 0.1, val_ppl=math.exp(record["loss"] + 0.1))
            out.write(json.dumps(record) + "\n")
        out.write('{"step": 110, "lo')  # a record cut short by a crash


def test_plot_writes_a_png(run, tmp_path):
    pytest.importorskip("matplotlib")
    model_dir = str(tmp_path / "model")
    write_metrics(model_dir)
    result = run("plot", model_dir)
    assert result.code == 0, result.err
    assert result.out.strip() == os.path.join(model_dir, "metrics.png")
    with open(result.out.strip(), "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    custom = run("plot", model_dir, "--out", str(tmp_path / "curves.png"))
    assert custom.code == 0 and os.path.getsize(tmp_path / "curves.png") > 1000


def test_plot_errors(run, template, tmp_path, monkeypatch):
    assert run("plot", template).err.strip() == f"error: {template} has no metrics.jsonl; train it with lmkit train first"
    assert "is not a directory" in run("plot", str(tmp_path / "missing")).err  # not "train it first"
    assert "has no config.json: it is not an lmkit model directory" in run("plot", str(tmp_path)).err
    write_metrics(str(tmp_path))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    result = run("plot", str(tmp_path))
    assert result.code == 1
    assert result.err.strip() == ("error: lmkit plot needs matplotlib, which is not installed; install it with: "
                                  "pip install 'lmkit-toolkit[plot]'")


# -- --compile -------------------------------------------------------------------------------------------


def test_compile_without_a_cpp_compiler_is_refused_before_anything_is_read(template, corpus, copy_model, monkeypatch):
    from lmkit.training import compiling

    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    monkeypatch.setattr("torch._inductor.config.cpp.cxx", (None, "g++"))
    model_dir = copy_model(template, "model")
    before = sorted(os.listdir(model_dir))
    with pytest.raises(TrainingError, match="--compile on the CPU needs a C\\+\\+ compiler"):
        train(model_dir, corpus, **{**QUICK, "steps": 2, "compile": True})
    assert sorted(os.listdir(model_dir)) == before


@pytest.mark.skipif(not os.environ.get("LMKIT_SLOW_TESTS"), reason="compiles for minutes; set LMKIT_SLOW_TESTS=1")
def test_compiled_training_matches_eager(template, corpus, copy_model):
    eager, compiled = copy_model(template, "eager"), copy_model(template, "compiled")
    run = {**QUICK, "steps": 3}
    train(eager, corpus, **run)
    train(compiled, corpus, **run, compile=True)
    assert [r["loss"] for r in metrics(compiled)] == pytest.approx([r["loss"] for r in metrics(eager)], rel=1e-4)
    assert_same_tensors(weights(eager), weights(compiled), exact=False, atol=1e-4)


@pytest.mark.parametrize("where", ["log", "save"])
def test_a_run_that_diverges_stops_in_one_line_and_saves_nothing(run, template, corpus, copy_model, tmp_path, where):
    # Found by a user's trial: --lr 1e6 trained to nan and exited 0 with a checkpoint of nan weights.
    model_dir = copy_model(template, "model")
    before = weights(model_dir)
    out = tmp_path / "out"
    # where="save": the loss is printed only at the end, so the check before the step-2 checkpoint finds it.
    log_every = "1" if where == "log" else "1000"
    result = run("train", model_dir, "--data", corpus, "--steps", "6", "--batch-size", "2", "--seq-len", "16",
                 "--lr", "1e6", "--warmup", "0", "--eval-every", "0", "--log-every", log_every, "--save-every", "2",
                 "--out", out)
    assert result.code != 0 and "Traceback" not in result.err
    message = result.err.strip().splitlines()[-1]
    assert message.startswith("error: training diverged: ") and "lower --lr (say 100000)" in message
    assert not out.exists()
    assert_same_tensors(weights(model_dir), before)
