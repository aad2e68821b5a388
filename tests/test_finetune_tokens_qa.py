"""Token classification (CoNLL, entity-level F1) and extractive QA (SQuAD) for lmkit finetune."""
import json

import pytest

from lmkit.errors import DataError
from lmkit.tasks import chunks, qa, tokens

pytest.importorskip("torch")

def test_entities_follow_conlleval():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "B-ORG", "I-PER"]
    assert chunks.entities(tags) == {("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6), ("ORG", 6, 7), ("PER", 7, 8)}
    scores = chunks.entity_f1([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
    assert scores["entity_f1"] == 0.0  # a span is right only when it matches exactly
    scores = chunks.entity_f1([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "B-ORG"]])
    assert scores["entity_precision"] == 0.5 and scores["entity_recall"] == 0.5


@pytest.mark.parametrize("text, message", [
    ("John NNP B-PER\nsmith NNP\n", "line 2 has 2 columns, the lines before have 3"),
    ("John B-PER\nruns V\n", 'tag "V" is not one of the declared tags'),
])
def test_bad_conll_files_are_named_by_line(tmp_path, text, message):
    path = tmp_path / "bad.conll"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        tokens.read_conll(str(path), labels=("B-PER", "O") if "runs" in text else ())


def test_predicting_names_what_predict_can_do_and_refuses_json(tmp_path):
    # A trial's `lmkit predict TAGGER --data x.conll` was told to declare tags with --labels, which predict lacks;
    # and a .jsonl file was read as CoNLL, its last word a "tag".
    from lmkit.tasks.formats import read_task_file

    path = tmp_path / "dev.conll"
    path.write_text("John B-ORG\nruns O\n")
    with pytest.raises(DataError, match='tag "B-ORG" .*; the model was fine-tuned on those; fix the tag, or leave '
                                        'the tags out to predict alone$'):
        tokens.read_conll(str(path), labels=("B-PER", "O"), require_labels=False)
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text('{"text": "the cat", "label": "neg"}\n')
    with pytest.raises(DataError, match="test.jsonl is JSON; token classification reads CoNLL files"):
        tokens.read_conll(str(jsonl), labels=("B-PER", "O"), require_labels=False)
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\nthe cat\tpositive\n")
    with pytest.raises(DataError, match="the model was fine-tuned on those; fix the label, or leave the labels out"):
        read_task_file(str(tsv), "classification", labels=("neg", "pos"), require_labels=False)
    with pytest.raises(DataError, match=r"declare it \(--labels, or a word for it in --verbalizer\)$"):
        read_task_file(str(tsv), "classification", labels=("neg", "pos"))


def squad(questions, context="The cat sat on the mat in Paris."):
    return {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": questions}]}]}


def test_squad_files_are_checked_against_their_contexts(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad([
        {"id": "q1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 26}]},
        {"id": "q2", "question": "Who flew?", "answers": [], "is_impossible": True},
    ])))
    data = qa.read_squad(str(path))
    assert [q.answers for q in data.examples] == [(("Paris", 26),), ()]
    path.write_text(json.dumps(squad([{"id": "q3", "question": "Where?",
                                       "answers": [{"text": "Paris", "answer_start": 20}]}])))
    with pytest.raises(DataError, match='question q3: answer "Paris" is not at answer_start 20 .* occurs at 26'):
        qa.read_squad(str(path))
    path.write_text(json.dumps(squad([{"id": "q4", "question": "Where?", "answers": []}])))
    with pytest.raises(DataError, match="question q4 has no answers and is not marked"):
        qa.read_squad(str(path))


def test_squad_metrics_follow_the_official_script():
    questions = [qa.Question("1", "q", "c", (("the Eiffel Tower", 0), ("Eiffel Tower", 0))),
                 qa.Question("2", "q", "c", (("in 1889", 0),)),
                 qa.Question("3", "q", "c", ())]
    scores = qa.squad_metrics(["Eiffel tower!", "1889", ""], questions)
    assert scores["exact_match"] == pytest.approx(2 / 3)  # articles, case and punctuation do not count
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)  # "1889" against "in 1889": P 1, R 1/2


def test_answers_map_to_tokens_and_back_to_characters(tmp_path):
    from lmkit.tokenizers import WordPiece, WordPieceOptions

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat in paris where did it sit\n" * 20)
    tokenizer = WordPiece.train([str(corpus)], WordPieceOptions(vocab_size=120), progress=False)
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad([
        {"id": "q1", "question": "Where did it sit?", "answers": [{"text": "on the mat", "answer_start": 12}]},
    ])))
    data = qa.read_squad(str(path))
    (encoded,), cut = qa.encode_questions(data, tokenizer, 64)
    assert cut == 0 and encoded.ids[0] == tokenizer.cls_id
    assert qa.span_text(data.examples[0], encoded, (encoded.start, encoded.end)) == "on the mat"
    # a context cut before the answer trains the question as having none
    (short,), cut = qa.encode_questions(data, tokenizer, 10)
    assert cut == 1 and (short.start, short.end) == (0, 0)


def test_question_answering_needs_an_encoder(run, tiny_gpt2, tmp_path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad([{"id": "q1", "question": "Where?",
                                       "answers": [{"text": "Paris", "answer_start": 26}]}])))
    result = run("finetune", tiny_gpt2, "--task", "question-answering", "--train", path, "--out", tmp_path / "o",
                 "--steps", "1")
    assert result.code == 1 and "needs" not in result.err.split(":")[0] and "encoder (BERT family)" in result.err


def test_a_refused_average_names_each_models_task():
    # A trial's tagger was described as "classification with labels B-LOC, ..." beside a classifier.
    from lmkit.tasks.predict import _describe

    assert _describe({"type": "token-head", "labels": ["B-LOC", "O"]}) == "token-classification with labels B-LOC, O"
    assert _describe({"type": "span-head"}) == "question-answering"
    assert _describe({"type": "sequence-head", "task": "regression"}) == "regression"
    assert _describe({"type": "sequence-head", "labels": ["neg", "pos"]}) == "classification with labels neg, pos"
