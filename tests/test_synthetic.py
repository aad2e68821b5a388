"""The known-entropy source and the sliding-window scorer, checked against exact computations."""
import math

import numpy as np
import pytest
import torch

from lmkit.evaluation import score_tokens, windows
from lmkit.synthetic import MarkovSource


def test_the_entropy_rate_matches_the_empirical_log_loss():
    source = MarkovSource.random(n_words=20, branching=3, mean_length=15, seed=3)
    documents = source.sample(4000, seed=1)
    symbols = sum(len(d) + 1 for d in documents)  # words and one end per document
    empirical = sum(source.nll(d) for d in documents) / symbols
    assert empirical == pytest.approx(source.entropy_rate(), rel=0.02)


def test_nll_is_the_log_probability_of_the_path():
    source = MarkovSource.random(n_words=5, branching=5, mean_length=4, seed=0)
    document = [0, 3, 1]
    expected = (source.start[0] * source.transitions[0, 3] * source.transitions[3, 1]
                * source.transitions[1, source.n_words])
    assert source.nll(document) == pytest.approx(-math.log(expected))


def test_documents_round_trip_through_json():
    source = MarkovSource.random(seed=5)
    again = MarkovSource.from_json(source.to_json())
    assert again.words == source.words and np.allclose(again.transitions, source.transitions)
    assert source.sample(3, seed=9) == again.sample(3, seed=9)


@pytest.mark.parametrize("n, context, stride", [(10, 4, 2), (10, 4, 4), (3, 8, 4), (101, 16, 5), (2, 2, 1)])
def test_windows_score_every_token_once_with_full_windows(n, context, stride):
    spans = windows(n, context, stride)
    scored = [t for begin, end, first in spans for t in range(first, end)]
    assert scored == list(range(1, n))
    assert all(end - begin == min(context, n) for begin, end, _ in spans)


class Bigram(torch.nn.Module):
    """A model whose log-likelihood is easy to compute by hand: it looks at one token back."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = torch.nn.Embedding(vocab, vocab)

    def forward(self, ids):
        return self.table(ids)


def test_sliding_window_score_equals_the_direct_sum():
    torch.manual_seed(0)
    model = Bigram(7)
    tokens = np.random.default_rng(0).integers(0, 7, size=53)
    log_probs = torch.log_softmax(model.table.weight, -1)
    direct = -sum(log_probs[a, b].item() for a, b in zip(tokens[:-1], tokens[1:]))
    for context, stride in [(8, 3), (53, 53), (10, 10)]:
        score = score_tokens(model, tokens, context=context, stride=stride, batch_size=3)
        assert score.tokens == 52 and score.nll == pytest.approx(direct, rel=1e-5)
