"""Contrastive prefixes (Qian et al. 2022): a prefix is exactly a past_key_values prefix (against Hugging Face's
GPT-2), the export runs it token-identically, training keeps the decoder frozen and computes the paper's
objective, and `lmkit train-prefix` / `lmkit generate --prefix` on good and bad input."""
import hashlib
import json
import os
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.model import load_model  # noqa: E402
from lmkit.plugins.prefixes.model import AttributePrefixes, prefix_from_tokens  # noqa: E402
from lmkit.plugins.prefixes.synthetic import attribute_rate, classify, make_corpus  # noqa: E402
from lmkit.plugins.prefixes.training import pad_batch  # noqa: E402
from lmkit.prefix import CachePrefix, load_prefix, save_prefixes  # noqa: E402


def random_prefix(n_layers=2, n_heads=4, length=5, head_dim=16, seed=0, scale=1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal((n_layers, 2, n_heads, length, head_dim))).astype(np.float32)


def run(*args):
    result = run_cli(*args)
    return result.code, result.out + result.err


@pytest.fixture(scope="module")
def prefix_dir(tmp_path_factory):
    """Two random prefixes of 5 positions for the tiny GPT-2 (2 layers, 4 heads of 16), and one for 3 layers."""
    root = tmp_path_factory.mktemp("prefixes")
    save_prefixes(str(root / "good"), {"positive": random_prefix(seed=1), "negative": random_prefix(seed=2)},
                  {"method": "test"})
    save_prefixes(str(root / "other"), {"positive": random_prefix(n_layers=3, seed=3)}, {"method": "test"})
    return root


def test_a_prefix_is_hugging_face_gpt2_past_key_values(tmp_path):
    """The decoder's cache started from a prefix gives the logits HF GPT-2 gives with the same keys/values as
    past_key_values and a mask of ones over them: positions of the real tokens start at P."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file
    from transformers.cache_utils import DynamicCache

    from lmkit.plugins.gpt.hf import config_from_hf, state_dict_from_hf
    from lmkit.plugins.gpt.model import GPT2Decoder

    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=64, bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():
        for parameter in hf_model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    hf_model.save_pretrained(tmp_path)
    config = config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    decoder = GPT2Decoder(config).eval()
    decoder.load_state_dict(state_dict_from_hf(load_file(tmp_path / "model.safetensors"), config), strict=True)

    kv = torch.from_numpy(random_prefix(length=7))  # (L, 2, nh, P, hs)
    ids = torch.randint(0, 300, (3, 11), generator=torch.Generator().manual_seed(1))
    past = DynamicCache()
    for layer in range(2):
        past.update(kv[layer, 0].expand(3, -1, -1, -1), kv[layer, 1].expand(3, -1, -1, -1), layer)
    with torch.no_grad():
        expected = hf_model(ids, cache=past, attention_mask=torch.ones(3, 7 + 11, dtype=torch.long)).logits
        cache = decoder.new_cache(3, 7 + 11)
        cache.start_from(kv[:, 0, None], kv[:, 1, None])
        logits = decoder(ids, cache)
        unprefixed = decoder(ids)
    assert (logits - expected).abs().max() < 1e-4
    assert (unprefixed - expected).abs().max() > 1e-2  # the prefix does change what the model says


@pytest.fixture(scope="module")
def tiny(tiny_gpt2):
    model, tokenizer, _ = load_model(tiny_gpt2)
    return model.eval(), tokenizer


def test_a_prefix_made_from_tokens_is_those_tokens_fed_first(tiny_gpt2):
    """The backend with a prefix made from tokens gives the logits, and greedy the tokens, of the prompt
    with those tokens in front, left-padded batches included."""
    from lmkit import open_model

    model = open_model(tiny_gpt2, device="cpu")
    decoder = model.model.decoder
    words = model.tokenizer.encode("the cat sat on the mat")
    prefix = CachePrefix(prefix_from_tokens(model.model, words).numpy(), "made", "tokens")
    prompts = [model.tokenizer.encode(text) for text in ("the dog ran", "a cat", "home quickly far away")]
    # 60 new tokens run the short rows into the context of 64, where the shared padding is dropped.
    for greedy in (model.decoding("greedy", max_new_tokens=8), model.decoding("greedy", max_new_tokens=60)):
        with_prefix = model.generate_ids(prompts, greedy, prefix=prefix)
        in_front = model.generate_ids([words + p for p in prompts], greedy)
        assert [r.tokens for r in with_prefix] == [r.tokens for r in in_front]

    backend = model.backend(4, prefix=prefix)
    mask = np.array([[False, True, True], [True, True, True]])
    logits = backend.prefill(np.array([[0, 5, 6], [7, 8, 9]]), mask)
    with torch.no_grad():
        for row, ids in enumerate(([5, 6], [7, 8, 9])):
            full = decoder(torch.tensor([words + ids]))[0, -1].numpy()
            assert np.abs(logits[row] - full).max() < 1e-4
        step = backend.step(np.array([11, 12]))
        full = decoder(torch.tensor([words + [5, 6, 11]]))[0, -1].numpy()
    assert np.abs(step[0] - full).max() < 1e-4


def test_export_generates_token_identically_with_a_prefix(tiny_gpt2, tiny_gpt2_export, prefix_dir):
    from lmkit import open_model

    prefix = load_prefix(str(prefix_dir / "good"), "negative")
    prompts = [[5, 6, 7], [9], [3, 4, 5, 6, 7, 8, 9, 10]]
    outputs = []
    for directory in (tiny_gpt2, tiny_gpt2_export):
        model = open_model(directory, device="cpu")
        runs = []
        for strategy, options in (("greedy", {}), ("beam", {"num_beams": 3}), ("sample", {"seed": 3}),
                                  ("greedy", {"max_new_tokens": 60})):  # up to the context, where padding is dropped
            decoding = model.decoding(strategy, **{"max_new_tokens": 10, **options})
            runs.append([r.tokens for r in model.generate_ids(prompts, decoding, prefix=prefix)])
        runs.append([r.tokens for r in model.generate_ids(prompts, model.decoding("greedy", max_new_tokens=10))])
        outputs.append(runs)
    assert outputs[0] == outputs[1]
    assert outputs[0][0] != outputs[0][4]  # the prefix changed the continuation
    assert max(len(tokens) for tokens in outputs[0][3]) > 50


def test_a_prefix_counts_against_the_context(tiny_gpt2, tiny_gpt2_export):
    """64 positions, a prefix of 60: 4 are left, and both backends say so the same way."""
    from lmkit import open_model

    prefix = CachePrefix(random_prefix(length=60), "long", "test")
    for directory in (tiny_gpt2, tiny_gpt2_export):
        model = open_model(directory, device="cpu")
        assert model.backend(8, prefix=prefix).max_length == 4
        results = model.generate_ids([[5, 6]], model.decoding("greedy", max_new_tokens=8), prefix=prefix)
        assert len(results[0].tokens) == 3  # the last new token is never fed back: 2 + 3 - 1 = 4 positions


def test_objective_is_the_papers(tiny):
    """L_LM is the own prefix's per-token NLL and L_d the cross-entropy of softmax_a log p(x | H_a), each prefix
    run separately here, in one batched pass there."""
    model, _ = tiny
    decoder = model.decoder
    init = torch.from_numpy(np.stack([random_prefix(length=3, seed=s, scale=0.5) for s in range(3)]))
    prefixes = AttributePrefixes(model, init)
    ids, mask = pad_batch([[1, 5, 6, 7], [1, 8, 9], [1, 2, 3, 4, 5]], 0)
    labels = torch.tensor([2, 0, 1])
    loss, metrics = prefixes.loss(ids, mask, labels, lm_weight=0.7, contrast_weight=0.3)

    loglik = torch.zeros(3, 3)  # (attribute, text)
    nll, count = 0.0, 0
    with torch.no_grad():
        for a in range(3):
            for b, row in enumerate([[1, 5, 6, 7], [1, 8, 9], [1, 2, 3, 4, 5]]):
                cache = decoder.new_cache(1, 3 + len(row))
                cache.start_from(init[a, :, 0, None], init[a, :, 1, None])
                logp = torch.log_softmax(decoder(torch.tensor([row]), cache)[0, :-1], -1)
                token = logp.gather(-1, torch.tensor(row[1:])[:, None]).sum()
                loglik[a, b] = token
                if a == labels[b]:
                    nll -= token.item()
                    count += len(row) - 1
    lm = nll / count
    d = torch.nn.functional.cross_entropy(loglik.T, labels).item()
    assert metrics["lm"] == pytest.approx(lm, rel=1e-4)
    assert metrics["d"] == pytest.approx(d, rel=1e-4, abs=1e-6)
    assert loss.item() == pytest.approx(0.7 * lm + 0.3 * d, rel=1e-4)
    loss.backward()
    assert prefixes.prefixes.grad.abs().sum() > 0
    assert all(p.grad is None for p in decoder.parameters())


def test_train_prefix_keeps_the_model_bit_identical_and_writes_its_attributes(tiny_gpt2, tmp_path):
    state = {name: tensor.clone() for name, tensor in load_model(tiny_gpt2)[0].state_dict().items()}
    weights = hashlib.sha256(open(os.path.join(tiny_gpt2, "model.safetensors"), "rb").read()).hexdigest()
    rng = random.Random(0)
    words = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "far", "away", "quickly", "home"]
    for name in ("up", "down"):
        (tmp_path / f"{name}.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(6))
                                                        for _ in range(20)))
    code, output = run("train-prefix", tiny_gpt2, "--data", f"{tmp_path / 'up.txt'}:up", "--data",
                       f"{tmp_path / 'down.txt'}:down", "--out", tmp_path / "p", "--steps", 3, "--length", 4,
                       "--batch-size", 4, "--device", "cpu", "--quiet")
    assert code == 0, output
    assert "2 prefixes of 4 positions (up, down)" in output
    after = load_model(tiny_gpt2)[0].state_dict()
    assert all(torch.equal(state[name], after[name]) for name in state)
    assert hashlib.sha256(open(os.path.join(tiny_gpt2, "model.safetensors"), "rb").read()).hexdigest() == weights
    for name in ("up", "down"):
        prefix = load_prefix(str(tmp_path / "p"), name)
        assert prefix.keys_values.shape == (2, 2, 4, 4, 16)
    code, output = run("generate", tiny_gpt2, "--prefix", tmp_path / "p", "--attribute", "up", "--prompt", "the cat",
                       "--max-new-tokens", 4, "--no-stream")
    assert code == 0 and output.startswith("the cat"), output
    code, output = run("train-prefix", tiny_gpt2, "--data", f"{tmp_path / 'up.txt'}:up", "--data",
                       f"{tmp_path / 'down.txt'}:down", "--out", tmp_path / "p", "--steps", 1)
    assert code == 1 and "exists; choose another --out or pass --force" in output
    code, output = run("train-prefix", tiny_gpt2, "--data", f"{tmp_path / 'up.txt'}:up", "--data",
                       f"{tmp_path / 'down.txt'}:down", "--out", tmp_path / "nan", "--steps", 3, "--length", 4,
                       "--lr", "1e30", "--device", "cpu", "--quiet")
    assert code == 1 and "training diverged: the prefixes are not finite" in output and "Traceback" not in output
    assert not (tmp_path / "nan").exists()


@pytest.mark.parametrize("directory", ["model", "export"])
def test_generate_refuses_bad_prefixes_in_one_line(tiny_gpt2, tiny_gpt2_export, prefix_dir, directory):
    model = tiny_gpt2 if directory == "model" else tiny_gpt2_export
    (prefix_dir / "notes.txt").write_text("the cat sat on the mat\n" * 40)
    cases = [
        (["--prefix", prefix_dir / "good", "--attribute", "positve"],
         "has no prefix for the attribute 'positve' (did you mean 'positive'?); it has positive, negative"),
        (["--prefix", prefix_dir / "good"], "holds prefixes for positive, negative; pick one with --attribute"),
        (["--prefix", prefix_dir / "other"], "was trained for a model of 3 layers, 4 heads of 16 dimensions "
                                             "(width 64), but this"),
        (["--prefix", prefix_dir], "holds no prefix file (prefixes.safetensors)"),
        (["--prefix", prefix_dir / "none"], "none does not exist; give the --out directory of lmkit train-prefix"),
        (["--prefix", prefix_dir / "notes.txt"], "notes.txt is not a prefix file (not safetensors); give the --out "
                                                 "directory of lmkit train-prefix"),  # a trial's text file
        (["--attribute", "positive"], "--attribute picks one of a prefix file's prefixes; give the file with --prefix"),
    ]
    for flags, message in cases:
        code, output = run("generate", model, "--prompt", "the cat", *flags)
        assert code != 0 and message in output and "Traceback" not in output, output
    code, output = run("generate", model, "--prompt", "the cat", "--prefix", prefix_dir / "other")
    assert "2 layers, 4 heads of 16 dimensions (width 64)" in output  # both geometries named


def test_train_prefix_refuses_bad_input(tiny_gpt2, tmp_path):
    texts = tmp_path / "a.txt"
    texts.write_text("the cat sat\n")
    cases = [
        (["--data", f"{texts}:a"], "needs texts of at least two attributes and --data gives only 'a'"),
        (["--data", str(texts)], "give FILE:ATTRIBUTE"),
        (["--data", f"{tmp_path / 'none.txt'}:a"], "is not a file"),
        (["--data", f"{texts}:a", "--contrast-weight", 0, "--lm-weight", 0], "nothing to train"),
    ]
    for flags, message in cases:
        code, output = run("train-prefix", tiny_gpt2, "--out", tmp_path / "p", *flags)
        assert code != 0 and message in output and "Traceback" not in output, output
    assert not (tmp_path / "p").exists()  # nothing half-written


def test_the_synthetic_classifier_tells_the_attributes_apart():
    corpus = make_corpus(50, seed=1)
    assert attribute_rate(corpus["positive"], "positive") == 1.0
    assert attribute_rate(corpus["negative"], "negative") == 1.0
    assert classify("the movie is great and the plot is dull") is None
    assert classify("the movie is") is None


@pytest.mark.skipif(os.environ.get("LMKIT_SLOW_TESTS") != "1", reason="trains for minutes; set LMKIT_SLOW_TESTS=1")
def test_prefixes_steer_generation_toward_their_attribute(tmp_path):
    """A tiny GPT-2 trained on both attributes continues "the movie is" with either about half the time;
    with each trained prefix, at least 90% of its samples carry the prefix's attribute."""
    from lmkit.plugins.prefixes.control import control_rates, make_lm

    lm = make_lm(str(tmp_path), steps=300)
    rates = control_rates(lm, str(tmp_path), contrast_weights=(1.0,), steps=300, samples=64)
    for attribute in ("positive", "negative"):
        assert 0.25 <= rates["none"][attribute] <= 0.75, rates
        assert rates[1.0][attribute] >= 0.9, rates


def test_generate_with_a_prefix_on_an_export_needs_no_torch(tiny_gpt2, tiny_gpt2_export, prefix_dir):
    """`lmkit generate EXPORT --prefix` in a Python where torch cannot be imported: the tokens of the model directory."""
    import subprocess
    import sys

    from conftest import NO_TORCH

    flags = ["--prompt", "the cat sat", "--prompt", "dog", "--prefix", str(prefix_dir / "good"), "--attribute",
             "positive", "--max-new-tokens", "6", "--json", "--device", "cpu"]
    code = f"from lmkit import cli\ncli.main(['generate', {tiny_gpt2_export!r}, *{flags!r}])"
    done = subprocess.run([sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    exported = [row["tokens"] for row in json.loads(done.stdout)]
    status, output = run("generate", tiny_gpt2, *flags)
    assert status == 0, output
    assert exported == [row["tokens"] for row in json.loads(output)]


@pytest.mark.parametrize("preset, message", [
    ("gpt-tiny", None),  # GPT (2018) has a KVCache of the same geometry: it works
    ("glm-tiny", None),  # GLM's blanks filled after the prefix (tests/test_prefix_decoders.py)
    ("t5-tiny", None),  # T5's decoder self-attention cache, 2 layers of 4 heads of 16 too
    ("gpt3-tiny", "was trained for a model of 2 layers, 4 heads of 16 dimensions (width 64), but this GPT3Decoder "
                  "has 4 layers"),
    ("awd-lstm-tiny", "this decoder's cache is a RecurrentCache"),
    ("seq2seq-tiny", "has none (a recurrent state)"),
])
def test_which_decoders_take_a_prefix(tiny_gpt2, prefix_dir, tmp_path, preset, message):
    from lmkit.model import compose

    compose(preset, [f"tokenizer={tiny_gpt2}"], str(tmp_path / "m"))  # the presets' 512 tokens hold its 300
    prompt = "the cat [gMASK]" if preset == "glm-tiny" else "the cat"
    code, output = run("generate", tmp_path / "m", "--prompt", prompt, "--prefix", prefix_dir / "good",
                       "--attribute", "positive", "--max-new-tokens", 3, "--no-stream", "--device", "cpu")
    if message is None:
        assert code == 0, output
    else:
        assert code == 1 and message in output and "Traceback" not in output, output
