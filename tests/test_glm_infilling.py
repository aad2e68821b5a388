"""The mechanics of GLM's infilling-against-left-to-right comparison (benchmarks/glm_infilling.py): both models
score exactly the blanked tokens; GLM reads the text after a blank, the left-to-right model does not; each
score agrees with lmkit's own scorers where they meet (a whole text as one blank, the whole text read left to
right)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmkit.evaluation import score_tokens  # noqa: E402
from lmkit.plugins.glm.config import BlankInfillingOptions, GLMConfig  # noqa: E402
from lmkit.plugins.glm.data import build_sample  # noqa: E402
from lmkit.plugins.glm.evaluation import (  # noqa: E402
    blank_samples,
    infilling_nll,
    left_to_right_nll,
    score_spans,
)
from lmkit.plugins.glm.model import GLMDecoder  # noqa: E402

IDS = {"[MASK]": 100, "[sMASK]": 101, "[gMASK]": 102, "[S]": 103, "[E]": 104}
BOS = 105


def tiny(seed: int) -> GLMDecoder:
    torch.manual_seed(seed)
    return GLMDecoder(GLMConfig(vocab_size=128, max_positions=64, d_model=32, n_layers=2, n_heads=4,
                                dropout=0.0)).eval()


def texts_of(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 90, size=int(rng.integers(20, 40))).tolist() for _ in range(n)]


def test_both_models_score_exactly_the_blanked_tokens():
    texts = texts_of(12) + [[1, 2, 3, 4, 5]]  # the last too short for a blank (15% of 5 tokens is none)
    samples = blank_samples(texts, IDS, BlankInfillingOptions(document_weight=1.0, sentence_weight=1.0), seed=3)
    again = blank_samples(texts, IDS, BlankInfillingOptions(), seed=3)
    for text, sample, same in zip(texts, samples, again):
        assert sample.spans == same.spans  # the seed decides the blanks, whatever mixture the model trained on
        assert set(sample.input_ids.tolist()) & {IDS["[sMASK]"], IDS["[gMASK]"]} == set()  # token-level only
        # Part B's targets without the [E]s are the blanked tokens, span by span in Part B's order
        scored = sample.labels[(sample.labels != -100) & (sample.labels != IDS["[E]"])].tolist()
        assert scored == [t for a, b in sample.spans for t in text[a:b]]
        assert sum(b - a for a, b in sample.spans) >= int(0.15 * len(text))
    glm_count = infilling_nll(tiny(0), samples, IDS["[E]"])[1]
    lm_count = left_to_right_nll(tiny(1), texts, samples, BOS)[1]
    assert glm_count == lm_count == sum(b - a for s in samples for a, b in s.spans)


def test_glm_reads_the_text_after_a_blank_and_the_left_to_right_model_does_not():
    text = texts_of(1, seed=5)[0]
    sample = build_sample(np.array(text), [(4, 7)], [IDS["[MASK]"]], IDS["[S]"], IDS["[E]"])
    edited = list(text)
    edited[10] = (text[10] + 1) % 90  # a token after the blank
    edited_sample = build_sample(np.array(edited), [(4, 7)], [IDS["[MASK]"]], IDS["[S]"], IDS["[E]"])
    glm, lm = tiny(0), tiny(1)
    assert infilling_nll(glm, [sample], IDS["[E]"])[0] != pytest.approx(infilling_nll(glm, [edited_sample],
                                                                                      IDS["[E]"])[0], abs=1e-6)
    assert left_to_right_nll(lm, [text], [sample], BOS)[0] == pytest.approx(
        left_to_right_nll(lm, [edited], [edited_sample], BOS)[0], abs=1e-6)


def test_a_whole_text_blanked_is_a_gmask_span_and_read_left_to_right_is_eval():
    texts, decoder = texts_of(3, seed=7), tiny(2)
    # One blank over all of a text: Part A is its mask alone, the same input as a [gMASK] span after no context.
    whole = [build_sample(np.array(t), [(0, len(t))], [IDS["[gMASK]"]], IDS["[S]"], IDS["[E]"]) for t in texts]
    nll, count = infilling_nll(decoder, whole, IDS["[E]"])
    expected, expected_count = score_spans(decoder, [([], t, False) for t in texts], IDS)
    assert count == expected_count and nll == pytest.approx(expected, rel=1e-5)
    # Every token of a text blanked, read left to right: lmkit eval's NLL of the text after its start token.
    every = [SimpleNamespace(spans=[(0, len(t))]) for t in texts]
    nll, count = left_to_right_nll(decoder, texts, every, BOS)
    reference = sum(score_tokens(decoder, np.array([BOS, *t]), context=64, stride=32).nll for t in texts)
    assert count == sum(map(len, texts)) and nll == pytest.approx(reference, rel=1e-5)
    assert math.isfinite(nll)
