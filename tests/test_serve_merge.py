"""Rows join a running batch without the running rows being computed again (Backend.merge), on both backends.

The server's continuous batch (lmkit.serving.engine) steps the running rows and merges the new prompts'
prefilled caches into theirs. Each sequence still gets the tokens `lmkit generate` gives it alone
(greedy and seeded sampling, joins longer and shorter than the running rows, a prefix, runs up to the
context), and the positions the model computes are exactly the joining prompts and one per step and row.
"""
import threading

import numpy as np
import pytest

pytest.importorskip("torch")

from lmkit.decoding.sampling import row_generators  # noqa: E402
from lmkit.opening import open_model  # noqa: E402
from lmkit.serving.engine import ContinuousBatcher, Sequence, Settings, SourcePrompts  # noqa: E402

TEXTS = ["the cat", "a dog sat on the mat and then the cat", "quickly", "far away home the dog ran",
         "on the", "the mat sat on a cat far away from home"]


class Counting:
    """A Backend that passes every call on, noting what it was given; `on_call(n)` runs before call n."""

    def __init__(self, backend, on_call=None):
        self.backend, self.max_length = backend, backend.max_length
        self.joins_running = getattr(backend, "joins_running", True)
        self.calls, self.given, self.on_call = [], 0, on_call or (lambda n: None)

    def _note(self, kind, positions):
        self.on_call(len(self.calls))
        self.calls.append(kind)
        self.given += positions

    def prefill(self, input_ids, attention_mask):
        self._note("prefill", input_ids.size)
        return self.backend.prefill(input_ids, attention_mask)

    def merge(self, input_ids, attention_mask):
        self._note("merge", input_ids.size)
        return self.backend.merge(input_ids, attention_mask)

    def step(self, tokens, rows=None):
        self._note("step", tokens.size)
        return self.backend.step(tokens, rows)


def computed_positions(model):
    """A counter of the positions the model itself computes (the decoder's, or the graph's, input_ids)."""
    count = [0]
    if model.runtime.__class__.__name__ == "TorchRuntime":
        decoder = model.model.decoder
        hidden_states = decoder.hidden_states

        def counted(input_ids, *args, **kwargs):
            count[0] += input_ids.numel()
            return hidden_states(input_ids, *args, **kwargs)

        decoder.hidden_states = counted
    else:
        session = model.runtime.session

        class Session:  # the session, counting the input_ids of every run
            def __getattr__(self, name):
                return getattr(session, name)

            def run(self, names, feeds, *args):
                count[0] += feeds["input_ids"].size
                return session.run(names, feeds, *args)

            def io_binding(self):  # the buffer layout binds its inputs (exports/decoder_runtime.py)
                return Binding(session.io_binding())

            def run_with_iobinding(self, binding, *args):
                return session.run_with_iobinding(binding.binding, *args)

        class Binding:
            def __init__(self, binding):
                self.binding = binding

            def __getattr__(self, name):
                return getattr(self.binding, name)

            def bind_ortvalue_input(self, name, value):
                if name == "input_ids":
                    count[0] += int(np.prod(value.shape()))
                return self.binding.bind_ortvalue_input(name, value)

        model.runtime.session = Session()
    return count


def staggered(model, sequences, joins, max_new_tokens, prefix=None):
    """Decode `sequences` in one engine, sequences[i] submitted before backend call joins[i]; returns the
    Counting backend once all are done. An encoder-decoder's prompts are its sources (SourcePrompts)."""
    done, finished, errors = threading.Event(), [], []

    def on_event(sequence, kind, detail):
        if kind == "error":
            errors.append(detail)
            done.set()
        if kind == "done":
            finished.append(sequence)
            if len(finished) == len(sequences):
                done.set()

    for sequence in sequences:
        sequence.on_event = on_event
    inner = model.backend(max_new_tokens, **({"prefix": prefix} if prefix else {}))
    if model.kind == "encoder-decoder":
        inner = SourcePrompts(inner, model.decoder_start)
    backend = Counting(inner, lambda n: engine.submit([s for s, at in zip(sequences, joins) if at == n and n]))
    engine = ContinuousBatcher(backend, eos_id=None, pad_id=0)
    engine.submit([s for s, at in zip(sequences, joins) if at == 0])
    engine.start()
    assert done.wait(120)
    engine.stop()
    assert not errors, errors[0]
    return backend


def greedy_and_sampled(prompts, n: int) -> list[Sequence]:
    """A sequence per prompt: every other one greedy for n tokens, the rest sampled (temperature 0.8, lmkit generate's
    seed 7) for n - i."""
    settings = [Settings(max_new_tokens=n) if i % 2 else Settings(max_new_tokens=n - i, temperature=0.8)
                for i in range(len(prompts))]
    return [Sequence(list(p), s, row_generators(7, [p])[0] if s.temperature else None) for p, s in zip(prompts, settings)]


def decoding_alone(model, settings: Settings):
    """The decoding that gives a sequence of greedy_and_sampled its tokens alone (lmkit generate's)."""
    if settings.temperature:
        return model.decoding("sample", max_new_tokens=settings.max_new_tokens, temperature=0.8, seed=7)
    return model.decoding("greedy", max_new_tokens=settings.max_new_tokens)


@pytest.fixture(params=["torch", "export"])
def directory(request, tiny_gpt2, tiny_gpt2_export):
    return tiny_gpt2 if request.param == "torch" else tiny_gpt2_export


def test_staggered_joins_give_each_sequence_its_own_tokens_and_compute_no_running_row_again(directory):
    model = open_model(directory, device="cpu")
    count = computed_positions(model)
    prompts = model.tokenizer.encode_batch(TEXTS)
    n = 10
    sequences = greedy_and_sampled(prompts, n)
    # joins between steps, with prompts shorter and longer than the running rows; some while others leave
    backend = staggered(model, sequences, [0, 0, 2, 3, 3, 7], n)
    assert backend.calls.count("merge") == 3 and backend.calls.count("prefill") == 1
    # every position the model computed was a joining prompt's or a step's: no running row again
    assert count[0] == backend.given
    prompt_positions = sum(len(p) for p in prompts)
    generated = sum(len(s.tokens) for s in sequences)
    assert backend.given < prompt_positions + generated + 4 * max(map(len, prompts))  # padding of 4 joins at most
    for sequence, prompt in zip(sequences, prompts):
        decoding = decoding_alone(model, sequence.settings)
        assert sequence.tokens == model.generate_ids([prompt], decoding)[0].tokens


def test_joins_to_the_context_and_after_a_prefix_are_token_identical(directory):
    """Rows that join and run on to the context of 64 (where the backends drop shared padding and start
    again), and a prefix every row's cache starts from, which the merged rows keep in front."""
    from lmkit.prefix import CachePrefix

    model = open_model(directory, device="cpu")
    prompts = model.tokenizer.encode_batch(TEXTS[:4])
    rng = np.random.default_rng(0)
    prefix = CachePrefix(rng.standard_normal((2, 2, 4, 5, 16)).astype(np.float32), "random", "test")
    for chosen, n in ((None, 60), (prefix, 12)):
        sequences = [Sequence(list(p), Settings(max_new_tokens=n)) for p in prompts]
        backend = staggered(model, sequences, [0, 1, 4, 4], n, chosen)
        assert "merge" in backend.calls
        alone = model.generate_ids(prompts, model.decoding("greedy", max_new_tokens=n), prefix=chosen)
        assert [s.tokens for s in sequences] == [g.tokens for g in alone]


def test_merge_logits_are_those_of_a_prefill_of_all_rows(directory):
    """Backend level: a batch that took 2 steps, then 2 rows merged (one longer, one shorter), gives the
    logits a prefill of every row's tokens so far gives, at the merge and at the next step."""
    from lmkit.decoding.common import left_pad

    model = open_model(directory, device="cpu")
    running = [[5, 6, 7, 8], [9, 10]]
    joining = [[11, 12, 13, 14, 15, 16, 17, 18], [19]]
    backend = model.backend(8)
    backend.prefill(*left_pad(running, 0))
    for token in (20, 21):
        backend.step(np.array([token, token + 2]))
    rows = [running[0] + [20, 21], running[1] + [22, 23]]
    merged = backend.merge(*left_pad(joining, 0))
    after = backend.step(np.array([24, 25, 26, 27]))
    reference = model.backend(8)
    everything = reference.prefill(*left_pad(rows + joining, 0))
    np.testing.assert_allclose(merged, everything[2:], atol=1e-4)
    expected = reference.step(np.array([24, 25, 26, 27]))
    np.testing.assert_allclose(after, expected, atol=1e-4)


# -- encoder-decoders: the prompts are sources, each row's target starts from the start token ------------------


@pytest.fixture(params=["torch", "export"])
def t5_directory(request, t5_directories):
    return t5_directories[request.param == "export"]


def test_sources_that_join_a_running_batch_get_the_targets_they_get_alone(t5_directory):
    """T5 (relative positions, a self-attention cache): sources longer and shorter than the running rows' join
    while those rows are at different target lengths, greedy and seeded sampling; each row's tokens are those
    `lmkit generate` gives its source alone."""
    model = open_model(t5_directory, device="cpu")
    sources = model.encode_sources(TEXTS)
    n = 10
    sequences = greedy_and_sampled(sources, n)
    backend = staggered(model, sequences, [0, 0, 2, 3, 3, 7], n)
    assert backend.calls.count("merge") == 3 and backend.calls.count("prefill") == 1
    assert all(len(s.tokens) == s.settings.max_new_tokens for s in sequences)
    eos = model.tokenizer.eos_id  # the engine here runs every row to its max_new_tokens; generate stops at </s>
    for sequence, source in zip(sequences, sources):
        decoding = decoding_alone(model, sequence.settings)
        served = sequence.tokens[:sequence.tokens.index(eos)] if eos in sequence.tokens else sequence.tokens
        assert served == model.generate_ids([source], decoding)[0].tokens


def test_a_running_batch_with_a_prefix_takes_no_sources_and_says_why(t5_directory, t5_directories):
    """A prefix sits before every target, and a padded row's queries would be further from it than its own
    queries are: such a backend says it cannot join rows, merge refuses in one line, and the engine has late
    sources wait for the batch to end (the tokens still each source's own)."""
    from lmkit.plugins.prefixes.model import cache_geometry
    from lmkit.prefix import CachePrefix

    model = open_model(t5_directory, device="cpu")
    n_layers, n_heads, head_dim = cache_geometry(open_model(t5_directories[0], device="cpu").model)
    rng = np.random.default_rng(0)
    prefix = CachePrefix(rng.standard_normal((n_layers, 2, n_heads, 3, head_dim)).astype(np.float32), "a", "test")
    backend = model.backend(6, prefix=prefix)
    assert not backend.joins_rows and not SourcePrompts(backend, model.decoder_start).joins_running
    sources = model.encode_sources(TEXTS[:3])
    backend.set_sources(sources[:2])
    start = np.full((2, 1), model.decoder_start, np.int64)
    backend.prefill(start, np.ones_like(start, np.bool_))
    backend.set_sources(sources[2:])
    with pytest.raises(ValueError, match="after a prefix"):
        backend.merge(start[:1], np.ones((1, 1), np.bool_))
    sequences = [Sequence(list(source), Settings(max_new_tokens=6)) for source in sources]
    counted = staggered(model, sequences, [0, 0, 1], 6, prefix)
    assert "merge" not in counted.calls and counted.calls.count("prefill") == 2
    alone = model.generate_ids(sources, model.decoding("greedy", max_new_tokens=6), prefix=prefix)
    eos = model.tokenizer.eos_id
    assert [s.tokens[:s.tokens.index(eos)] if eos in s.tokens else s.tokens for s in sequences] == [
        g.tokens for g in alone]


def test_a_decoder_with_a_cache_that_reads_no_target_padding_takes_no_rows(t5_directories, monkeypatch):
    """Seq2SeqDecoderStack.join would left-pad a self-attention cache that such a decoder would then attend to: a
    decoder joins rows only when it lists target_mask among its STATE_ROWS (T5 does)."""
    model = open_model(t5_directories[0], device="cpu")
    assert model.backend(4).joins_rows
    decoder = type(model.model.decoder)
    monkeypatch.setattr(decoder, "STATE_ROWS", {k: v for k, v in decoder.STATE_ROWS.items() if k != "target_mask"})
    assert not model.backend(4).joins_rows
