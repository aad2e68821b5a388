"""T5's Adafactor and inverse square-root schedule through `lmkit train`, and half precision that does not
overflow into NaN."""
import json
import math
import shutil

import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.plugins.t5.training import inverse_sqrt_rate  # noqa: E402


def test_inverse_sqrt_is_t5s_rate():
    for n in (1, 500, 10_000, 10_001, 40_000, 1_000_000):
        assert inverse_sqrt_rate(n - 1, lr=0.01, warmup=0, constant_steps=10_000) == pytest.approx(
            1 / math.sqrt(max(n, 10_000)))
    assert inverse_sqrt_rate(0, lr=0.01, warmup=4, constant_steps=10) == pytest.approx(0.01 / 5)  # warmup first


def test_adafactor_trains_and_resumes_exactly(tmp_path, translation_task):
    tok, model = tmp_path / "tok", tmp_path / "t5"
    specials = json.dumps(["<pad>", "</s>", "<unk>"])
    data = []
    for side in ("train.src", "train.tgt"):  # 160 pairs: enough for 4 steps, quick to read three times
        lines = open(translation_task[side], encoding="utf-8").read().splitlines()[:160]
        (tmp_path / side).write_text("\n".join(lines) + "\n")
        data.append(str(tmp_path / side))
    assert run_cli("tokenizer", "train", "--kind", "unigram", "--vocab-size", 200, "--set", f"special_tokens={specials}",
                   *data, "--out", tok).code == 0
    assert run_cli("compose", "t5-tiny", "--set", f"tokenizer={tok}", "--out", model).code == 0
    halves = tmp_path / "halves"
    shutil.copytree(model, halves)
    common = ["--data", data[0], "--data", data[1], "--batch-size", 4, "--seq-len", 48, "--warmup", 0,
              "--eval-every", 0, "--log-every", 1, "--optimizer", "adafactor", "--schedule", "inverse-sqrt",
              "--schedule-set", "constant_steps=2", "--lr", "0.01"]
    whole = run_cli("train", model, *common, "--steps", 4, "--save-every", 0)
    assert whole.code == 0, whole.err
    assert run_cli("train", halves, *common, "--steps", 2, "--save-every", 2).code == 0
    assert run_cli("train", halves, "--resume", "--steps", 4).code == 0
    from safetensors.torch import load_file

    a, b = load_file(f"{model}/model.safetensors"), load_file(f"{halves}/model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = [json.loads(line)["loss"] for line in open(f"{model}/metrics.jsonl") if '"loss"' in line]
    assert losses[-1] < losses[0]


def test_fp16_overflow_is_not_nan():
    """Feed-forward outputs past fp16's range (T5 trained in bf16; transformers#9295): clamped, not NaN."""
    from lmkit.model import build_model
    from lmkit.registry import get_host
    from lmkit.spec import resolve

    spec = resolve(dict(get_host().presets["t5-tiny"].spec), get_host())
    model = build_model(spec).eval()
    with torch.no_grad():
        model.encoder.block[0].mlp.wo.weight.mul_(3e5)  # the first layer's FFN output passes 65504
    ids = torch.randint(3, 500, (2, 12))
    with torch.no_grad():
        full = model.encoder(ids).last_hidden_state
        assert full.abs().max() > 0 and torch.isfinite(full).all()
        model.half()
        assert model.encoder.block[0].mlp.wo.weight.dtype == torch.float32  # kept, as transformers keeps it
        assert model.encoder.block[0].ln_1.weight.dtype == torch.float16
        half = model.encoder(ids).last_hidden_state
        assert torch.isfinite(half).all()
        torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0.05)
        for block in model.encoder.block:  # everything in fp16, wo too: the sums overflow into NaN
            block.mlp.wo.weight.data = block.mlp.wo.weight.data.half()
        assert not torch.isfinite(model.encoder(ids).last_hidden_state).all()


def test_bf16_autocast_trains(tmp_path, translation_task):
    """`lmkit train --bf16`: the autocast forward's loss is the fp32 loss to bf16's precision, and training in it
    lowers the loss with every weight staying float32 and finite."""
    from test_seq2seq import compose_tiny

    from lmkit.model import load_model
    from lmkit.parallel import encode_pairs, make_batch, read_pairs
    from lmkit.seq2seq import source_suffix_ids

    model_dir = compose_tiny(translation_task, "t5-bf16", "t5-tiny")
    model, tokenizer, _ = load_model(model_dir)
    pairs = encode_pairs(read_pairs([translation_task["valid.src"], translation_task["valid.tgt"]])[:16], tokenizer,
                         64, "test", source_suffix=source_suffix_ids(model.encoder, tokenizer))
    batch = {k: torch.from_numpy(v) for k, v in make_batch(pairs, 0, tokenizer.eos_id, tokenizer.pad_id).items()}
    objective = next(iter(model.objectives.values()))
    with torch.no_grad():
        full = objective(model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = objective(model, batch)
    assert torch.isfinite(half) and abs(half.item() - full.item()) < 0.02 * full.item()
    result = run_cli("train", model_dir, "--data", translation_task["train.src"], "--data", translation_task["train.tgt"],
                     "--steps", 6, "--batch-size", 16, "--seq-len", 64, "--lr", "3e-3", "--warmup", 0, "--eval-every", 0,
                     "--log-every", 1, "--bf16")
    assert result.code == 0, result.err
    losses = [json.loads(line)["loss"] for line in open(f"{model_dir}/metrics.jsonl") if '"loss"' in line]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    from safetensors.torch import load_file

    weights = load_file(f"{model_dir}/model.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())
