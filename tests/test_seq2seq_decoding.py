"""Encoder-decoder decoding: the same strategies over Seq2SeqBackend; LSTM stacks exact under padding."""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmkit.decoding.beam import BeamSearch  # noqa: E402
from lmkit.decoding.common import log_softmax  # noqa: E402
from lmkit.decoding.greedy import Greedy  # noqa: E402
from lmkit.decoding.options import BeamSearchOptions, GreedyOptions, SamplingOptions  # noqa: E402
from lmkit.decoding.sampling import Sampling  # noqa: E402
from lmkit.decoding.seq2seq_backend import Seq2SeqBackend  # noqa: E402
from lmkit.model import build_model  # noqa: E402
from lmkit.nn.lstm import LSTMStack, reverse_padded  # noqa: E402
from lmkit.registry import get_host  # noqa: E402
from lmkit.spec import apply_overrides, load_source, resolve  # noqa: E402

BOS, EOS = 1, 2
SOURCES = [[5, 9, 3, 7, 11], [4, 8], [6, 6, 10, 3, 5, 9, 12, 4], [13]]  # different lengths: padding


def tiny_model(preset: str, *overrides: str, vocab: int = 16, scale: float = 0.6):
    """A random model of `preset` whose weights are large enough for peaked distributions (no near-ties)."""
    host = get_host()
    spec = resolve(apply_overrides(load_source(preset, host), [f"encoder.vocab_size={vocab}",
                                                                f"decoder.vocab_size={vocab}", *overrides]), host)
    model = build_model(spec, seed=0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(-scale, scale)
    return model.eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny recurrent models run step by step: on a shared 2-core machine one thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MODELS = {
    "seq2seq": ("seq2seq-tiny",),
    "nmt-general": ("nmt-tiny",),
    "nmt-additive": ("nmt-tiny", "decoder.attention=additive"),
    "nmt-dot-no-feeding": ("nmt-tiny", "decoder.attention=dot", "decoder.input_feeding=false"),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return tiny_model(*MODELS[request.param])


def generate(model, strategy, sources):
    backend = Seq2SeqBackend(model, "cpu")
    backend.set_sources(sources)
    return strategy.generate(backend, [[BOS]] * len(sources), eos_id=EOS, pad_id=0)


def test_lstm_stack_gives_each_row_the_states_it_has_alone():
    torch.manual_seed(0)
    stack = LSTMStack(6, 5, 2, bidirectional=True).eval()
    lengths = torch.tensor([4, 2, 3])
    x = torch.randn(3, 4, 6)
    outputs, (h, c) = stack(x, lengths)
    assert outputs.shape == (3, 4, 10) and h.shape == (2, 3, 10)
    for row, length in enumerate(lengths.tolist()):
        alone, (h1, c1) = stack(x[row:row + 1, :length])
        torch.testing.assert_close(outputs[row, :length], alone[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(h[:, row], h1[:, 0], atol=1e-6, rtol=0)
        torch.testing.assert_close(c[:, row], c1[:, 0], atol=1e-6, rtol=0)
        assert not outputs[row, length:].any()


def test_lstm_step_equals_the_sequence_run():
    torch.manual_seed(0)
    stack = LSTMStack(4, 6, 3).eval()
    x = torch.randn(2, 5, 4)
    outputs, (h, c) = stack(x)
    state = (torch.zeros(3, 2, 6), torch.zeros(3, 2, 6))
    for t in range(5):
        out, state = stack.step(x[:, t], state)
        torch.testing.assert_close(out, outputs[:, t], atol=1e-6, rtol=0)
    torch.testing.assert_close(state[0], h, atol=1e-6, rtol=0)


def test_reverse_padded_reverses_the_real_tokens_only():
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    assert reverse_padded(ids, torch.tensor([3, 2])).tolist() == [[3, 2, 1, 0], [5, 4, 0, 0]]


def test_beam_width_1_equals_greedy(model):
    greedy = generate(model, Greedy(GreedyOptions(max_new_tokens=12)), SOURCES)
    beam = generate(model, BeamSearch(BeamSearchOptions(max_new_tokens=12, num_beams=1, length_penalty=0.0)),
                    SOURCES)
    assert [g.tokens for g in greedy] == [b.tokens for b in beam]
    assert any(len(g.tokens) > 1 for g in greedy)
    for g, b in zip(greedy, beam):
        assert g.score == pytest.approx(b.score, abs=1e-4)


def test_batched_equals_one_by_one(model):
    for strategy in (Greedy(GreedyOptions(max_new_tokens=10)),
                     BeamSearch(BeamSearchOptions(max_new_tokens=10, num_beams=3)),
                     Sampling(SamplingOptions(max_new_tokens=10, seed=3, top_k=5))):
        batched = generate(model, strategy, SOURCES)
        if isinstance(strategy, Sampling):  # a seeded sampler draws per batch: compare one row with itself
            again = generate(model, strategy, SOURCES)
            assert [r.tokens for r in batched] == [r.tokens for r in again]
            continue
        alone = [generate(model, strategy, [source])[0] for source in SOURCES]
        assert [r.tokens for r in batched] == [r.tokens for r in alone]
        for a, b in zip(batched, alone):
            assert a.score == pytest.approx(b.score, abs=1e-4)


def exhaustive_best(model, source, vocab, steps):
    """The most likely hypothesis (sum of log-probs), enumerating every token sequence up to `steps`."""
    best = (-np.inf, None)
    encoder_in = torch.tensor([source])
    with torch.no_grad():
        encoded = model.encoder(encoder_in, torch.ones_like(encoder_in, dtype=torch.bool))
        for length in range(1, steps + 1):
            for tail in itertools.product(range(vocab), repeat=length):
                if EOS in tail[:-1]:
                    continue  # a hypothesis ends at its first eos
                if length < steps and tail[-1] != EOS:
                    continue  # shorter ones must end with eos; those of full length may not
                tokens = torch.tensor([[BOS, *tail[:-1]]])
                logits, _ = model.decoder(tokens, model.decoder.start(encoded))
                log_probs = log_softmax(logits[0].numpy())
                score = float(log_probs[np.arange(length), list(tail)].sum())
                if score > best[0]:
                    best = (score, list(tail))
    return best


def test_beam_search_finds_the_exhaustive_optimum():
    vocab, steps = 5, 3
    model = tiny_model("nmt-tiny", vocab=vocab, scale=0.9)
    # Enough beams to keep every prefix: beam search is then exact, and with length_penalty 0 it
    # ranks by the summed log-probability the exhaustive search maximises.
    beam = BeamSearch(BeamSearchOptions(max_new_tokens=steps, num_beams=vocab ** 2, length_penalty=0.0))
    for source in ([3, 4, 3], [4]):
        score, tokens = exhaustive_best(model, source, vocab, steps)
        result = generate(model, beam, [source])[0]
        expected = tokens[:-1] if tokens[-1] == EOS else tokens
        assert result.tokens == expected
        assert result.score == pytest.approx(score, abs=1e-4)


def test_reordering_rows_keeps_each_beam_state():
    model = tiny_model("nmt-tiny")
    backend = Seq2SeqBackend(model, "cpu")
    backend.set_sources(SOURCES[:2])
    first = backend.prefill(np.array([[BOS], [BOS]]), np.ones((2, 1), dtype=bool))
    swapped = backend.step(np.array([3, 3, 4]), rows=np.array([1, 0, 1]))
    backend.set_sources(SOURCES[1:2])
    backend.prefill(np.array([[BOS]]), np.ones((1, 1), dtype=bool))
    alone = backend.step(np.array([3]))
    np.testing.assert_allclose(swapped[0], alone[0], atol=1e-5)
    assert first.shape == (2, 16)
