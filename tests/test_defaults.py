"""Defaults that fit the run they are used in (issue #19, items 13-15).

Warmup scales with --steps; fine-tuning takes its learning rate and warmup from the stack's recipe,
scaled to narrow models, and reports the baseline of one answer for every example; compose sizes a
vocabulary to its tokenizer, warns when there is none, and does not name a changed preset after it;
the known-entropy source can speak English.
"""
import json
import math
import types

import numpy as np
import pytest

from lmkit.synthetic import ENGLISH, MarkovSource
from lmkit.training.arguments import TrainingArguments, default_warmup

# -- warmup ----------------------------------------------------------------------------------------


def test_a_short_run_warms_up_over_a_tenth_of_its_steps():
    args = TrainingArguments(data=("x.txt",), steps=40, batch_size=1, seq_len=8)
    assert args.warmup == 4  # not 100: a 40-step run reaches its peak rate
    assert [default_warmup(s) for s in (1, 9, 10, 500, 1000, 5000)] == [0, 0, 1, 50, 100, 100]
    assert TrainingArguments(data=("x.txt",), steps=40, batch_size=1, seq_len=8, warmup=0).warmup == 0


def test_a_resumed_run_keeps_the_warmup_it_started_with():
    args = TrainingArguments.from_dict({"data": ["x.txt"], "steps": 40, "batch_size": 1, "seq_len": 8})
    resumed = TrainingArguments.from_dict(args.to_dict()).resumed_with({"steps": 4000}, 40)
    assert (resumed.steps, resumed.warmup) == (4000, 4)


# -- fine-tuning defaults --------------------------------------------------------------------------


def test_the_recipes_own_their_defaults_and_narrow_models_get_larger_rates():
    pytest.importorskip("torch")
    from lmkit.tasks.recipes import DecoderRecipe, EncoderRecipe, default_learning_rate

    assert (EncoderRecipe.default_lr, EncoderRecipe.default_warmup_ratio) == (5e-5, 0.1)  # BERT
    assert (DecoderRecipe.default_lr, DecoderRecipe.default_warmup_ratio) == (6.25e-5, 0.002)  # GPT
    assert default_learning_rate(EncoderRecipe(), 768) == 5e-5
    assert default_learning_rate(EncoderRecipe(), 1024) == 5e-5  # never scaled down
    assert default_learning_rate(EncoderRecipe(), 128) == pytest.approx(3e-4)  # Turc et al.'s best for BERT-Tiny
    assert default_learning_rate(DecoderRecipe(), 64) == pytest.approx(6.25e-5 * 12)


def _batches(labels, size=4):
    return [{"labels": np.asarray(labels[i:i + size])} for i in range(0, len(labels), size)]


def test_the_classification_baseline_is_the_training_majority():
    from lmkit.tasks.kinds import task_kind

    kind = task_kind("classification", None)
    train = types.SimpleNamespace(examples=[types.SimpleNamespace(label=x) for x in (1, 1, 1, 0)])
    dev = types.SimpleNamespace(labels=("neg", "pos"))
    baseline = kind.baseline(_batches([0, 1, 0, 1, 0, 1]), None, dev, train)
    assert baseline["predicts"].startswith("'pos'")
    assert baseline["accuracy"] == 0.5 and baseline["mcc"] == 0.0


def test_every_kind_has_a_baseline():
    from lmkit.tasks.kinds import task_kind

    regression = task_kind("regression", None)
    train = types.SimpleNamespace(examples=[types.SimpleNamespace(label=x) for x in (1.0, 2.0, 3.0)])
    batches = [{"labels": np.asarray([0.5, 2.5, 1.0], dtype=np.float32)}]
    assert regression.baseline(batches, None, types.SimpleNamespace(labels=()), train) == {
        "predicts": "2 (the training mean)", "pearson": 0.0, "spearman": 0.0}

    choice = task_kind("multiple-choice", None)
    train = types.SimpleNamespace(examples=[types.SimpleNamespace(label=x) for x in (2, 2, 0)])
    assert choice.baseline(_batches([2, 1, 2, 0]), None, types.SimpleNamespace(labels=()), train)["accuracy"] == 0.5

    tagging = task_kind("token-classification", types.SimpleNamespace(tag_scheme="auto", tag_column=-1, labels=()))
    tagging.scheme = "conlleval"
    labels = ("B-PER", "I-PER", "O")
    train = types.SimpleNamespace(examples=[types.SimpleNamespace(tags=(2, 2, 0, 1))])
    batches = [{"labels": np.asarray([[2, 0, 1, -100], [2, 2, 2, 2]])}]
    baseline = tagging.baseline(batches, None, types.SimpleNamespace(labels=labels), train)
    assert baseline["predicts"].startswith("'O'") and baseline["entity_f1"] == 0.0
    assert baseline["accuracy"] == pytest.approx(5 / 7)


def test_a_best_score_that_does_not_beat_the_baseline_is_a_warning():
    from lmkit.tasks.finetune import baseline_warning

    record = {"step": 63, "accuracy": 0.5, "baseline": {"predicts": "'neg'", "accuracy": 0.5}}
    warning = baseline_warning(record, "accuracy")
    assert warning.startswith("warning: the best dev accuracy 0.5000 (step 63) does not beat 0.5000")
    assert "\n" not in warning and "--epochs" in warning
    assert baseline_warning({**record, "accuracy": 0.9}, "accuracy") is None
    assert baseline_warning({"step": 1, "accuracy": 0.2}, "accuracy") is None  # no dev set: nothing to compare


# -- compose ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions

    root = tmp_path_factory.mktemp("tokenizers")
    corpus = root / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog ran to the park\n" * 50)
    made = {}
    for name, size, specials in (("small", 280, None), ("target", 300, None),
                                 ("roberta", 290, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])):
        options = ByteLevelBPEOptions(vocab_size=size, **({"special_tokens": specials} if specials else {}))
        ByteLevelBPE.train([str(corpus)], options, progress=False).save(str(root / name))
        made[name] = str(root / name)
    return made


def _spec(directory):
    return json.loads((directory / "config.json").read_text())["spec"]


def test_compose_sizes_the_vocabulary_to_the_tokenizer(run, tokenizers, tmp_path):
    pytest.importorskip("torch")
    from lmkit.tokenizers import load_tokenizer

    size = load_tokenizer(tokenizers["small"]).vocab_size
    result = run("compose", "gpt-mini", "--set", f"tokenizer={tokenizers['small']}", "--out", tmp_path / "m")
    assert result.code == 0, result.err
    assert _spec(tmp_path / "m")["decoder"]["vocab_size"] == size
    assert f"decoder.vocab_size {size}, the tokenizer's: it was 8192, {8192 - size} of its rows would never be used" \
        in result.err
    assert _spec(tmp_path / "m")["name"] == "gpt-mini"  # a preset given a tokenizer is still the preset

    kept = run("compose", "gpt-mini", "--set", f"tokenizer={tokenizers['small']}", "--set", "decoder.vocab_size=512",
               "--out", tmp_path / "kept")
    assert kept.code == 0 and _spec(tmp_path / "kept")["decoder"]["vocab_size"] == 512 and "vocab_size" not in kept.err


def test_compose_sizes_every_stack_and_the_decoder_to_the_target_tokenizer(run, tokenizers, tmp_path):
    pytest.importorskip("torch")
    from lmkit.tokenizers import load_tokenizer

    source, target = (load_tokenizer(tokenizers[n]).vocab_size for n in ("small", "target"))
    assert source != target
    result = run("compose", "nmt-tiny", "--set", f"tokenizer={tokenizers['small']}",
                 "--set", f"tokenizer.target={tokenizers['target']}", "--out", tmp_path / "nmt")
    assert result.code == 0, result.err
    spec = _spec(tmp_path / "nmt")
    assert (spec["encoder"]["vocab_size"], spec["decoder"]["vocab_size"]) == (source, target)
    assert "the target tokenizer's" in result.err

    # An encoder too (with the special tokens its masked LM needs, which compose checks).
    roberta = run("compose", "roberta-tiny", "--set", f"tokenizer={tokenizers['roberta']}", "--out", tmp_path / "rob")
    assert roberta.code == 0, roberta.err
    assert _spec(tmp_path / "rob")["encoder"]["vocab_size"] == load_tokenizer(tokenizers["roberta"]).vocab_size


def test_a_spec_file_that_sets_vocab_size_keeps_it(run, tokenizers, tmp_path):
    pytest.importorskip("torch")
    spec = tmp_path / "m.toml"
    spec.write_text(f'preset = "gpt2-tiny"\n[tokenizer]\npath = "{tokenizers["small"]}"\n[decoder]\nvocab_size = 400\n')
    result = run("compose", spec, "--out", tmp_path / "m")
    assert result.code == 0, result.err
    assert _spec(tmp_path / "m")["decoder"]["vocab_size"] == 400


def test_compose_without_a_tokenizer_warns_unless_asked_for(run, tmp_path):
    pytest.importorskip("torch")
    result = run("compose", "gpt2-tiny", "--out", tmp_path / "bare")
    assert result.code == 0
    assert result.err.startswith(f"warning: {tmp_path / 'bare'} has no tokenizer, so it cannot be trained")
    assert "--set tokenizer=DIR" in result.err
    quiet = run("compose", "gpt2-tiny", "--no-tokenizer", "--out", tmp_path / "quiet")
    assert quiet.code == 0 and "warning" not in quiet.err
    both = run("compose", "gpt2-tiny", "--no-tokenizer", "--set", "tokenizer=tok/", "--out", tmp_path / "both")
    assert both.code == 2 and "--no-tokenizer" in both.err and not (tmp_path / "both").exists()


def test_a_changed_preset_gets_a_name_of_its_own(run, tokenizers, tmp_path):
    pytest.importorskip("torch")
    result = run("compose", "gpt-mini", "--set", f"tokenizer={tokenizers['small']}", "--set", "decoder.n_layers=2",
                 "--out", tmp_path / "m0")
    assert result.code == 0, result.err
    spec = _spec(tmp_path / "m0")
    assert (spec["name"], spec["based_on"]) == ("m0", "gpt-mini")
    shown = run("show", tmp_path / "m0").out
    assert "name: m0" in shown and "based_on: gpt-mini" in shown
    named = run("compose", "gpt-mini", "--set", "name=tiny-gpt", "--set", "decoder.n_layers=2", "--no-tokenizer",
                "--out", tmp_path / "named")
    assert named.code == 0 and (_spec(tmp_path / "named")["name"], _spec(tmp_path / "named")["based_on"]) == (
        "tiny-gpt", "gpt-mini")
    plain = run("compose", "gpt2-tiny", "--no-tokenizer", "--out", tmp_path / "plain")
    assert plain.code == 0 and "based_on" not in _spec(tmp_path / "plain")


# -- the known-entropy source in English -----------------------------------------------------------


def test_the_english_source_reads_as_words_and_keeps_its_exact_entropy():
    source = MarkovSource.english(seed=0)
    vocabulary = {w for words in ENGLISH.values() for w in words.split()}
    assert set(source.words) == vocabulary and len(source.words) == len(vocabulary)
    assert np.allclose(source.transitions.sum(1), 1.0) and source.start.sum() == pytest.approx(1.0)
    documents = source.sample(3000, seed=1)
    assert all(set(source.text(d).split()) <= vocabulary for d in documents)
    assert all(source.words[d[0]] in ENGLISH["article"].split() + ENGLISH["pronoun"].split() for d in documents)
    # The exact floor: the true NLL per symbol (words and document ends) matches the entropy rate.
    empirical = sum(source.nll(d) for d in documents) / sum(len(d) + 1 for d in documents)
    assert empirical == pytest.approx(source.entropy_rate(), rel=0.03)
    again = MarkovSource.from_json(json.loads(json.dumps(source.to_json())))
    assert math.isclose(again.entropy_rate(), source.entropy_rate())
