"""Every metric lmkit reports equals its reference definition, edge cases included: entity F1 as seqeval
computes it in every tag scheme, SQuAD as the official v1.1 and v2.0 scripts score it, GLUE's metrics
as scikit-learn and scipy define them, the few-shot metrics as lm-eval-harness and GPT-3 define them,
BLEU as sacrebleu does."""
import math
import random
import warnings

import numpy as np
import pytest

from lmkit.errors import LmkitError
from lmkit.tasks import chunks, metrics, qa

# -- entity F1: seqeval --------------------------------------------------------------------------------


def test_iobes_single_token_entities_count():
    gold = [["S-PER", "O", "S-LOC"], ["B-MISC", "E-MISC", "S-MISC"]]
    assert chunks.detect_scheme(["B-MISC", "E-MISC", "O", "S-LOC", "S-MISC", "S-PER"]) == "iobes"
    assert chunks.entities(gold[1], "iobes") == {("MISC", 0, 2), ("MISC", 2, 3)}
    assert chunks.entities(gold[1], "conlleval") == {("MISC", 0, 2), ("MISC", 2, 3)}
    for scheme in ("iobes", "conlleval"):
        assert chunks.entity_f1(gold, gold, scheme)["entity_f1"] == 1.0
    assert chunks.entities(["U-PER", "B-LOC", "L-LOC"], "bilou") == {("PER", 0, 1), ("LOC", 1, 3)}


def test_strict_schemes_reject_what_they_do_not_spell():
    assert chunks.entities(["I-PER", "I-PER"], "iob2") == set()  # no B-: no entity in strict IOB2
    assert chunks.entities(["I-PER", "I-PER"], "conlleval") == {("PER", 0, 2)}
    assert chunks.entities(["I-PER", "I-PER"], "iob1") == {("PER", 0, 2)}
    assert chunks.entities(["B-PER", "I-PER"], "iobes") == set()  # never ended with E-
    with pytest.raises(LmkitError, match="tag 'S-PER' is not a IOB2 tag"):
        chunks.resolve_scheme("iob2", ["O", "S-PER"])
    with pytest.raises(LmkitError, match="mix the prefixes"):
        chunks.detect_scheme(["B-PER", "L-PER", "S-PER"])


@pytest.mark.parametrize("labels, scheme", [
    (["B-PER", "I-PER", "O"], "conlleval"), (["I-PER", "O"], "conlleval"), (["E-PER", "I-PER", "O"], "ioe2"),
    (["S-PER", "O"], "iobes"), (["B-X", "E-X"], "iobes"), (["U-PER", "O"], "bilou"),
    (["NN", "VB", "DT"], "none"), (["O"], "none")])
def test_the_scheme_is_detected_from_the_labels(labels, scheme):
    assert chunks.resolve_scheme("auto", labels) == scheme


SEQEVAL_SCHEMES = {"iob1": "IOB", "iob2": "IOB", "ioe1": "IOE", "ioe2": "IOE", "iobes": "IOBES", "bilou": "BILOU"}


def random_tags(rng, prefixes, n):
    return [p if p == "O" else f"{p}-{rng.choice('XY')}" for p in (rng.choice(prefixes) for _ in range(n))]


@pytest.mark.parametrize("scheme", sorted(SEQEVAL_SCHEMES))
def test_strict_schemes_match_seqeval_on_random_sequences(scheme):
    import seqeval.metrics as seqeval
    import seqeval.scheme as schemes

    rng = random.Random(scheme)
    prefixes = SEQEVAL_SCHEMES[scheme] + "O"
    reference = getattr(schemes, scheme.upper())
    for _ in range(300):
        tags = random_tags(rng, prefixes, rng.randint(0, 9))
        want = {(e.tag, e.start, e.end) for e in schemes.Tokens(tags, reference).entities}
        assert chunks.strict_entities(tags, scheme) == want, tags
    gold = [random_tags(rng, prefixes, rng.randint(1, 9)) for _ in range(200)]
    predicted = [random_tags(rng, prefixes, len(g)) for g in gold]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1 = seqeval.f1_score(gold, predicted, mode="strict", scheme=reference)
    assert chunks.entity_f1(predicted, gold, scheme)["entity_f1"] == pytest.approx(f1)


@pytest.mark.parametrize("prefixes", ["IOB", "BIO", "IOBES", "IOE"])
def test_conlleval_mode_matches_seqeval_default(prefixes):
    import seqeval.metrics as seqeval
    from seqeval.metrics.sequence_labeling import get_entities

    rng = random.Random(prefixes)
    for _ in range(500):
        tags = random_tags(rng, prefixes + "O", rng.randint(0, 9))
        assert chunks.conlleval_entities(tags) == {(t, s, e + 1) for t, s, e in get_entities(tags)}, tags
    gold = [random_tags(rng, prefixes + "O", rng.randint(1, 9)) for _ in range(200)]
    predicted = [random_tags(rng, prefixes + "O", len(g)) for g in gold]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = (seqeval.precision_score(gold, predicted), seqeval.recall_score(gold, predicted),
                seqeval.f1_score(gold, predicted))
    got = chunks.entity_f1(predicted, gold)
    assert (got["entity_precision"], got["entity_recall"], got["entity_f1"]) == pytest.approx(want)


# -- SQuAD: the official scripts ------------------------------------------------------------------------


def question(*answers):
    return qa.Question("q", "?", "c", tuple((a, 0) for a in answers))


def test_gold_answers_that_normalise_to_nothing_are_dropped_in_v2():
    scores = qa.squad_metrics(["the"], [question("the", "fox")])
    assert scores == {"exact_match": 0.0, "f1": 0.0}  # v2.0 scores against ["fox"] only
    scores = qa.squad_metrics(["", "fox"], [question("the", "a"), question("the", "fox")])
    assert scores["exact_match"] == 1.0 and scores["f1"] == 1.0  # none remain: gold is [""]
    # v1.1 keeps every gold answer, and its F1 has no empty-answer rule
    assert qa.squad_metrics(["the"], [question("the", "fox")], "1.1") == {"exact_match": 1.0, "f1": 0.0}


def test_v2_no_answer_rules_and_breakdown():
    questions = [question("Eiffel Tower"), question(), question()]
    scores = qa.squad_metrics(["eiffel tower", "", "Paris"], questions)
    assert scores["exact_match"] == pytest.approx(2 / 3) and scores["f1"] == pytest.approx(2 / 3)
    assert scores["has_answer_exact_match"] == 1.0 and scores["no_answer_f1"] == 0.5
    assert qa.answer_f1("", "") == 1.0 and qa.answer_f1("a", "") == 1.0  # both normalise to nothing
    assert qa.answer_f1("", "", "1.1") == 0.0
    assert qa.normalize_answer("The  Quick, brown-fox!") == "quick brownfox"


def test_the_squad_version_is_read_from_the_file(tmp_path):
    import json

    def squad(qas, version=None):
        path = tmp_path / f"s{len(qas)}{version}.json"
        document = {"data": [{"title": "t", "paragraphs": [{"context": "Paris is in France", "qas": qas}]}]}
        path.write_text(json.dumps({**document, **({"version": version} if version else {})}))
        return qa.read_squad(str(path), require_labels=False)

    answered = {"id": "a", "question": "?", "answers": [{"text": "Paris", "answer_start": 0}]}
    assert squad([answered]).version == "1.1"
    assert squad([answered], "v2.0").version == "2.0"
    data = squad([answered, {"id": "b", "question": "?", "answers": [], "is_impossible": True}])
    assert data.version == "2.0" and all(q.labelled for q in data.examples)
    data = squad([answered, {"id": "c", "question": "?"}])
    assert [q.labelled for q in data.examples] == [True, False]  # unlabelled: predict reports no metrics


# -- GLUE metrics: scikit-learn and scipy -----------------------------------------------------------------


def test_one_class_present():
    same = np.array([1, 1, 1, 1])
    assert metrics.matthews_correlation(same, same) == 0.0  # sklearn: 0 when undefined
    assert metrics.f1(np.zeros(4, int), np.zeros(4, int)) == 0.0  # no positive anywhere: zero_division=0
    assert metrics.f1(same, same) == 1.0
    # a class absent from gold and predictions is not averaged in (sklearn's average="macro")
    assert metrics.macro_f1(np.array([0, 1]), np.array([0, 1]), classes=3) == 1.0


def test_correlations_of_constant_predictions_are_zero():
    gold = np.array([0.5, 1.0, 3.0, 4.0])
    assert metrics.pearson(np.full(4, 2.0), gold) == 0.0 and metrics.spearman(np.full(4, 2.0), gold) == 0.0
    assert metrics.pearson(np.array([1.0]), np.array([2.0])) == 0.0
    assert metrics.pearson(np.array([1.0, 2.0, 4.0], dtype=np.float32), np.array([1.0, 2.0, 4.0])) == 1.0


def test_glue_metrics_match_sklearn_and_scipy():
    import scipy.stats as stats
    import sklearn.metrics as sklearn
    rng = np.random.default_rng(0)
    for _ in range(300):
        k, n = int(rng.integers(2, 5)), int(rng.integers(1, 12))
        predicted, gold = rng.integers(0, k, n), rng.integers(0, k, n)
        assert metrics.macro_f1(predicted, gold, k) == pytest.approx(
            sklearn.f1_score(gold, predicted, average="macro", zero_division=0))
        binary_p, binary_g = predicted % 2, gold % 2
        assert metrics.f1(binary_p, binary_g) == pytest.approx(sklearn.f1_score(binary_g, binary_p, zero_division=0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns of a single label
            mcc = sklearn.matthews_corrcoef(binary_g, binary_p)
        assert metrics.matthews_correlation(binary_p, binary_g) == pytest.approx(mcc)
        x, y = rng.normal(size=n + 2).round(1), rng.normal(size=n + 2).round(1)
        assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
        assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])


# -- few-shot: lm-eval-harness and GPT-3 -------------------------------------------------------------------


class Characters:
    """A tokenizer with one token per character, so token and character counts are plain to see."""

    kind, eos_id, bos_id = "chars", 0, None

    def encode(self, text):
        return [ord(c) for c in text]


def summarize(item_lines, log_likelihoods):
    from lmkit import fewshot

    items = [fewshot.parse_item(line, f"line {i}") for i, line in enumerate(item_lines)]
    prompted = fewshot.build_prompts(items, Characters(), 512)
    scores = [[fewshot.AnswerScore(ll, len(p.answers[a]), p.answer_chars[a], greedy)
               for a, (ll, greedy) in enumerate(lls)] for p, lls in zip(prompted, log_likelihoods)]
    return fewshot.summarize(prompted, scores)


def test_acc_norm_divides_by_the_choice_not_the_delimiter():
    # " over" and " on": the harness divides by len("over") = 4 and len("on") = 2: -4/4 > -2.2/2
    result = summarize(['{"context": "and lazy lazy dog", "choices": ["over", "on"], "label": 0}'],
                       [[(-4.0, False), (-2.2, False)]])
    assert result["accuracy_per_char"] == 1.0  # lm-eval-harness acc_norm
    assert result["accuracy"] == 0.0  # acc: the summed log-likelihood prefers "on"
    assert result["accuracy_per_token"] == 0.0  # GPT-3: per token of " over" (5) and " on" (3): -0.8 < -0.733


def test_multiple_choice_metrics_follow_their_definitions():
    rng = np.random.default_rng(1)
    lines, lls, want = [], [], {"accuracy": 0, "accuracy_per_token": 0, "accuracy_per_char": 0}
    for i in range(50):
        choices = ["".join(rng.choice(list("abc "), size=int(rng.integers(1, 6)))).strip() or "x" for _ in range(3)]
        label = int(rng.integers(0, 3))
        lines.append(f'{{"context": "c{i}", "choices": {choices!r}, "label": {label}}}'.replace("'", '"'))
        values = rng.normal(-5, 2, size=3)
        lls.append([(float(v), False) for v in values])
        for name, norm in (("accuracy", [1] * 3), ("accuracy_per_char", [len(c) for c in choices]),
                           ("accuracy_per_token", [len(c) + 1 for c in choices])):  # " " + choice, a char each
            want[name] += int(np.argmax(values / np.array(norm))) == label
    result = summarize(lines, lls)
    for name, hits in want.items():
        assert result[name] == hits / 50, name


def test_cloze_perplexities():
    result = summarize(['{"context": "a b", "answer": "cd"}', '{"context": "e f", "answer": "g"}'],
                       [[(-3.0, True)], [(-1.0, False)]])
    assert result["accuracy"] == 0.5
    assert result["perplexity"] == pytest.approx(math.exp(4.0 / 5))  # " cd" and " g": 5 answer tokens
    assert result["perplexity_per_answer"] == pytest.approx(math.exp(4.0 / 2))  # the harness's lambada perplexity


# -- BLEU: sacrebleu ---------------------------------------------------------------------------------------


def test_bleu_is_sacrebleus_corpus_bleu_with_its_signature():
    import sacrebleu

    from lmkit.seq2seq import corpus_bleu

    hypotheses = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    references = ["The dog bit the man.", "It was not unexpected.", "The man bit him first."]
    score = corpus_bleu(hypotheses, references)
    assert score.score == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert score.signature == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    assert corpus_bleu(["a b c d"], ["a b c d"]).score == pytest.approx(100.0)
    with pytest.raises(LmkitError, match="2 translations for 1 references"):
        corpus_bleu(["a", "b"], ["a"])


def test_bleu_of_hypotheses_shorter_than_four_tokens_uses_the_orders_they_have():
    # A trial's text-to-text eval printed exact match 100% and BLEU 0.00: three-word answers have no 4-grams.
    import sacrebleu

    from lmkit.seq2seq import corpus_bleu

    exact = corpus_bleu(["sun cat red", "dog moon"], ["sun cat red", "dog moon"])
    assert exact.score == pytest.approx(100.0) and "|eff:yes|" in exact.signature
    partly = corpus_bleu(["sun cat red", "dog moon"], ["sun cat blue", "dog moon"])
    expected = sacrebleu.metrics.BLEU(effective_order=True).corpus_score(["sun cat red", "dog moon"],
                                                                          [["sun cat blue", "dog moon"]])
    assert partly.score == pytest.approx(expected.score) and 0 < partly.score < 100
    # One hypothesis of four tokens is enough for standard BLEU (its unmatched 4-gram smoothed).
    standard = corpus_bleu(["sun cat red tree", "dog"], ["sun cat blue tree", "dog"])
    assert "|eff:no|" in standard.signature and standard.score == pytest.approx(
        sacrebleu.corpus_bleu(["sun cat red tree", "dog"], [["sun cat blue tree", "dog"]]).score)


# -- the task kind reports what chunks and qa compute ---------------------------------------------------


def test_iobes_file_scores_its_single_token_entities(tmp_path):
    """A CoNLL file in IOBES, predicted perfectly: entity F1 1.0, as seqeval says (was 0.0)."""
    from lmkit.tasks.finetune import TaskOptions
    from lmkit.tasks.kinds import task_kind

    path = tmp_path / "iobes.conll"
    path.write_text("Ann S-PER\nmet O\nBo S-PER\nin O\nRome S-LOC\n\nNew B-MISC\nYork E-MISC\nfair S-MISC\n")
    kind = task_kind("token-classification", TaskOptions(kind="token-classification"))
    data = kind.read(str(path))
    assert kind.scheme == "iobes" and kind.head_options(data)["tag_scheme"] == "iobes"
    labels = np.full((2, 7), -100)
    for row, sentence in enumerate(data.examples):
        labels[row, 1:1 + len(sentence.tags)] = sentence.tags
    perfect = np.where(labels == -100, 0, labels)
    result = kind.metrics([perfect], [{"labels": labels}], None, data)
    assert result["entity_f1"] == 1.0 and result["accuracy"] == 1.0
    pos = tmp_path / "pos.conll"
    pos.write_text("the DT\ncat NN\nsat VBD\n")
    kind = task_kind("token-classification", TaskOptions(kind="token-classification"))
    data = kind.read(str(pos))
    labels = np.array([[-100, *data.examples[0].tags]])
    assert kind.metrics([np.where(labels == -100, 0, labels)], [{"labels": labels}], None, data) == {"accuracy": 1.0}


# -- export validation gates only on what it measured ---------------------------------------------------


def test_a_top1_floor_with_nothing_to_measure_is_refused():
    from lmkit.exports.validation import THRESHOLDS, ValidationError, _check

    for precision in ("fp16", "int8"):
        with pytest.raises(ValidationError, match=f"the {precision} export has no output whose top-1 choice"):
            _check({"top1_agreement": None}, [], precision, THRESHOLDS[precision])


def test_a_feature_encoder_is_held_to_its_features_cosine():
    import numpy as np

    from lmkit.exports.validation import THRESHOLDS, ValidationError, _check, _least_cosine

    report = {"top1_agreement": None, "feature_cosine": 0.995, "threshold": {"min_top1_agreement": 0.5}}
    _check(report, [], "int8", THRESHOLDS["int8"])  # no top-1 to take: the features' cosine instead
    assert report["threshold"] == {"min_feature_cosine": 0.99}
    with pytest.raises(ValidationError, match="a cosine of 0.9000 at the worst position, below the 0.99 required"):
        _check({"top1_agreement": None, "feature_cosine": 0.9}, [], "int8", THRESHOLDS["int8"])
    want = np.array([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    got = np.array([[[1.0, 0.1], [1.0, 1.0], [-5.0, 5.0]]])  # the last position is padding: not counted
    assert _least_cosine(want, got, np.array([[1, 1, 0]])) == pytest.approx(2 ** -0.5)
    assert _least_cosine(want, got, None) == pytest.approx(0.0, abs=1e-12)


def test_task_heads_give_top1_choices_for_validation():
    from lmkit.exports.heads import head_choices

    rng = np.random.default_rng(0)
    states, pooled = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 3))
    outputs = {"last_hidden_state": states, "pooler_output": pooled}
    inputs = {"attention_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]])}
    weight, bias = rng.normal(size=(5, 3)), np.zeros(5)
    classify = head_choices({"type": "sequence-head", "task": "classification"}, weight, bias)
    assert (classify(outputs, inputs) == (pooled @ weight.T).argmax(-1)).all()
    tokens = head_choices({"type": "token-head"}, weight, bias)(outputs, inputs)
    assert tokens.shape == (7,)  # real tokens only
    spans = head_choices({"type": "span-head"}, weight[:2], bias[:2])(outputs, inputs)
    assert spans.shape == (4,) and spans[0] < 3 and spans[2] < 3  # start and end of each row, never padding
    assert head_choices({"type": "sequence-head", "task": "regression"}, weight[:1], bias[:1])(outputs, inputs) is None
    choice = head_choices({"type": "sequence-head", "task": "multiple-choice"}, weight[:1], bias[:1])
    assert choice(outputs, inputs).tolist() == [int((pooled @ weight[:1].T)[:, 0].argmax())]
