"""A prompt's output does not depend on what it is batched with (issue #19 item 8).

Tokens, length, finish reason and scores of every row are the same alone and batched, in any
position, for every strategy (sampling with a seed), on PyTorch and on onnxruntime exports, for
decoder-only models and encoder-decoders. The batches put a short prompt beside one that nearly
fills the context: the short one still gets all its new tokens (its room is its own), while the
long one stops at the context with reason "length".
"""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from lmkit.decoding.beam import BeamSearch  # noqa: E402
from lmkit.decoding.greedy import Greedy  # noqa: E402
from lmkit.decoding.options import BeamSearchOptions, GreedyOptions, SamplingOptions  # noqa: E402
from lmkit.decoding.sampling import Sampling  # noqa: E402
from lmkit.decoding.torch_backend import TorchBackend  # noqa: E402

NEW = 20
SHORT = [[17, 54], [120, 33, 8, 200, 61]]
LONG = [(7 * i + 3) % 290 for i in range(50)]  # 50 tokens in a context of 64: room for 15 new ones
STRATEGIES = {
    "greedy": Greedy(GreedyOptions(max_new_tokens=NEW)),
    "greedy-no-repeat": Greedy(GreedyOptions(max_new_tokens=NEW, no_repeat_ngram_size=2)),
    "beam": BeamSearch(BeamSearchOptions(max_new_tokens=NEW, num_beams=3, num_return_sequences=2)),
    "beam-no-repeat-early": BeamSearch(BeamSearchOptions(max_new_tokens=NEW, num_beams=4, no_repeat_ngram_size=2,
                                                         early_stopping=True, length_penalty=0.5)),
    "sample": Sampling(SamplingOptions(max_new_tokens=NEW, seed=7, top_k=40)),
    "sample-top-p-no-repeat": Sampling(SamplingOptions(max_new_tokens=NEW, seed=3, temperature=0.8, top_p=0.9,
                                                       no_repeat_ngram_size=3)),
}


def assert_same(batched, alone, where):
    assert batched.tokens == alone.tokens, where
    assert batched.finish_reason == alone.finish_reason, where
    assert batched.score == pytest.approx(alone.score, abs=1e-4), where
    if alone.normalized_score is not None:
        assert batched.normalized_score == pytest.approx(alone.normalized_score, abs=1e-4), where
    assert len(batched.alternatives) == len(alone.alternatives), where
    for b, a in zip(batched.alternatives, alone.alternatives):
        assert_same(b, a, where + " (alternative)")


@pytest.fixture(scope="module")
def backends(tiny_gpt2, tiny_gpt2_export):
    """Fresh backends of the tiny GPT-2 (context 64) by name: PyTorch and its onnxruntime export."""
    import lmkit.exports
    from lmkit.model import load_model

    decoder = load_model(tiny_gpt2)[0].decoder
    exported = lmkit.exports.load(tiny_gpt2_export, device="cpu")
    return {"torch": lambda: TorchBackend(decoder, NEW), "onnxruntime": exported.backend}


@pytest.mark.parametrize("stop", [False, True], ids=["", "stop"])
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_row_is_the_same_alone_and_batched(backends, name, backend, stop):
    strategy, make = STRATEGIES[name], backends[backend]
    # A stop sequence that greedy search produces after the second short prompt (so it ends some rows).
    stops = None
    if stop:
        greedy = Greedy(GreedyOptions(max_new_tokens=NEW)).generate(make(), [SHORT[1]], eos_id=None, pad_id=0)[0]
        stops = [greedy.tokens[6:8]]

    def run(prompts):
        return strategy.generate(make(), prompts, eos_id=None, pad_id=0, stop=stops)

    alone = {tuple(prompt): run([prompt])[0] for prompt in [*SHORT, LONG]}
    for batch in ([SHORT[0], LONG], [LONG, *SHORT], [SHORT[1], SHORT[0], LONG]):
        for prompt, result in zip(batch, run(batch)):
            assert_same(result, alone[tuple(prompt)], f"{name} on {backend}: prompt of {len(prompt)} in a batch "
                                                      f"of {[len(p) for p in batch]}")
    long = alone[tuple(LONG)]
    assert len(long.tokens) <= 15 and (long.finish_reason != "length" or len(long.tokens) == 15)
    if not stop:  # nothing else ends a row: every short prompt gets all NEW tokens, batched or not
        assert all(len(alone[tuple(p)].tokens) == NEW and alone[tuple(p)].finish_reason == "length" for p in SHORT)
        assert long.finish_reason == "length" and len(long.tokens) == 15
    elif name == "greedy":
        assert alone[tuple(SHORT[1])].finish_reason == "stop"


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_copies_of_a_prompt_sample_differently_and_the_first_as_alone(backends, backend):
    sampling = Sampling(SamplingOptions(max_new_tokens=NEW, seed=11, temperature=1.5))
    make = backends[backend]
    alone = sampling.generate(make(), [SHORT[0]], eos_id=None, pad_id=0)[0]
    first, second = sampling.generate(make(), [SHORT[0], SHORT[0]], eos_id=None, pad_id=0)
    assert first.tokens == alone.tokens
    assert second.tokens != first.tokens


@pytest.fixture(scope="module")
def translators(trained_nmt, translation_task, tmp_path_factory):
    """The trained tiny NMT model opened on PyTorch and on its onnxruntime export, and its sources."""
    from lmkit.exports.export import export_model
    from lmkit.opening import open_model
    from lmkit.seq2seq import encode_sources

    model_dir = trained_nmt[0]
    out = str(tmp_path_factory.mktemp("exports") / "nmt")
    export_model(model_dir, out)
    translators = {"torch": open_model(model_dir, device="cpu"), "onnxruntime": open_model(out, device="cpu")}
    with open(translation_task["valid.src"]) as handle:
        texts = [next(handle).strip() for _ in range(4)]
    texts[1] = texts[0]  # the same sentence twice: sampling gives the two different translations
    return translators, encode_sources(translators["torch"].tokenizer, texts, None)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("name", ["greedy", "beam", "sample"])
def test_every_translation_is_the_same_alone_and_batched(translators, name, backend):
    translators, sources = translators
    translator = translators[backend]
    strategy = {"greedy": Greedy(GreedyOptions(max_new_tokens=30)),
                "beam": BeamSearch(BeamSearchOptions(max_new_tokens=30, num_beams=3, num_return_sequences=2)),
                "sample": Sampling(SamplingOptions(max_new_tokens=30, seed=5, temperature=2.0))}[name]

    def run(chunk, batch_size=64):
        return translator.generate_ids(chunk, strategy, batch_size=batch_size)

    alone = [run([source])[0] for source in sources]
    # Sources 0 and 1 are one sentence: the second copy is not alone, it is the first's second sample.
    order = [3, 0, 2]
    for result, i in zip(run([sources[i] for i in order]), order):
        assert_same(result, alone[i], f"{name} on {backend}: source {i}")
    for batch_size in (4, 3):
        for i, result in enumerate(run(sources, batch_size)):
            if i != 1:
                assert_same(result, alone[i], f"{name} on {backend}: source {i}, batches of {batch_size}")


@pytest.mark.parametrize("preset", ["gpt-tiny", "gpt3-tiny"])  # post-LN GPT; GPT-3's banded layers
def test_other_decoders_give_every_row_the_same_alone_and_batched(preset):
    from lmkit.model import build_model
    from lmkit.registry import get_host
    from lmkit.spec import load_source, resolve

    host = get_host()
    model = build_model(resolve(load_source(preset, host), host), seed=0)
    with torch.no_grad():
        for parameter in model.parameters():  # weights large enough for peaked distributions (no near-ties)
            parameter.normal_(0.0, 0.3)
    decoder = model.decoder.eval()
    for name in ("greedy", "beam", "sample"):
        strategy = STRATEGIES[name]
        alone = strategy.generate(TorchBackend(decoder, NEW), [SHORT[0]], eos_id=None, pad_id=0)[0]
        batched = strategy.generate(TorchBackend(decoder, NEW), [LONG, SHORT[0]], eos_id=None, pad_id=0)
        assert_same(batched[1], alone, f"{name} on {preset}")
        assert len(alone.tokens) == NEW and len(batched[0].tokens) == 15


def test_generate_command_gives_a_prompt_its_tokens_whatever_it_is_batched_with(run, tiny_gpt2):
    import json

    from lmkit.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(tiny_gpt2)
    words = "the cat sat on the mat and the dog ran far away home quickly".split()
    long = ""
    while len(tokenizer.encode(long)) < 50:
        long += " " + words[len(long) % len(words)]

    def generate(*prompts):
        done = run("generate", tiny_gpt2, *[arg for p in prompts for arg in ("--prompt", p)], "--max-new-tokens",
                   "20", "--json", "--device", "cpu")
        assert done.code == 0, done.err
        return json.loads(done.out)

    alone = generate("fox")[0]
    fox, rest = generate("fox", long)
    assert len(alone["tokens"]) == len(fox["tokens"]) == 20 and fox["tokens"] == alone["tokens"]
    assert len(rest["tokens"]) == 64 - len(tokenizer.encode(long)) + 1 and rest["finish_reason"] == "length"
