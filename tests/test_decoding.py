"""Decoding strategies over backends: greedy, beam search and sampling, cache, padding, limits."""
import itertools
import logging
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmkit.decoding.beam import BeamSearch  # noqa: E402
from lmkit.decoding.common import PromptError, ban_repeated_ngrams, fit_prompts  # noqa: E402
from lmkit.decoding.greedy import Greedy  # noqa: E402
from lmkit.decoding.options import BeamSearchOptions, GreedyOptions, SamplingOptions  # noqa: E402
from lmkit.decoding.sampling import Sampling, keep_top_k, keep_top_p  # noqa: E402
from lmkit.decoding.torch_backend import TorchBackend  # noqa: E402
from lmkit.errors import SpecError  # noqa: E402
from lmkit.options import build_options  # noqa: E402
from lmkit.plugins.gpt.config import GPT2Config  # noqa: E402
from lmkit.plugins.gpt.model import GPT2Decoder  # noqa: E402

PROMPTS = [[5, 17, 3, 40, 22], [9, 1, 33, 12, 7, 28, 45, 2, 19], [11, 4]]  # different lengths: left padding


def tiny_decoder(vocab_size=50, max_positions=32, seed=0) -> GPT2Decoder:
    """A random GPT-2 with weights large enough for peaked next-token distributions (no near-ties)."""
    torch.manual_seed(seed)
    model = GPT2Decoder(GPT2Config(vocab_size=vocab_size, max_positions=max_positions, d_model=32, n_layers=2, n_heads=4))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def decoder():
    return tiny_decoder()


class FullSequenceBackend:
    """The reference: no cache, the whole sequence through the decoder at every step."""

    def __init__(self, decoder):
        self.decoder = decoder
        self.max_length = decoder.max_positions

    def prefill(self, input_ids, attention_mask):
        self.ids, self.mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        return self._last_logits()

    def step(self, tokens, rows=None):
        if rows is not None:
            self.ids, self.mask = self.ids[torch.from_numpy(rows)], self.mask[torch.from_numpy(rows)]
        self.ids = torch.cat([self.ids, torch.from_numpy(tokens)[:, None]], dim=1)
        self.mask = torch.cat([self.mask, torch.ones(len(tokens), 1, dtype=torch.bool)], dim=1)
        return self._last_logits()

    @torch.no_grad()
    def _last_logits(self):
        positions = (self.mask.cumsum(1) - 1).clamp(min=0)
        return self.decoder(self.ids, attention_mask=self.mask, position_ids=positions)[:, -1].numpy().copy()


class Recording:
    """A backend that keeps a copy of every logits array it returns, and counts the rows it computed."""

    def __init__(self, backend):
        self.backend = backend
        self.max_length = backend.max_length
        self.logits = []

    def prefill(self, input_ids, attention_mask):
        return self._keep(self.backend.prefill(input_ids, attention_mask))

    def step(self, tokens, rows=None):
        return self._keep(self.backend.step(tokens, rows))

    def _keep(self, logits):
        assert logits.dtype == np.float32
        self.logits.append(logits.copy())
        return logits


def generate(strategy, decoder, prompts=PROMPTS, eos_id=None, **kwargs):
    backend = TorchBackend(decoder, strategy.options.max_new_tokens)
    return strategy.generate(backend, prompts, eos_id=eos_id, pad_id=0, **kwargs)


def tokens(results):
    return [r.tokens for r in results]


def test_beam_width_one_is_greedy(decoder):
    greedy = generate(Greedy(GreedyOptions(max_new_tokens=12)), decoder)
    beam = generate(BeamSearch(BeamSearchOptions(max_new_tokens=12, num_beams=1)), decoder)
    assert tokens(beam) == tokens(greedy)
    for g, b in zip(greedy, beam):
        assert b.score == pytest.approx(g.score, abs=1e-4)
        assert b.normalized_score == pytest.approx(g.score / 12, abs=1e-4)  # length_penalty 1


@torch.no_grad()
def test_beam_search_finds_the_exhaustive_best():
    # 6 tokens, 3 steps: 216 continuations. 36 beams keep every 2-token prefix, so beam search is exact,
    # and its n-best list is the true ranking.
    model = tiny_decoder(vocab_size=6, max_positions=16, seed=3)
    prompt = [1, 4, 2]
    continuations = torch.tensor(list(itertools.product(range(6), repeat=3)))  # (216, 3)
    ids = torch.cat([torch.tensor(prompt).expand(len(continuations), -1), continuations], dim=1)
    log_probs = torch.log_softmax(model(ids)[:, len(prompt) - 1:-1], dim=-1)  # (216, 3, 6)
    totals = log_probs.gather(2, continuations[:, :, None])[:, :, 0].sum(1)
    ranking = totals.argsort(descending=True)

    options = BeamSearchOptions(max_new_tokens=3, num_beams=36, length_penalty=0.0, num_return_sequences=5)
    result = generate(BeamSearch(options), model, [prompt])[0]
    found = [result] + result.alternatives
    assert [g.tokens for g in found] == continuations[ranking[:5]].tolist()
    assert [g.score for g in found] == pytest.approx(totals[ranking[:5]].tolist(), abs=1e-4)
    assert all(g.finish_reason == "length" for g in found)

    narrow = generate(BeamSearch(BeamSearchOptions(max_new_tokens=3, num_beams=2, length_penalty=0.0)), model, [prompt])
    assert narrow[0].score <= result.score + 1e-6


@pytest.mark.parametrize("strategy", [Greedy(GreedyOptions(max_new_tokens=10)),
                                      BeamSearch(BeamSearchOptions(max_new_tokens=10, num_beams=3))],
                         ids=["greedy", "beam"])
def test_cache_gives_the_tokens_and_logits_of_full_recomputation(decoder, strategy):
    cached = Recording(TorchBackend(decoder, 10))
    reference = Recording(FullSequenceBackend(decoder))
    eos = 7
    with_cache = strategy.generate(cached, PROMPTS, eos_id=eos, pad_id=0)
    without = strategy.generate(reference, PROMPTS, eos_id=eos, pad_id=0)
    assert tokens(with_cache) == tokens(without)
    assert len(cached.logits) == len(reference.logits) > 1
    for ours, theirs in zip(cached.logits, reference.logits):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", [Greedy(GreedyOptions(max_new_tokens=8)),
                                      BeamSearch(BeamSearchOptions(max_new_tokens=8, num_beams=4,
                                                                   num_return_sequences=2))],
                         ids=["greedy", "beam"])
def test_a_padded_batch_equals_prompts_one_by_one(decoder, strategy):
    eos = 7
    batched = generate(strategy, decoder, eos_id=eos)
    alone = [generate(strategy, decoder, [prompt], eos_id=eos)[0] for prompt in PROMPTS]
    assert tokens(batched) == tokens(alone)
    for b, a in zip(batched, alone):
        assert [x.tokens for x in b.alternatives] == [x.tokens for x in a.alternatives]
        assert b.score == pytest.approx(a.score, abs=1e-4)


def test_finished_rows_leave_the_batch(decoder):
    plain = tokens(generate(Greedy(GreedyOptions(max_new_tokens=10)), decoder))
    # An eos that ends the third prompt at step `end` and neither of the others before it.
    end, eos = next((i, token) for i, token in enumerate(plain[2])
                    if token not in plain[2][:i] + plain[0][:i + 1] + plain[1][:i + 1])
    recorded = Recording(TorchBackend(decoder, 10))
    results = Greedy(GreedyOptions(max_new_tokens=10)).generate(recorded, PROMPTS, eos_id=eos, pad_id=0)
    assert results[2].finish_reason == "eos" and results[2].tokens == plain[2][:end]
    assert [len(logits) for logits in recorded.logits][:end + 2] == [3] * (end + 1) + [2]


def test_seeded_sampling_repeats_and_seeds_differ(decoder):
    def sample(seed):
        return tokens(generate(Sampling(SamplingOptions(max_new_tokens=15, seed=seed, temperature=1.5)), decoder))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_top_k_one_sampling_is_greedy(decoder):
    greedy = generate(Greedy(GreedyOptions(max_new_tokens=10)), decoder)
    sampled = generate(Sampling(SamplingOptions(max_new_tokens=10, top_k=1, seed=0)), decoder)
    assert tokens(sampled) == tokens(greedy)


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    probs = np.array([[0.1, 0.5, 0.15, 0.25], [0.25, 0.25, 0.25, 0.25]], dtype=np.float32)
    kept = lambda p: (keep_top_p(probs, p) > 0).tolist()  # noqa: E731
    assert kept(0.4) == [[False, True, False, False], [True, True, False, False]]
    assert kept(0.6) == [[False, True, False, True], [True, True, True, False]]
    assert kept(0.75) == [[False, True, False, True], [True, True, True, False]]  # 0.5 + 0.25 reaches 0.75
    assert kept(0.8) == [[False, True, True, True], [True, True, True, True]]
    assert kept(1.0) == [[True, True, True, True], [True, True, True, True]]


def test_top_k_keeps_the_k_largest():
    logits = np.array([[1.0, 4.0, 3.0, 2.0]], dtype=np.float32)
    assert np.isfinite(keep_top_k(logits, 2)).tolist() == [[False, True, True, False]]
    assert np.isfinite(keep_top_k(logits, 9)).all()


def test_sampling_follows_the_distribution():
    sampling = Sampling(SamplingOptions(temperature=1.0))
    logits = np.log(np.array([[0.2, 0.7, 0.1]], dtype=np.float32)).repeat(20000, axis=0)
    counts = np.bincount(sampling.choose(logits, np.random.default_rng(0).random(20000)), minlength=3) / 20000
    np.testing.assert_allclose(counts, [0.2, 0.7, 0.1], atol=0.015)


def test_eos_ends_a_row_without_the_eos_token(decoder):
    plain = generate(Greedy(GreedyOptions(max_new_tokens=10)), decoder)[0]
    eos = plain.tokens[3]
    cut = generate(Greedy(GreedyOptions(max_new_tokens=10)), decoder, eos_id=eos)[0]
    assert cut.finish_reason == "eos"
    assert cut.tokens == plain.tokens[:plain.tokens.index(eos)]
    assert plain.finish_reason == "length" and len(plain.tokens) == 10


PIECES = {0: "<eos>", 1: "\n", 2: "\n\n", 3: " what", 4: "wh", 5: "at", 6: " the", 7: "?", 8: "Q"}


def _decode(ids):
    return "".join(PIECES[i] for i in ids)


def test_stop_texts_match_the_text_whatever_tokens_write_it():
    from lmkit.decoding.common import StopTexts, partial_stop_length, stop_lengths

    stop = StopTexts(("\n\n", "what"), _decode, ((2,), (4, 5)))
    generated = np.array([[6, 1, 1],    # "\n\n" as two "\n": both go
                          [6, 6, 2],    # as its own token
                          [6, 6, 3],    # "what" inside " what": the token goes, its space with it
                          [6, 4, 5],    # "what" as its own tokens
                          [6, 7, 1]])   # no stop yet
    assert stop_lengths(generated, stop).tolist() == [2, 1, 1, 2, 0]
    # what the stop's tokens write before it stays in the text: the space of " what"
    assert [stop.text_before(row, cut) for row, cut in zip(generated, [2, 1, 1, 2])] == ["", "", " ", ""]
    # the first byte of a character decodes to U+FFFD until the rest comes: no stop matches it meanwhile
    halves = {1: b"\xc3", 2: b"\xa9", 3: b"x"}
    replacement = StopTexts(("\ufffd",), lambda ids: b"".join(halves[i] for i in ids).decode("utf-8", "replace"))
    assert stop_lengths(np.array([[3, 1]]), replacement).tolist() == [0]  # "x" and half of "é"
    assert stop_lengths(np.array([[1, 3]]), replacement).tolist() == [2]  # a byte that is no character: a real one
    # streaming holds back what could begin a stop: "\n" (of "\n\n"), "wh" (of "what"), nothing after "?"
    assert [partial_stop_length(np.array(tokens), stop) for tokens in ([6, 1], [6, 4], [6, 7], [6, 8])] == [1, 1, 0, 0]
    special = StopTexts(("<eos>",), _decode, ((0,),))
    assert stop_lengths(np.array([[6, 0]]), special).tolist() == [1]
    long = np.array([[6, 7] * 100 + [1, 1], [6, 7] * 100 + [6, 3]])  # only the last tokens' text is read
    assert stop_lengths(long, stop).tolist() == [2, 1]
    assert partial_stop_length(long[0, :-1], stop) == 1


@pytest.mark.parametrize("strategy", [Greedy(GreedyOptions(max_new_tokens=10)),
                                      BeamSearch(BeamSearchOptions(max_new_tokens=10, num_beams=2))], ids=["greedy", "beam"])
def test_stop_texts_end_a_generation_where_its_tokens_would_not(decoder, strategy):
    from lmkit.decoding.common import StopTexts

    plain = generate(strategy, decoder)
    tokens = plain[1].tokens
    text_of = {t: f"<{t:02d}>" for t in range(64)}  # every token its own text, so a stop can begin mid-token
    decode = lambda ids: "".join(text_of[i] for i in ids)  # noqa: E731
    stop = StopTexts((f"{tokens[5]:02d}>",), decode)  # the end of the sixth token's text: no token sequence writes it
    results = generate(strategy, decoder, stop=stop)
    first = tokens.index(tokens[5])
    assert results[1].finish_reason == "stop" and results[1].tokens == tokens[:first]
    # the text is cut at the stop, as OpenAI's API cuts it: the token's "<" before it stays (Generation.tail)
    assert results[1].tail == "<"
    assert results[1].to_dict(decode)["text"] == decode(tokens).split(stop.texts[0])[0]


@pytest.mark.parametrize("strategy", [Greedy(GreedyOptions(max_new_tokens=10)),
                                      Sampling(SamplingOptions(max_new_tokens=10, seed=4)),
                                      BeamSearch(BeamSearchOptions(max_new_tokens=10, num_beams=1))],
                         ids=["greedy", "sample", "beam"])
def test_stop_sequences_stop_and_are_left_out(decoder, strategy):
    plain = generate(strategy, decoder)
    stop = plain[1].tokens[4:6]
    results = generate(strategy, decoder, stop=[[49, 48, 47], stop])
    first = next(i for i in range(len(plain[1].tokens)) if plain[1].tokens[i:i + 2] == stop)
    assert results[1].finish_reason == "stop"
    assert results[1].tokens == plain[1].tokens[:first]


@pytest.mark.parametrize("strategy", [Greedy(GreedyOptions(max_new_tokens=10)),
                                      Sampling(SamplingOptions(max_new_tokens=10, seed=4)),
                                      BeamSearch(BeamSearchOptions(max_new_tokens=10))],
                         ids=["greedy", "sample", "beam"])
def test_streaming_sees_the_tokens_of_the_result(decoder, strategy):
    plain = generate(strategy, decoder)
    stop = [plain[0].tokens[5:8], plain[2].tokens[2:4]]
    seen = {i: [] for i in range(len(PROMPTS))}
    results = generate(strategy, decoder, eos_id=plain[1].tokens[6], stop=stop,
                       on_token=lambda row, token: seen[row].append(token))
    assert [seen[i] for i in range(len(PROMPTS))] == tokens(results)
    if isinstance(strategy, Greedy):  # the others draw or search differently once a row has ended
        assert {r.finish_reason for r in results} == {"eos", "stop"}


def test_too_long_prompt_is_a_clear_error_and_truncation_keeps_the_end(decoder, caplog):
    greedy = Greedy(GreedyOptions(max_new_tokens=10))
    long_prompt = list(range(1, 41))  # 40 tokens, context 32
    with pytest.raises(PromptError, match=r"^the prompt has 40 tokens but the model reads at most 32; "
                                          r"shorten it or pass --truncate to keep its last 23$"):
        generate(greedy, decoder, [long_prompt])

    with caplog.at_level(logging.WARNING, logger="lmkit.decoding"):
        fitted = fit_prompts([long_prompt, [1, 2]], 32, 10, truncate=True)
    assert fitted == [long_prompt[-23:], [1, 2]]
    assert "kept the last 23 of the 40 tokens of prompt 1" in caplog.text
    result = generate(greedy, decoder, fitted)[0]
    assert len(result.tokens) == 10 and result.tokens == generate(greedy, decoder, [long_prompt[-23:]])[0].tokens


def test_prompt_and_new_tokens_beyond_the_context_stop_at_the_context(decoder, caplog):
    with caplog.at_level(logging.WARNING, logger="lmkit.decoding"):
        for strategy in (Greedy(GreedyOptions(max_new_tokens=10)), BeamSearch(BeamSearchOptions(max_new_tokens=10))):
            result = generate(strategy, decoder, [list(range(1, 31))])[0]  # 30 + 3 - 1 = 32 positions
            assert len(result.tokens) == 3 and result.finish_reason == "length"
    assert "only 3 of the 10 new tokens fit the model's context of 32" in caplog.text
    with pytest.raises(PromptError, match="has no tokens"):
        generate(Greedy(), decoder, [[1], []])


def test_ban_repeated_ngrams():
    history = np.array([[1, 2, 3, 1, 2], [-1, -1, 4, 4, 4]])
    scores = np.zeros((2, 6), dtype=np.float32)
    ban_repeated_ngrams(scores, history, 3)
    assert np.isinf(scores).tolist() == [[False, False, False, True, False, False],  # 1 2 -> 3 was seen
                                         [False, False, False, False, True, False]]  # 4 4 -> 4 was seen
    scores = np.zeros((2, 6), dtype=np.float32)
    ban_repeated_ngrams(scores, history, 1)  # padding (-1) never bans the last token of the vocabulary
    assert np.isinf(scores).tolist() == [[False, True, True, True, False, False],
                                         [False, False, False, False, True, False]]


@pytest.mark.parametrize("strategy", [Greedy(GreedyOptions(max_new_tokens=20, no_repeat_ngram_size=2)),
                                      BeamSearch(BeamSearchOptions(max_new_tokens=20, no_repeat_ngram_size=2))],
                         ids=["greedy", "beam"])
def test_no_repeat_ngram_size_blocks_repeats(strategy):
    model = tiny_decoder(vocab_size=12, seed=1)
    prompts = [[3, 5, 3], [7]]
    repeats = lambda seq: len(set(zip(seq, seq[1:]))) < len(seq) - 1  # noqa: E731
    plain = generate(type(strategy)(type(strategy.options)(max_new_tokens=20)), model, prompts)
    assert any(repeats(p + r.tokens) for p, r in zip(prompts, plain))  # the tiny model loops without it
    for prompt, result in zip(prompts, generate(strategy, model, prompts)):
        assert not repeats(prompt + result.tokens)
        assert len(result.tokens) == 20


def test_options_are_checked_with_one_line_errors():
    with pytest.raises(ValueError, match="num_return_sequences must be between 1 and num_beams"):
        BeamSearchOptions(num_beams=2, num_return_sequences=3)
    for temperature in (0, float("inf")):  # inf draws every token alike (a user's trial sent 1e400)
        with pytest.raises(ValueError, match="temperature must be a positive finite number"):
            SamplingOptions(temperature=temperature)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        SamplingOptions(top_p=1.5)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        GreedyOptions(max_new_tokens=0)
    with pytest.raises(SpecError, match="^decoding: unknown option 'num_beams'"):
        build_options(GreedyOptions, {"num_beams": 4}, "decoding")


def test_strategies_are_registered_without_importing_numpy_or_torch():
    code = ("import sys; from lmkit.registry import get_host; from lmkit.spec import resolve\n"
            "spec = resolve({'decoder': {'type': 'gpt2'}, 'decoding': {'strategy': 'beam', 'num_beams': 5}}, "
            "get_host())\n"
            "assert spec.decoding.options.num_beams == 5\n"
            "print(sorted(get_host().components['decoding']), 'torch' in sys.modules, 'numpy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["['beam',", "'greedy',", "'sample']", "False", "False"]


def test_the_strategies_do_not_import_torch():
    code = ("import sys; import lmkit.decoding.greedy, lmkit.decoding.beam, lmkit.decoding.sampling\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("shape, k", [((3, 10000), 8), ((2, 50257), 16), ((4, 300), 8), ((2, 5), 8), ((5, 4097), 3)])
def test_largest_indices_are_the_k_largest(shape, k):
    from lmkit.decoding.common import largest_indices

    rng = np.random.default_rng(0)
    scores = rng.standard_normal(shape).astype(np.float32)
    scores[0, :: 7] = -np.inf  # masked entries
    scores[-1, 100:200] = 3.0  # ties among the largest
    got = largest_indices(scores, k)
    kept = min(k, shape[1])
    assert got.shape == (shape[0], kept)
    for row, indices in zip(scores, got):
        assert len(set(indices.tolist())) == kept
        assert np.array_equal(np.sort(row[indices]), np.sort(row)[shape[1] - kept:])  # the k largest values


@pytest.mark.parametrize("rows_per_prompt, ban", [(1, 0), (4, 0), (4, 2)])
def test_beam_expand_scores_candidates_as_the_whole_vocabulary_would(rows_per_prompt, ban):
    """Scoring only each row's 2K best tokens gives the candidates that ranking all K * V continuations gives."""
    from lmkit.decoding.beam import _Search
    from lmkit.decoding.common import ban_repeated_ngrams, log_softmax, top_k_indices
    from lmkit.decoding.options import BeamSearchOptions

    rng = np.random.default_rng(1)
    n, K, V, P = 3, 4, 9000, 5
    input_ids = rng.integers(0, V, (n, P))
    search = _Search(BeamSearchOptions(num_beams=K, max_new_tokens=4, no_repeat_ngram_size=ban), input_ids,
                     np.ones((n, P), dtype=np.bool_), np.full(n, 4), None, [])
    search.rows_per_prompt = rows_per_prompt
    if rows_per_prompt > 1:
        search.running_scores[:] = rng.standard_normal((n, K)).astype(np.float32)
    logits = rng.standard_normal((n * rows_per_prompt, V)).astype(np.float32)
    if ban:  # make some bans bite: the last prompt token repeats a bigram start
        search.running[:, :, P - 1] = search.running[:, :, 0]
        logits[:, search.running[0, 0, 1]] *= 0
        logits[:, search.running[0, 0, 1]] += 50
    # the whole-vocabulary computation
    log_probs = log_softmax(logits)
    if ban:
        ban_repeated_ngrams(log_probs, search.running[:, :rows_per_prompt, :P].reshape(-1, P), ban)
    scores = (search.running_scores[:, :, None] + log_probs.reshape(n, rows_per_prompt, V)).reshape(n, K * V)
    best = top_k_indices(scores, 2 * K)
    candidates = search.expand(logits.copy(), 0)
    np.testing.assert_array_equal(candidates.scores, np.take_along_axis(scores, best, axis=1))
    np.testing.assert_array_equal(candidates.beams, best // V)
    np.testing.assert_array_equal(candidates.tokens, best % V)


def test_beams_are_relabelled_and_only_a_second_child_is_copied(decoder, monkeypatch):
    from lmkit.nn import KVCache

    copied, steps = [], []
    reorder = KVCache.reorder

    def counting(self, rows):
        if rows.numel() == self.batch_size:
            copied.append(sum(1 for row, source in enumerate(rows.tolist()) if source != row))
        return reorder(self, rows)

    class Rows(Recording):
        def step(self, tokens, rows=None):
            steps.append(None if rows is None else rows.copy())
            return super().step(tokens, rows)

    monkeypatch.setattr(KVCache, "reorder", counting)
    strategy = BeamSearch(BeamSearchOptions(max_new_tokens=10, num_beams=6))
    cached, reference = Rows(TorchBackend(decoder, 10)), Recording(FullSequenceBackend(decoder))
    prompts = [[5, 3, 9, 2]]
    assert tokens(strategy.generate(cached, prompts, eos_id=None, pad_id=0)) == \
        tokens(strategy.generate(reference, prompts, eos_id=None, pad_id=0))
    for ours, theirs in zip(cached.logits, reference.logits):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    # After the first step (1 row -> 6 beams), each step copies one row per beam whose parent another
    # beam continues already: 6 minus the distinct parents, not every beam that changed rows.
    same_size = [rows for rows in steps[1:] if rows is not None]
    assert copied and sum(copied) < sum(int((rows != np.arange(len(rows))).sum()) for rows in same_size)
    assert copied == [len(rows) - len(set(rows.tolist())) for rows in same_size if len(set(rows.tolist())) < len(rows)]
