"""`lmkit finetune` on the BERT family: GLUE-style TSV, regression, multiple choice, CoNLL and SQuAD."""
import json
import random

import pytest

torch = pytest.importorskip("torch")

from test_finetune import conll_sentences  # noqa: E402  (GPT's and BERT's NER tests read the same data)

from lmkit.model import compose, load_model  # noqa: E402
from lmkit.tokenizers import WordPiece, WordPieceOptions  # noqa: E402

GOOD = "sun joy gift smile warm kind bright calm".split()
BAD = "rain pain loss frown cold cruel dark storm".split()
FILLER = "the a of and to in on at with by".split()


def words(rng, mood, n):
    return [rng.choice(FILLER) if rng.random() < 0.3 else rng.choice(mood) for _ in range(n)]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A bert-tiny (MLM + NSP heads) with its WordPiece, as composed: fine-tuning drops the heads.

    Its weights are the initial ones: a few steps of pre-training on this tiny corpus leave [CLS]
    nearly the same for every input (NSP has not learnt yet), from which fine-tuning starts slower
    than from scratch; pre-training itself is tested in test_bert*.py.
    """
    root = tmp_path_factory.mktemp("bert")
    rng = random.Random(0)
    documents = []
    for _ in range(80):
        mood = GOOD if rng.random() < 0.5 else BAD
        documents.append("\n".join(" ".join(words(rng, mood, 6)) for _ in range(4)))
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(documents) + "\n")
    WordPiece.train([str(corpus)], WordPieceOptions(vocab_size=120), progress=False).save(str(root / "tok"))
    model_dir = str(root / "bert")
    compose("bert-tiny", [f"tokenizer={root / 'tok'}", "encoder.vocab_size=120"], model_dir)
    return model_dir


def finetune(run, pretrained, tmp_path, task, train_file, dev_file, *args):
    result = run("finetune", pretrained, "--task", task, "--train", train_file, "--dev", dev_file,
                 "--out", tmp_path / "tuned", "--batch-size", "16", "--lr", "1e-3", "--json", *args)
    assert result.code == 0, result.err
    return json.loads(result.out)


def mood_pair(rng):
    first, second = [rng.choice(GOOD + BAD) for _ in range(3)], [rng.choice(GOOD + BAD) for _ in range(2)]
    return " ".join(first), " ".join(second), sum(w in GOOD for w in first + second)


def test_glue_style_tsv_pairs(run, pretrained, tmp_path):
    rng = random.Random(1)
    for name, n in (("train.tsv", 160), ("dev.tsv", 64)):
        rows = [mood_pair(rng) for _ in range(n)]
        (tmp_path / name).write_text("index\tsentence1\tsentence2\tlabel\n" + "".join(
            f"{i}\t{a}\t{b}\t{'entailment' if good >= 3 else 'not_entailment'}\n" for i, (a, b, good) in enumerate(rows)))
    record = finetune(run, pretrained, tmp_path, "classification", tmp_path / "train.tsv", tmp_path / "dev.tsv",
                      "--epochs", "8", "--warmup-ratio", "0")  # at --lr 1e-3: tuned without the recipe's warmup
    # 4 epochs learnt the pairs with only about half of the seeds (1 and 2 of 0-4 stayed at the majority
    # class, whatever the dropout masks); 8 learn them with each of seeds 0-3 (0.92-0.95).
    assert record["labels"] == ["entailment", "not_entailment"]
    assert record["baseline"]["accuracy"] < record["accuracy"]
    assert record["accuracy"] > 0.75 and record["mcc"] > 0.5, record
    _, _, config = load_model(str(tmp_path / "tuned" / "best"))
    assert [o["type"] for o in config["spec"]["objectives"]] == ["sequence-head"]  # no LM loss for an encoder


def test_regression_reports_pearson_and_spearman(run, pretrained, tmp_path):
    rng = random.Random(2)
    for name, n in (("train.jsonl", 160), ("dev.jsonl", 64)):
        with open(tmp_path / name, "w") as out:
            for a, b, good in (mood_pair(rng) for _ in range(n)):
                out.write(json.dumps({"sentence1": a, "sentence2": b, "label": good / 5 * 4}) + "\n")
    record = finetune(run, pretrained, tmp_path, "regression", tmp_path / "train.jsonl", tmp_path / "dev.jsonl",
                      "--epochs", "8")
    # 4 epochs gave 0.16-0.62 over seeds 0-4, as much a matter of the tokenizer's ids as of the seed; 8 give
    # 0.94-0.97 with each of them.
    assert record["pearson"] > 0.6 and record["spearman"] > 0.6, record  # chance: 0


def test_multiple_choice(run, pretrained, tmp_path):
    rng = random.Random(3)
    for name, n in (("train.jsonl", 128), ("dev.jsonl", 48)):
        with open(tmp_path / name, "w") as out:
            for _ in range(n):
                choices, label = [rng.choice(BAD) for _ in range(3)], rng.randrange(4)
                choices.insert(label, rng.choice(GOOD))
                out.write(json.dumps({"context": "which one is good", "choices": choices, "label": label}) + "\n")
    record = finetune(run, pretrained, tmp_path, "multiple-choice", tmp_path / "train.jsonl", tmp_path / "dev.jsonl",
                      "--epochs", "4")
    assert record["accuracy"] > 0.6, record  # chance: 0.25


def test_conll_named_entities(run, pretrained, tmp_path):
    rng = random.Random(4)
    for name, n in (("train.conll", 128), ("dev.conll", 32)):
        (tmp_path / name).write_text(conll_sentences(rng, n))
    record = finetune(run, pretrained, tmp_path, "token-classification", tmp_path / "train.conll",
                      tmp_path / "dev.conll", "--epochs", "5")
    assert record["entity_f1"] > 0.4 and record["accuracy"] > 0.8, record  # all-O: F1 0, accuracy ~0.6


def squad_file(path, rng, n, impossible_share=0.0):
    """Contexts of filler and bad words with at most one good word: the question asks for it."""
    paragraphs = []
    for i in range(n):
        context_words = [rng.choice(FILLER + BAD) for _ in range(rng.randint(6, 12))]
        qa = {"id": f"q{i}", "question": "which word is good ?"}
        if rng.random() < impossible_share:
            qa.update(answers=[], is_impossible=True)
        else:
            at = rng.randrange(len(context_words))
            context_words[at] = rng.choice(GOOD)
            start = len(" ".join(context_words[:at])) + (1 if at else 0)
            qa["answers"] = [{"text": context_words[at], "answer_start": start}]
        paragraphs.append({"context": " ".join(context_words), "qas": [qa]})
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "moods", "paragraphs": paragraphs}]}))
    return path


def test_squad_question_answering_with_no_answer_questions(run, pretrained, tmp_path):
    rng = random.Random(5)
    train_file = squad_file(tmp_path / "train.json", rng, 160, impossible_share=0.25)
    dev_file = squad_file(tmp_path / "dev.json", rng, 48, impossible_share=0.25)
    record = finetune(run, pretrained, tmp_path, "question-answering", train_file, dev_file, "--epochs", "5")
    assert record["exact_match"] > 0.6 and record["f1"] >= record["exact_match"], record
    _, _, config = load_model(str(tmp_path / "tuned" / "best"))
    assert config["spec"]["objectives"][0] == {"type": "span-head", "weight": 1.0, "recipe": "encoder",
                                               "allow_no_answer": True, "dropout": 0.1}


def test_text_to_text_on_an_encoder_alone_is_refused_in_one_line(run, pretrained, tmp_path):
    # A trial's `finetune runs/bert --task text-to-text` ended in "internal error: AttributeError".
    train = tmp_path / "t2t.jsonl"
    train.write_text(json.dumps({"input": "sun joy", "target": "good"}) + "\n")
    result = run("finetune", pretrained, "--task", "text-to-text", "--train", train, "--out", tmp_path / "out")
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1, result.err
    assert "has no decoder to write with" in result.err and not (tmp_path / "out").exists()
