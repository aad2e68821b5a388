"""Prefixes on every cached decoder beyond GPT-2's (lmkit.prefix): GPT-3's banded layers, GLM's 2-D positions and
T5's decoder. A prefix made from tokens is those tokens fed first; train-prefix keeps each model bit-identical.
(Token identity with the export, greedy and beam, is checked for every preset in test_conformance.py.)"""
import hashlib
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.model import compose, load_model  # noqa: E402
from lmkit.plugins.prefixes.model import AttributePrefixes, prefix_from_tokens  # noqa: E402
from lmkit.prefix import CachePrefix, load_prefix  # noqa: E402

WORDS = "the cat sat on the mat and the dog ran far away home quickly".split()


@pytest.fixture(scope="module")
def models(tiny_gpt2, tmp_path_factory):
    """gpt3-tiny (band width 8), glm-tiny and t5-tiny with the tiny GPT-2's tokenizer, random weights."""
    root = tmp_path_factory.mktemp("prefix-decoders")
    made = {}
    for preset in ("gpt3-tiny", "glm-tiny", "t5-tiny"):
        out = str(root / preset)
        compose(preset, [f"tokenizer={tiny_gpt2}"], out)
        made[preset] = out
    return made


def greedy(opened, prompts, prefix=None, max_new_tokens=12):
    decoding = opened.decoding("greedy", max_new_tokens=max_new_tokens)
    return [r.tokens for r in opened.generate_ids(prompts, decoding, prefix=prefix)]


@pytest.mark.parametrize("length", [5, 11])  # shorter and longer than the band (8): the window keeps its last 8
def test_gpt3_prefix_from_tokens_is_those_tokens_fed_first(models, length):
    from lmkit import open_model

    opened = open_model(models["gpt3-tiny"], device="cpu")
    tokenizer = opened.tokenizer
    words = tokenizer.encode(" ".join(WORDS))[:length]
    assert len(words) == length
    prefix = CachePrefix(prefix_from_tokens(opened.model, words).numpy(), "made", "tokens")
    prompts = [tokenizer.encode(text) for text in ("the dog ran", "home quickly far away")]
    # One prompt at a time (left padding between the prefix and a shorter prompt would take places of the band:
    # docs/prefixes.md), and a batch of prompts of one length.
    for prompt in prompts:
        assert greedy(opened, [prompt], prefix, 8) == greedy(opened, [words + prompt], max_new_tokens=8)
    same = [prompts[0], [t + 1 for t in prompts[0]]]
    assert greedy(opened, same, prefix, 8) == greedy(opened, [words + p for p in same], max_new_tokens=8)
    # Logits of a prefill and two steps, past the band, against the whole text read at once.
    decoder = opened.model.decoder
    backend = opened.backend(4, prefix=prefix)
    logits = [backend.prefill(np.array([[5, 6, 7], [7, 8, 9]]), np.ones((2, 3), dtype=bool))[0]]
    logits += [backend.step(np.array([11, 12]))[0], backend.step(np.array([13, 14]))[0]]
    with torch.no_grad():
        full = decoder(torch.tensor([words + [5, 6, 7, 11, 13]]))[0, -3:].numpy()
    assert np.abs(np.stack(logits) - full).max() < 1e-4


def test_t5_prefix_from_tokens_is_those_tokens_fed_first_in_the_decoder(models):
    """The decoder's self-attention cache started from the cache of P target tokens gives what feeding those P
    tokens before the start token gives: the relative bias offsets every query by P; the encoder is untouched."""
    from lmkit import open_model

    opened = open_model(models["t5-tiny"], device="cpu")
    model = opened.model
    source = opened.encode_sources(["the cat sat on the mat"])[0]
    words = opened.tokenizer.encode("the dog ran far away")
    prefix = CachePrefix(prefix_from_tokens(model, words, source).numpy(), "made", "tokens")
    got = greedy(opened, [source], prefix)[0]
    # By hand: the start token after the words, then greedy, the decoder reading the whole target each step.
    start = opened.decoder_start
    target = words + [start]
    expected = []
    with torch.no_grad():
        encoded = model.encoder(torch.tensor([source]))
        for _ in range(12):
            logits, _ = model.decoder(torch.tensor([target]), model.decoder.start(encoded))
            token = int(logits[0, -1].argmax())
            expected.append(token)
            if token == opened.tokenizer.eos_id:
                break
            target.append(token)
    if expected[-1] == opened.tokenizer.eos_id:
        expected = expected[:-1]
    assert got == expected


def glm_prefix_from_tokens(decoder, words):
    """The cache of `words` read as GLM's Part A (pos1 0..P-1, pos2 0): a context the prompt comes after."""
    cache = decoder.new_cache(1, len(words))
    P = len(words)
    positions = torch.stack([torch.arange(P), torch.zeros(P, dtype=torch.long)])[None]
    with torch.no_grad():
        decoder(torch.tensor([words]), cache, position_ids=positions)
    return np.stack([torch.stack([cache.keys[layer, 0, :, :P], cache.values[layer, 0, :, :P]]).numpy()
                     for layer in range(cache.keys.size(0))])


def test_glm_prefix_is_a_context_before_part_a(models):
    """With a prefix made from P tokens as Part A, blank filling gives what the model gives reading those tokens
    first (a context the prompt cannot change: they do not see the prompt) and the prompt's Part A at pos1 P, P+1,
    ..., each span at its blank's pos1: computed here from scratch at every step, without the backend."""
    from lmkit import open_model

    opened = open_model(models["glm-tiny"], device="cpu")
    decoder = opened.model.decoder
    tokenizer = opened.tokenizer
    words = tokenizer.encode("the dog ran far away")
    P = len(words)
    prefix = CachePrefix(glm_prefix_from_tokens(decoder, words), "made", "tokens")
    prompt = tokenizer.encode("the cat [MASK] on the mat")
    mask_at = prompt.index(tokenizer.token_to_id("[MASK]"))
    got = greedy(opened, [prompt], prefix, max_new_tokens=6)[0]
    start, end = tokenizer.token_to_id("[S]"), tokenizer.token_to_id("[E]")
    span = []
    with torch.no_grad():
        for _ in range(6):
            ids = prompt + [start] + span
            pos1 = [P + i for i in range(len(prompt))] + [P + mask_at] * (len(span) + 1)
            pos2 = [0] * len(prompt) + list(range(1, len(span) + 2))
            cache = decoder.new_cache(1, P + len(ids))
            cache.start_from(*(torch.from_numpy(prefix.keys_values[:, i, None]) for i in (0, 1)))
            logits = decoder(torch.tensor([ids]), cache, position_ids=torch.tensor([[pos1, pos2]]))
            token = int(logits[0, -1].argmax())
            if token == end:
                break
            span.append(token)
    assert got == span
    # A prefix takes P of the context: the LM view's span after it sits at pos1 P, its pos2 from 1.
    cache = decoder.new_cache(1, P + 3)
    cache.start_from(*(torch.from_numpy(prefix.keys_values[:, i, None]) for i in (0, 1)))
    pos1, pos2, two_d = decoder.positions(torch.tensor([[5, 6, 7]]), None, P, cache.prefix_length)
    assert not two_d and pos1.tolist() == [[P] * 3] and pos2.tolist() == [[1, 2, 3]]


@pytest.mark.parametrize("preset", ["gpt3-tiny", "glm-tiny", "t5-tiny"])
def test_train_prefix_keeps_each_model_bit_identical(models, preset, tmp_path):
    model_dir = models[preset]
    weights = hashlib.sha256(open(os.path.join(model_dir, "model.safetensors"), "rb").read()).hexdigest()
    state = {name: tensor.clone() for name, tensor in load_model(model_dir)[0].state_dict().items()}
    rng = np.random.default_rng(0)
    for name in ("up", "down"):
        lines = [" ".join(rng.choice(WORDS, 6)) for _ in range(12)]
        if preset == "t5-tiny":  # an encoder-decoder learns targets after sources
            lines = [f"{line}\t{' '.join(reversed(line.split()))}" for line in lines]
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
    result = run_cli("train-prefix", model_dir, "--data", f"{tmp_path / 'up.txt'}:up", "--data",
                     f"{tmp_path / 'down.txt'}:down", "--out", tmp_path / "p", "--steps", 2, "--length", 10,
                     "--batch-size", 4, "--device", "cpu", "--quiet")
    assert result.code == 0, result.out + result.err
    after = load_model(model_dir)[0].state_dict()
    assert all(torch.equal(state[name], after[name]) for name in state)
    assert hashlib.sha256(open(os.path.join(model_dir, "model.safetensors"), "rb").read()).hexdigest() == weights
    prefix = load_prefix(str(tmp_path / "p"), "up")
    assert prefix.length == 10
    prompt = {"glm-tiny": "the cat [gMASK]"}.get(preset, "the cat")
    result = run_cli("generate", model_dir, "--prefix", tmp_path / "p", "--attribute", "down", "--prompt", prompt,
                     "--max-new-tokens", 4, "--no-stream", "--device", "cpu")
    assert result.code == 0, result.out + result.err


def test_the_objective_reads_a_banded_layer_through_its_window(models):
    """Training's differentiable cache (the prefix's last w positions in a banded layer's window) gives the
    log-likelihoods of the generation cache (BandedKVCache.start_from), gradients reaching only the prefix."""
    model = load_model(models["gpt3-tiny"])[0].eval()
    rng = np.random.default_rng(1)
    init = torch.from_numpy((0.5 * rng.standard_normal((2, 4, 2, 4, 11, 16))).astype(np.float32))
    prefixes = AttributePrefixes(model, init)
    row = [1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]  # 12 tokens: past the band of 8
    ids = torch.tensor([row])
    logprobs = prefixes.token_logprobs(ids, torch.ones_like(ids, dtype=torch.bool), torch.tensor([1]))
    with torch.no_grad():
        cache = model.decoder.new_cache(1, 11 + len(row))
        cache.start_from(init[1, :, 0, None], init[1, :, 1, None])
        expected = torch.log_softmax(model.decoder(ids, cache)[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert (logprobs[0] - expected).abs().max() < 1e-4
    logprobs.sum().backward()
    assert prefixes.prefixes.grad[1].abs().sum() > 0 and prefixes.prefixes.grad[0].abs().sum() == 0
    assert all(p.grad is None for p in model.parameters())
