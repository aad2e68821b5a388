"""Text-to-text fine-tuning (`lmkit finetune --task text-to-text`) and scoring (`lmkit eval --task`) of T5."""
import json

import pytest

pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.errors import DataError  # noqa: E402
from lmkit.tasks.text_to_text import read_task, read_text_pairs, text_metrics  # noqa: E402


def test_metrics_by_hand():
    scores = text_metrics(["the cat", "a dog ran", "x"], ["The cat.", "the dog ran", "y z"])
    # SQuAD's normalisation drops case, punctuation and articles: the first two match exactly, the third not at all.
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    partial = text_metrics(["red dog"], ["red cat"])
    assert partial["exact_match"] == 0 and partial["f1"] == pytest.approx(0.5)  # precision 1/2, recall 1/2
    assert 0 <= scores["bleu"] <= 100


def test_records_and_their_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prefix": "question", "input": "who?", "target": "me"}) + "\n\n"
                    + json.dumps({"input": "a b", "target": "b a"}) + "\n")
    data = read_text_pairs(str(good))
    assert [(e.source, e.target) for e in data.examples] == [("question: who?", "me"), ("a b", "b a")]
    assert data.lines == [1, 3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": "a", "target": "b"}) + "\n" + json.dumps({"input": "c"}) + "\n")
    with pytest.raises(DataError, match="line 2 has no 'target'"):
        read_text_pairs(str(bad))


def test_other_task_files_read_as_t5_casts_them(tmp_path):
    tsv = tmp_path / "rte.tsv"
    tsv.write_text("sentence1\tsentence2\tlabel\nA man sleeps.\tA person rests.\tentailment\n"
                   "It rains.\tIt is dry.\tnot_entailment\n")
    data = read_task(str(tsv))
    assert [(e.source, e.target) for e in data.examples] == [
        ("rte: sentence1: A man sleeps. sentence2: A person rests.", "entailment"),
        ("rte: sentence1: It rains. sentence2: It is dry.", "not_entailment")]
    squad = tmp_path / "squad.json"
    context = "Ada Lovelace wrote the first program."
    squad.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "1", "question": "Who wrote it?", "answers": [{"text": "Ada Lovelace", "answer_start": 0}]}]}]}]}))
    (example,) = read_task(str(squad)).examples
    assert (example.source, example.target) == (f"question: Who wrote it? context: {context}", "Ada Lovelace")


def test_dev_reads_with_the_training_files_prefix_and_a_missing_file_is_named(tmp_path):
    from lmkit.tasks.text_to_text import TextToTextKind

    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text("sentence\tlabel\nIt rains.\tbad\nIt shines.\tgood\n")
    kind = TextToTextKind("text-to-text", None)
    train, dev = kind.read(str(tmp_path / "train.tsv")), kind.read(str(tmp_path / "dev.tsv"))
    assert train.examples[0].source == dev.examples[0].source == "train: It rains."  # not "dev: It rains."
    for path in ("missing.jsonl", "missing.tsv", "missing.json"):
        with pytest.raises(DataError, match=f"task file .*{path} does not exist"):
            read_task(str(tmp_path / path))


def test_finetune_then_eval_agree_with_generate(tmp_path):
    words = "red green blue cat dog sun moon tree".split()
    rows = [{"prefix": "reverse", "input": f"{a} {b}", "target": f"{b} {a}"} for a in words for b in words if a != b]
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:48]))
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows[48:56]))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"reverse: {r['input']} {r['target']}\n" for r in rows))
    tok, model, tuned = tmp_path / "tok", tmp_path / "t5", tmp_path / "tuned"
    specials = json.dumps(["<pad>", "</s>", "<unk>"])
    for args in (("tokenizer", "train", "--kind", "unigram", "--vocab-size", 60, "--set", f"special_tokens={specials}",
                  "--set", "template=t5", corpus, "--out", tok),
                 ("compose", "t5-tiny", "--set", f"tokenizer={tok}", "--out", model),
                 ("finetune", model, "--task", "text-to-text", "--train", train, "--dev", dev, "--out", tuned,
                  "--steps", 6, "--batch-size", 16, "--lr", "3e-3")):
        result = run_cli(*args)
        assert result.code == 0, result.err
    results = json.load(open(tuned / "best" / "finetune.json"))
    assert {"exact_match", "f1", "bleu", "baseline"} <= set(results)
    evaluated = json.loads(run_cli("eval", tuned / "best", "--task", dev, "--json").out)
    generated = [json.loads(run_cli("translate", tuned / "best", "--text", r["input"] if "prefix" not in r else
                                    f"{r['prefix']}: {r['input']}", "--json").out)[0]["text"] for r in rows[48:56]]
    assert evaluated["exact_match"] == pytest.approx(text_metrics(generated, [r["target"] for r in rows[48:56]])
                                                     ["exact_match"])
    assert evaluated["f1"] == pytest.approx(text_metrics(generated, [r["target"] for r in rows[48:56]])["f1"])
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"input": "red dog"}) + "\n")
    failed = run_cli("eval", tuned / "best", "--task", missing)
    assert failed.code != 0 and "line 1 has no 'target'" in failed.err and len(failed.err.strip().splitlines()) == 1


@pytest.mark.parametrize("preset, overrides, suffixed", [("t5-tiny", (), True),
                                                         ("t5-tiny", ("encoder.append_eos=false",), False),
                                                         ("nmt-tiny", (), False), ("seq2seq-tiny", (), False)])
def test_sources_end_with_the_encoders_suffix_everywhere(translation_task, tmp_path, preset, overrides, suffixed):
    """T5's encoder declares </s> after every source (as transformers' tokenizer writes it): parallel text,
    text-to-text examples and generation all append it; the LSTM families declare none and are unchanged."""
    from test_seq2seq import compose_tiny

    from lmkit.model import load_model
    from lmkit.opening import open_model
    from lmkit.parallel import encode_pairs, read_pairs
    from lmkit.seq2seq import source_suffix_ids
    from lmkit.tasks.text_to_text import TextPair, TextPairs, TextToTextKind

    directory = compose_tiny(translation_task, f"{preset}-{len(overrides)}", preset, *overrides)
    model, tokenizer, _ = load_model(directory)
    suffix = [tokenizer.eos_id] if suffixed else []
    assert source_suffix_ids(model.encoder, tokenizer) == suffix
    pairs = read_pairs([translation_task["valid.src"], translation_task["valid.tgt"]])[:4]
    plain = tokenizer.encode_batch([s for s, _ in pairs])
    encoded = encode_pairs(pairs, tokenizer, 64, "test", source_suffix=source_suffix_ids(model.encoder, tokenizer))
    assert [s for s, _ in encoded] == [ids + suffix for ids in plain]
    kind = TextToTextKind("text-to-text", None)
    start = kind.reader(model, tokenizer)
    examples, _ = kind.encode(TextPairs("x", [TextPair(s, t) for s, t in pairs]), tokenizer, 64, start)
    assert [e[0] for e in examples] == [ids + suffix for ids in plain]
    assert open_model(directory, device="cpu").encode_sources([s for s, _ in pairs]) == [ids + suffix for ids in plain]


def test_classification_prefix_is_stored_and_predict_generates_text(tmp_path):
    """Fine-tuned on rte.tsv, the model keeps the prefix "rte" (seq2seq task_prefix): eval --task and predict read
    a dev file of any name with it; predict prints the generated text per line, from the model directory and
    from its export (torch-free runtime), with the metrics when the file is labelled."""
    import subprocess
    import sys

    from conftest import NO_TORCH

    words = "red green blue cat dog sun moon tree".split()
    rows = [(f"the {a} {b}", "yes" if a < b else "no") for a in words for b in words if a != b]
    train, dev = tmp_path / "rte.tsv", tmp_path / "held out.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{s}\t{t}\n" for s, t in rows[:40]))
    dev.write_text("sentence\tlabel\n" + "".join(f"{s}\t{t}\n" for s, t in rows[40:46]))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"rte: {s} {t}\n" for s, t in rows))
    tok, model, tuned = tmp_path / "tok", tmp_path / "t5", tmp_path / "tuned"
    specials = json.dumps(["<pad>", "</s>", "<unk>"])
    for args in (("tokenizer", "train", "--kind", "unigram", "--vocab-size", 60, "--set", f"special_tokens={specials}",
                  "--set", "template=t5", corpus, "--out", tok),
                 ("compose", "t5-tiny", "--set", f"tokenizer={tok}", "--out", model),
                 ("finetune", model, "--task", "text-to-text", "--train", train, "--out", tuned,
                  "--steps", 4, "--batch-size", 16, "--lr", "3e-3")):
        result = run_cli(*args)
        assert result.code == 0, result.err
    objectives = json.load(open(tuned / "config.json"))["spec"]["objectives"]
    assert objectives[0]["task_prefix"] == "rte"
    sources = [f"rte: {s}" for s, _ in rows[40:46]]
    generated = [r["text"] for r in json.loads(run_cli("translate", tuned, *(x for s in sources for x in ("--text", s)),
                                                       "--json").out)]
    predicted = run_cli("predict", tuned, "--data", dev)
    assert predicted.code == 0, predicted.err
    lines = [json.loads(line) for line in predicted.out.splitlines()]
    assert lines == [{"line": i + 2, "text": text} for i, text in enumerate(generated)]
    expected = text_metrics(generated, [t for _, t in rows[40:46]])
    assert f"exact_match {expected['exact_match']:.4f}" in predicted.err
    evaluated = json.loads(run_cli("eval", tuned, "--task", dev, "--json").out)
    assert evaluated["exact_match"] == pytest.approx(expected["exact_match"])
    assert evaluated["f1"] == pytest.approx(expected["f1"])
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({"input": s}) + "\n" for s in sources[:2]))
    result = run_cli("predict", tuned, "--data", unlabelled)
    assert result.code == 0 and [json.loads(x)["text"] for x in result.out.splitlines()] == generated[:2]
    assert "exact_match" not in result.err
    exported = tmp_path / "exp"
    assert run_cli("export", tuned, "--out", exported).code == 0
    # The tied embedding is stored once in the decoder graph: read by its Gather and, transposed, by the head.
    import onnx

    decoder = onnx.load(str(exported / "decoder.onnx")).graph
    shapes = {init.name: tuple(init.dims) for init in decoder.initializer}
    tables = [node.input[0] for node in decoder.node if node.op_type == "Gather" and node.input[0] in shapes]
    embedding = max(tables, key=lambda name: shapes[name][0] * shapes[name][1])  # the others: the relative bias, indices
    vocab, d_model = shapes[embedding]
    assert (d_model, vocab) not in shapes.values()
    assert any(node.op_type == "Transpose" and node.input[0] == embedding for node in decoder.node)
    done = subprocess.run([sys.executable, "-c", NO_TORCH + "from lmkit.cli import main\nmain()\n", "predict",
                           str(exported), "--data", str(dev)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == lines
    from lmkit.tasks.text_to_text import stored_prefix

    assert stored_prefix(str(tuned)) == stored_prefix(str(exported)) == "rte"
    assert read_task(str(dev), prefix="rte").examples[0].source == sources[0]


def test_dev_targets_are_generated_as_predict_and_eval_generate_them(t5_directories, tmp_path):
    """Fine-tuning scores its dev set on the targets the model's own decoding settings give, as `lmkit predict` and
    `lmkit eval --task` do. A trial found the recorded scores apart from theirs: fine-tuning generated at most twice
    the batch's longest gold target, so a model that loops was cut elsewhere (and the length hung on the answers)."""
    import torch

    from lmkit.opening import open_model
    from lmkit.tasks.text_to_text import TextToTextKind, read_task

    opened = open_model(t5_directories[0], device="cpu")  # random weights: its targets run on past any gold one
    task = tmp_path / "dev.jsonl"
    task.write_text("".join(json.dumps({"input": text, "target": "a b"}) + "\n"
                            for text in ("red dog", "the cat sat", "blue", "green tree moon")))
    data = read_task(str(task), True, "")
    kind = TextToTextKind("text-to-text", None)
    start = kind.reader(opened.model, opened.tokenizer)
    encoded, _ = kind.encode(data, opened.tokenizer, 512, start)
    batch = {name: torch.from_numpy(value) for name, value in kind.collate(encoded, 0).items()}
    with torch.no_grad():
        predicted = kind.predict(opened.model, batch)
    alone = opened.generate_ids(opened.encode_sources([e.source for e in data.examples]), opened.decoding())
    assert predicted == [r.tokens for r in alone]
    assert max(map(len, predicted)) > 16  # past the old rule's max(2 x 3 gold tokens, 16)
