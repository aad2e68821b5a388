"""ULMFiT's schedule and rates from the CLI: STLR against the paper's formula, discriminative rates, gradual
unfreezing, and `lmkit train --recipe ulmfit-lm`."""
from __future__ import annotations

import json
import math
import shutil

import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.plugins.ulmfit.training import STLROptions, stlr_rate  # noqa: E402
from lmkit.synthetic import MarkovSource, write_corpus  # noqa: E402


def paper_stlr(t: int, T: int, eta_max: float, cut_frac: float, ratio: float) -> float:
    """ULMFiT eq. 3, written out as printed."""
    cut = math.floor(T * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return eta_max * (1 + p * (ratio - 1)) / ratio


def test_stlr_is_the_papers_formula():
    for T, cut_frac, ratio in ((1000, 0.1, 32), (400, 0.25, 10), (60, 0.5, 4)):
        for t in range(T):
            assert stlr_rate(t, steps=T, lr=0.01, cut_frac=cut_frac, ratio=ratio) == pytest.approx(
                paper_stlr(t, T, 0.01, cut_frac, ratio), rel=1e-12)
    rates = [stlr_rate(t, steps=1000, lr=0.01) for t in range(1000)]
    assert rates[0] == pytest.approx(0.01 / 32) and rates[100] == pytest.approx(0.01)
    assert max(rates) == rates[100] and rates[-1] == pytest.approx(0.01 / 32 * (1 + 31 / 900))


def test_stlr_holds_at_its_lowest_where_the_cut_is_rounded_down():
    # T * cut_frac = 1.5 -> cut 1: the formula's decay would end below zero; the rate stops at lr / ratio.
    rates = [stlr_rate(t, steps=15, lr=1.0) for t in range(15)]
    assert min(rates) == pytest.approx(1 / 32) and rates[-1] == pytest.approx(1 / 32)


def test_stlr_cut_frac_outside_0_1_is_refused():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="cut_frac must be in"):
            STLROptions(cut_frac=bad)


# -- from the CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("ulmfit-training")
    source = MarkovSource.random(n_words=20, branching=3, mean_length=20, seed=0)
    write_corpus(str(root / "corpus"), source, n_train=300, n_valid=20, seed=0)
    data = str(root / "corpus" / "train.jsonl")
    specials = json.dumps(["<unk>", "<|endoftext|>", "<pad>", "_start_", "_delimiter_", "_classify_"])
    assert run_cli("tokenizer", "train", "--kind", "bpe", "--vocab-size", 120, "--set", f"special_tokens={specials}",
                   data, "--out", str(root / "tok")).code == 0
    composed = str(root / "lm")
    result = run_cli("compose", "awd-lstm-tiny", "--set", f"tokenizer={root / 'tok'}", "--set", "decoder.vocab_size=120",
                     "--out", composed)
    assert result.code == 0, result.err
    return {"root": root, "data": data, "composed": composed}


def fresh(lm, name: str) -> str:
    out = str(lm["root"] / name)
    shutil.copytree(lm["composed"], out)
    return out


ARGS = ["--steps", 3, "--batch-size", 4, "--seq-len", 16, "--eval-every", 0, "--save-every", 0, "--log-every", 1]


def weights(directory: str) -> dict:
    from safetensors.torch import load_file

    return load_file(f"{directory}/model.safetensors")


def test_gradual_unfreezing_trains_the_top_group_first_then_one_more_per_stage(lm):
    before = weights(lm["composed"])
    changed = {}
    for steps in (1, 2, 3):
        out = fresh(lm, f"unfreeze-{steps}")
        result = run_cli("train", out, "--data", lm["data"], *ARGS[:1], steps, *ARGS[2:], "--optimizer", "ulmfit",
                         "--optimizer-set", "unfreeze_every=1", "--schedule", "stlr")
        assert result.code == 0, result.err
        after = weights(out)
        changed[steps] = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed[1] == {"decoder.lm_head_bias"}  # the head alone
    assert changed[2] == changed[1] | {n for n in before if n.startswith("decoder.layers.1.")}  # then the top LSTM
    assert changed[3] == changed[2] | {n for n in before if n.startswith("decoder.layers.0.")}
    assert "decoder.embedding.weight" not in changed[3]  # the embedding is the fourth group


def test_discriminative_rates_divide_by_the_factor_per_group_going_down(lm):
    from lmkit.model import load_model
    from lmkit.plugins.ulmfit.training import ULMFiTOptimizer, ULMFiTOptimizerOptions

    model = load_model(lm["composed"])[0]
    groups = ULMFiTOptimizer(ULMFiTOptimizerOptions(unfreeze_every=10, unfreeze_stages=2)).param_groups(model)
    assert [g["name"] for g in groups] == ["embedding", "lstm 0", "lstm 1", "head"]
    assert [g["lr_scale"] for g in groups] == pytest.approx([2.6 ** -3, 2.6 ** -2, 2.6 ** -1, 1.0])
    assert [g["train_from_step"] for g in groups] == [10, 10, 10, 0]  # two stages: the head, then the rest
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_train_recipe_ulmfit_lm_runs_stlr_with_its_settings_and_flags_win(lm):
    from lmkit.plugins.ulmfit.training import stlr_rate

    out = fresh(lm, "recipe")
    result = run_cli("train", out, "--data", lm["data"], *ARGS, "--recipe", "ulmfit-lm", "--lr", 0.01)
    assert result.code == 0, result.err
    state = json.loads(open(f"{out}/trainer_state.json").read())
    arguments = state["arguments"]
    assert (arguments["optimizer"], arguments["schedule"], arguments["beta1"], arguments["beta2"]) == (
        "ulmfit", "stlr", 0.7, 0.99)
    assert arguments["lr"] == 0.01  # the flag wins over the recipe's 0.004
    records = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    assert [r["lr"] for r in records] == pytest.approx([stlr_rate(s, steps=3, lr=0.01) for s in range(3)])
    assert state["carried"][0]  # the LM's state per stream, saved for an exact resume


@pytest.mark.parametrize("args, message", [
    (["--recipe", "ulmfit-nope"], "unknown training-recipe 'ulmfit-nope'"),
    (["--schedule", "stlr", "--schedule-set", "cut_frac=1.5"], "cut_frac must be in (0, 1)"),
    (["--optimizer", "ulmfit", "--optimizer-set", "unfreeze_stages=5"], "more than the model's 4 parameter groups"),
])
def test_bad_settings_are_one_line_errors(lm, args, message):
    out = fresh(lm, "bad-" + str(abs(hash(tuple(args)))))
    result = run_cli("train", out, "--data", lm["data"], *ARGS, *args)
    assert result.code != 0
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]  # after progress lines
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.err, result.err


def test_the_ulmfit_optimizer_needs_an_awd_lstm(tmp_path, lm):
    out = str(tmp_path / "gpt")
    assert run_cli("compose", "gpt2-tiny", "--set", f"tokenizer={lm['root'] / 'tok'}", "--set",
                   "decoder.vocab_size=120", "--out", out).code == 0
    result = run_cli("train", out, "--data", lm["data"], *ARGS, "--optimizer", "ulmfit")
    assert result.code != 0 and "need an AWD-LSTM language model" in result.err and "Traceback" not in result.err
