"""`lmkit finetune`: GPT's four input transformations, the auxiliary LM loss, task files and metrics."""
import json
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmkit.model import compose, load_model  # noqa: E402
from lmkit.tasks import metrics  # noqa: E402
from lmkit.tasks.finetune import TaskOptions, finetune, read_results  # noqa: E402
from lmkit.tasks.formats import read_task_file  # noqa: E402
from lmkit.tasks.inputs import MARKERS, DecoderInputs, collate, encode_task  # noqa: E402
from lmkit.tokenizers import WordBPE, WordBPEOptions  # noqa: E402
from lmkit.training import train  # noqa: E402

GOOD = "sun joy gift smile warm kind bright calm".split()
BAD = "rain pain loss frown cold cruel dark storm".split()
FILLER = "the a of and to in on at with by".split()


def sentence(rng, words, n=5):
    """Words of one mood with some filler: a language model that reads context learns the mood."""
    return " ".join([*(rng.choice(FILLER) if rng.random() < 0.3 else rng.choice(words) for _ in range(n)),
                     rng.choice(words)])


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def make_task(kind, rng, n):
    """Synthetic examples a tiny model can learn in seconds; chance accuracy is 0.5 (0.25 for 4 choices)."""
    records = []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = GOOD if positive else BAD
        if kind == "classification":
            records.append({"text": sentence(rng, words), "label": "pos" if positive else "neg"})
        elif kind in ("entailment", "similarity"):  # the mood of most of the words of both texts
            first, second = [rng.choice(GOOD + BAD) for _ in range(3)], [rng.choice(GOOD + BAD) for _ in range(2)]
            label = int(sum(w in GOOD for w in first + second) >= 3)
            if kind == "entailment":
                records.append({"premise": " ".join(first), "hypothesis": " ".join(second),
                                "label": ["contradiction", "entailment"][label]})
            else:
                records.append({"text_a": " ".join(first), "text_b": " ".join(second), "label": label})
        else:  # multiple choice: the one good word among bad ones
            choices = [rng.choice(BAD) for _ in range(3)]
            label = rng.randrange(4)
            choices.insert(label, rng.choice(GOOD))
            records.append({"context": "which one is good ?", "choices": choices, "label": label})
    return records


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A gpt-tiny (GPT-1's post-LN decoder with its word BPE) pretrained briefly on text of the task words."""
    root = tmp_path_factory.mktemp("pretrained")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(sentence(rng, GOOD if rng.random() < 0.5 else BAD, 8) for _ in range(600)))
    WordBPE.train([str(corpus)], WordBPEOptions(vocab_size=120, min_frequency=1), progress=False).save(
        str(root / "tok"))
    model_dir = str(root / "gpt")
    compose("gpt-tiny", [f"tokenizer={root / 'tok'}", "decoder.vocab_size=120", "decoder.max_positions=48"], model_dir)
    train(model_dir, str(corpus), steps=60, batch_size=8, seq_len=32, warmup=5, lr=3e-3, eval_every=0,
          progress=False)
    return model_dir


@pytest.mark.parametrize("kind, task, chance", [
    ("classification", "classification", 0.5),
    ("entailment", "classification", 0.5),
    ("similarity", "similarity", 0.5),
    ("multiple-choice", "multiple-choice", 0.25),
])
def test_finetuning_learns_each_kind_of_task_well_above_chance(pretrained, tmp_path, kind, task, chance):
    rng = random.Random(1)
    train_file = write_jsonl(tmp_path / "train.jsonl", make_task(kind, rng, 128))
    dev_file = write_jsonl(tmp_path / "dev.jsonl", make_task(kind, rng, 64))
    out = str(tmp_path / "tuned")
    record = finetune(pretrained, out, train_file, dev_file, TaskOptions(kind=task), epochs=4, batch_size=16,
                      lr=2e-3, warmup_ratio=0.1, progress=False)
    assert record["accuracy"] >= chance + 0.3, record["accuracy"]
    best = read_results(out)
    assert best["accuracy"] == record["accuracy"]
    # the best checkpoint is a model directory of its own, whose head scores the dev set as recorded
    model, tokenizer, config = load_model(f"{out}/best")
    assert config["spec"]["objectives"][0]["task"] == task
    assert [o["type"] for o in config["spec"]["objectives"]] == ["sequence-head", "causal-lm"]


def test_the_cli_finetunes_from_a_tsv_file_and_reports_the_metrics(run, pretrained, tmp_path):
    rng = random.Random(2)
    rows = make_task("classification", rng, 160)
    for name, part in (("train.tsv", rows[:128]), ("dev.tsv", rows[128:])):
        (tmp_path / name).write_text("sentence\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in part))
    result = run("finetune", pretrained, "--task", "classification", "--train", tmp_path / "train.tsv",
                 "--dev", tmp_path / "dev.tsv", "--out", tmp_path / "tuned", "--epochs", "3", "--batch-size", "16",
                 "--lr", "2e-3", "--json")
    assert result.code == 0, result.err
    record = json.loads(result.out)
    assert record["labels"] == ["neg", "pos"]
    assert {"accuracy", "f1", "mcc"} <= set(record) and record["accuracy"] > 0.8
    lines = [json.loads(line) for line in (tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()]
    assert any("accuracy" in line for line in lines)  # dev metrics go where a person can plot them

    # lmkit predict on the best checkpoint: the same accuracy, and labels need not be there
    result = run("predict", tmp_path / "tuned" / "best", "--data", tmp_path / "dev.tsv")
    assert result.code == 0, result.err
    outputs = [json.loads(line) for line in result.out.splitlines()]
    predicted = [output["label"] for output in outputs]
    assert [output["line"] for output in outputs] == list(range(2, 34))  # the file's lines, after the header
    for output in outputs:  # every label's probability, the predicted one the largest
        assert set(output["probabilities"]) == {"neg", "pos"}
        assert sum(output["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert max(output["probabilities"], key=output["probabilities"].get) == output["label"]
    gold = [row["label"] for row in rows[128:]]
    assert np.mean([p == g for p, g in zip(predicted, gold)]) == pytest.approx(record["accuracy"])
    assert f"accuracy {record['accuracy']:.4f}" in result.err
    (tmp_path / "unlabelled.tsv").write_text("sentence\n" + "".join(f"{r['text']}\n" for r in rows[128:]))
    result = run("predict", tmp_path / "tuned" / "best", "--data", tmp_path / "unlabelled.tsv")
    assert result.code == 0 and [json.loads(line)["label"] for line in result.out.splitlines()] == predicted
    assert result.err == ""


def test_lambda_zero_leaves_the_lm_objective_out(pretrained, tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", make_task("classification", random.Random(3), 16))
    finetune(pretrained, str(tmp_path / "tuned"), train_file, None, TaskOptions(aux_lm_weight=0.0), steps=1,
             progress=False)
    _, _, config = load_model(str(tmp_path / "tuned"))
    assert [o["type"] for o in config["spec"]["objectives"]] == ["sequence-head"]


def test_total_gradient_is_task_gradient_plus_lambda_times_lm_gradient(pretrained, tmp_path):
    rng = random.Random(4)
    train_file = write_jsonl(tmp_path / "train.jsonl", make_task("classification", rng, 16))
    out = str(tmp_path / "tuned")
    finetune(pretrained, out, train_file, None, TaskOptions(aux_lm_weight=0.5, dropout=0.0), steps=1, progress=False)
    model, tokenizer, config = load_model(out)
    weight = config["spec"]["objectives"][1]["weight"]
    assert weight == 0.5
    examples, _ = encode_task(read_task_file(train_file, "classification"), DecoderInputs(tokenizer, 48))
    batch = {k: torch.from_numpy(v) for k, v in collate(examples, 0).items()}
    parameter = model.decoder.h[0].mlp.c_fc.weight

    def gradient(loss):
        model.zero_grad()
        loss.backward()
        return parameter.grad.clone()

    # each its own copy of the batch: the objectives share one decoder pass per batch dictionary
    total = gradient(model.loss(dict(batch))[0])
    task = gradient(model.objectives["sequence-head"](model, dict(batch)))
    lm = gradient(model.objectives["causal-lm"](model, dict(batch)))
    assert lm.abs().max() > 0 and task.abs().max() > 0
    torch.testing.assert_close(total, task + weight * lm, rtol=1e-4, atol=1e-6)
    # the LM loss read from the head's decoder pass equals the LM loss of its own pass
    shared = dict(batch)
    model.objectives["sequence-head"](model, shared)
    torch.testing.assert_close(model.objectives["causal-lm"](model, shared),
                               model.objectives["causal-lm"](model, dict(batch)), rtol=1e-5, atol=1e-6)


def test_gpt_input_transformations(pretrained):
    _, tokenizer, _ = load_model(pretrained)
    inputs = DecoderInputs(tokenizer, 48)
    start, delim, extract = (tokenizer.token_to_id(MARKERS[k]) for k in ("start", "delim", "extract"))
    ids, _, position, _ = inputs.encode(("sun joy", "rain"))
    assert ids[0] == start and ids[-1] == extract and position == len(ids) - 1
    assert ids.count(delim) == 1 and ids[1:ids.index(delim)] == tokenizer.encode("sun joy")
    # similarity encodes both orders; multiple choice one sequence per answer
    data = read_task_file(write_jsonl_tmp([{"text_a": "sun", "text_b": "rain", "label": 1},
                                           {"text_a": "joy", "text_b": "pain", "label": 0}]), "similarity")
    examples, _ = encode_task(data, inputs)
    first, second = examples[0].sequences
    assert first[1:first.index(delim)] == second[second.index(delim) + 1:-1]
    # a long example loses tokens from its longest text, keeping the markers
    ids, _, position, cut = inputs.encode(("sun " * 80, "rain"))
    assert len(ids) == 48 and cut > 0 and ids[-1] == extract and ids[-3:-1] == [delim, *tokenizer.encode("rain")]


def write_jsonl_tmp(records, _counter=[0]):  # noqa: B006  (a unique name per call)
    import tempfile

    _counter[0] += 1
    path = f"{tempfile.mkdtemp()}/task{_counter[0]}.jsonl"
    with open(path, "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    return path


def test_byte_level_gpt2_gets_the_markers_and_a_grown_embedding(tiny_gpt2, tmp_path):
    rng = random.Random(5)
    train_file = write_jsonl(tmp_path / "train.jsonl", make_task("classification", rng, 16))
    pretrained, _, _ = load_model(tiny_gpt2)
    out = str(tmp_path / "tuned")
    finetune(tiny_gpt2, out, train_file, None, TaskOptions(), steps=1, lr=1e-9, progress=False)
    model, tokenizer, _ = load_model(out)
    assert all(tokenizer.token_to_id(token) is not None for token in MARKERS.values())
    old, new = pretrained.decoder.wte.weight, model.decoder.wte.weight
    assert new.shape[0] == old.shape[0] + 3 >= tokenizer.vocab_size
    torch.testing.assert_close(new[:old.shape[0]], old, atol=1e-6, rtol=0)  # lr 1e-9: the step moves nothing


@pytest.mark.parametrize("records, args, message", [
    ([{"text": "sun", "label": "pos"}, {"text": "rain"}], [], 'line 2 has no "label"'),
    ([{"text": "sun", "label": "pos"}, {"text": "rain", "label": "meh"}], ["--labels", "pos,neg"],
     'label "meh" is not one of the declared labels (pos, neg)'),
    ([{"body": "sun", "label": "pos"}], [], "found none of the usual text fields"),
    ([{"context": "c", "choices": ["a", "b"], "label": 2}], ["--task", "multiple-choice"],
     '"label" 2 is not the index of one of the 2 choices'),
    ([{"text": "sun", "label": "pos"}, {"text": "rain", "label": "neg"}], ["--aux-lm-weight", "-1"],
     "must not be negative"),
])
def test_bad_task_files_fail_in_one_line(run, pretrained, tmp_path, records, args, message):
    train_file = write_jsonl(tmp_path / "train.jsonl", records)
    if "--task" not in args:
        args = ["--task", "classification", *args]
    result = run("finetune", pretrained, "--train", train_file, "--out", tmp_path / "out", *args)
    assert result.code == 1 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_example_too_long_fails_with_no_truncate(run, pretrained, tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", [{"text": "sun " * 100, "label": "pos"},
                                                        {"text": "rain", "label": "neg"}])
    result = run("finetune", pretrained, "--task", "classification", "--train", train_file, "--out",
                 tmp_path / "out", "--no-truncate", "--steps", "1")
    assert result.code == 1 and "longer than --max-length 48 tokens" in result.err


def test_metrics_match_their_definitions():
    predicted, gold = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 0, 1, 1])
    assert metrics.accuracy(predicted, gold) == pytest.approx(4 / 6)
    assert metrics.f1(predicted, gold) == pytest.approx(2 / 3)  # precision 2/3, recall 2/3
    assert metrics.matthews_correlation(predicted, gold) == pytest.approx((2 * 2 - 1 * 1) / 9)
    x, y = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([2.0, 1.0, 4.0, 3.0, 10.0])
    assert metrics.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert metrics.spearman(x, y) == pytest.approx(0.8)  # rank differences 1,1,1,1,0: 1 - 6*4/(5*24)
    assert metrics.spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(0.8660254)




def conll_sentences(rng, n):
    """Runs of GOOD words are entities (B-MOOD, I-MOOD); everything else is O."""
    lines = []
    for _ in range(n):
        previous = "O"
        for _ in range(rng.randint(4, 9)):
            if rng.random() < 0.4:
                tag = "I-MOOD" if previous != "O" else "B-MOOD"
                lines.append(f"{rng.choice(GOOD)} NN {tag}")
            else:
                tag = "O"
                lines.append(f"{rng.choice(FILLER + BAD)} DT O")
            previous = tag
        lines.append("")
    return "\n".join(lines) + "\n"


def test_token_classification_learns_entities_with_a_gpt_decoder(run, pretrained, tmp_path):
    rng = random.Random(0)
    (tmp_path / "train.conll").write_text("-DOCSTART- -X- O\n\n" + conll_sentences(rng, 96))
    (tmp_path / "dev.conll").write_text(conll_sentences(rng, 32))
    result = run("finetune", pretrained, "--task", "token-classification", "--train", tmp_path / "train.conll",
                 "--dev", tmp_path / "dev.conll", "--out", tmp_path / "ner", "--epochs", "4", "--batch-size", "16",
                 "--lr", "3e-3", "--json")
    assert result.code == 0, result.err
    record = json.loads(result.out)
    assert record["labels"] == ["B-MOOD", "I-MOOD", "O"]
    # all-O scores entity F1 0 and accuracy about 0.6; telling B from I needs the word before
    assert record["entity_f1"] > 0.5 and record["accuracy"] > 0.85, record
    words_only = "\n".join(line.split()[0] if line.strip() else "" for line in
                           (tmp_path / "dev.conll").read_text().splitlines())
    (tmp_path / "words.txt").write_text(words_only)
    result = run("predict", tmp_path / "ner" / "best", "--data", tmp_path / "words.txt")
    assert result.code == 0, result.err
    first = json.loads(result.out.splitlines()[0])
    assert len(first["words"]) == len(first["tags"]) == len(first["probabilities"])
    assert set(first["tags"]) <= {"B-MOOD", "I-MOOD", "O"} and first["line"] == 1
    assert all(1 / 3 <= p <= 1 for p in first["probabilities"])  # the chosen tag's, the largest of three
    assert json.loads((tmp_path / "ner" / "best" / "config.json").read_text())["spec"]["objectives"][0][
        "tag_scheme"] == "conlleval"  # B/I/O tags: conlleval's reading, kept for predict


def test_an_interrupted_finetuning_run_resumes_bit_for_bit(run, pretrained, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import lmkit.training.trainer as trainer_module

    rng = random.Random(6)
    train_file = write_jsonl(tmp_path / "train.jsonl", make_task("classification", rng, 64))
    dev_file = write_jsonl(tmp_path / "dev.jsonl", make_task("classification", rng, 32))
    args = ["--task", "classification", "--train", train_file, "--dev", dev_file, "--epochs", "3",
            "--batch-size", "16", "--lr", "2e-3"]
    assert run("finetune", pretrained, *args, "--out", tmp_path / "straight").code == 0

    class Interrupted(Exception):
        pass

    save = trainer_module.save_checkpoint

    def save_then_stop(directory, *rest, **kwargs):
        save(directory, *rest, **kwargs)
        raise Interrupted  # a crash right after the first epoch's checkpoint

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_stop)
    with pytest.raises(Interrupted):
        finetune(pretrained, str(tmp_path / "resumed"), train_file, dev_file, TaskOptions(), epochs=3,
                 batch_size=16, lr=2e-3, progress=False)
    monkeypatch.undo()
    result = run("finetune", "--resume", "--out", tmp_path / "resumed", "--json")
    assert result.code == 0, result.err
    straight, resumed = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("straight", "resumed"))
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    timeless = [{k: v for k, v in read_results(str(tmp_path / name)).items() if k not in ("tokens_per_s", "tflops", "elapsed")}
                for name in ("resumed", "straight")]
    assert timeless[0] == timeless[1]  # the resumed run kept (or beat) the best step from before the interruption
    wrong = run("finetune", pretrained, "--resume", "--out", tmp_path / "resumed")
    assert wrong.code == 2 and "leave PRETRAINED, --task, --train and --dev out" in wrong.err
    # settings the run was started with are its own: a trial's --lr and --batch-size were dropped without a word
    changed = run("finetune", "--resume", "--out", tmp_path / "resumed", "--lr", "1", "--batch-size", "64",
                  "--steps", "99")
    assert changed.code == 2 and len(changed.err.strip().splitlines()) == 1, changed.err
    assert "only --steps (raised) and --device may change: leave --lr, --batch-size out" in changed.err, changed.err


def test_a_task_file_without_examples_says_why(tmp_path):
    # A trial's one-line .tsv "held no examples": its line was the header, which the message now says.
    from lmkit.errors import DataError
    from lmkit.tasks.formats import read_task_file

    one_line = tmp_path / "one.tsv"
    one_line.write_text("the cat sat\tpositive\n")
    with pytest.raises(DataError, match=r"one.tsv holds no examples; a .tsv file's first line is its column header"):
        read_task_file(str(one_line), "classification")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty.jsonl holds no examples$"):
        read_task_file(str(empty), "classification")


@pytest.mark.parametrize("task, name, text, message", [
    # A trial's plain-text heldout.txt: its first sentence was taken for the column names, and the error listed them.
    ("classification", "heldout.txt", "quickly red slowly door\nthe red sat a\n", 'names one column ("quickly red'),
    ("text-to-text", "heldout.txt", "quickly red slowly door\nthe red sat a\n", '{"input": ..., "target": ...}'),
    # A classification TSV given to a tagger: its rows' word counts were reported as column counts alone.
    ("token-classification", "dev.tsv", "sentence\tlabel\nthe cat sat on it\ta\n", "reads CoNLL files"),
])
def test_a_task_file_of_another_format_is_named_for_what_it_is(run, pretrained, tmp_path, task, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    result = run("finetune", pretrained, "--task", task, "--train", path, "--out", tmp_path / "out")
    assert result.code == 1 and message in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "out").exists()


def test_resume_of_a_run_that_does_not_exist_says_so(run, tmp_path):
    # A trial's `finetune --resume --out runs/nope` was told runs/nope "is not a fine-tuning run (no task.json)".
    result = run("finetune", "--resume", "--out", tmp_path / "nope")
    assert result.code == 1 and "nope does not exist" in result.err and len(result.err.strip().splitlines()) == 1
