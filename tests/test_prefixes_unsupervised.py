"""The unsupervised variant of contrastive prefixes (Qian et al. 2022 §3.2): K latent-attribute prefixes learnt from
unlabelled text, `lmkit train-prefix --unsupervised K`: the objective against its terms computed by hand, the
model frozen, the command on good and bad input, and (slow) the latent prefixes steering toward the corpus's two
attributes."""
import hashlib
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.model import load_model  # noqa: E402
from lmkit.plugins.prefixes.model import LatentPrefixes  # noqa: E402
from lmkit.plugins.prefixes.training import pad_batch  # noqa: E402
from lmkit.prefix import load_prefix  # noqa: E402


def run(*args):
    result = run_cli(*args)
    return result.code, result.out + result.err


def test_the_unsupervised_objective_is_its_terms(tiny_gpt2):
    """L_LM is the text's NLL after the prefix its Gumbel sample picked, L_KL the KL of q(z|x) to uniform per
    token, L_c the margin hinge on per-token log-likelihoods; gradients reach the prefixes and q's encoder only."""
    model = load_model(tiny_gpt2)[0].eval()
    rng = np.random.default_rng(0)
    init = torch.from_numpy((0.5 * rng.standard_normal((3, 2, 2, 4, 3, 16))).astype(np.float32))
    torch.manual_seed(0)
    prefixes = LatentPrefixes(model, init)
    rows = [[1, 5, 6, 7], [1, 8, 9], [1, 2, 3, 4, 5]]
    ids, mask = pad_batch(rows, 0)
    torch.manual_seed(7)
    loss, metrics = prefixes.unsupervised_loss(ids, mask, lm_weight=0.7, kl_weight=0.2, contrast_weight=0.5,
                                               margin=2.0, temperature=0.5)
    with torch.no_grad():
        logits = prefixes.posterior_logits(ids, mask)
        torch.manual_seed(7)
        picked = torch.nn.functional.gumbel_softmax(logits, tau=0.5, hard=True).argmax(-1)
        q = torch.softmax(logits, -1)
        loglik = torch.zeros(3, 3)  # (prefix, text), summed over tokens
        for k in range(3):
            for b, row in enumerate(rows):
                cache = model.decoder.new_cache(1, 3 + len(row))
                cache.start_from(init[k, :, 0, None], init[k, :, 1, None])
                logp = torch.log_softmax(model.decoder(torch.tensor([row]), cache)[0, :-1], -1)
                loglik[k, b] = logp.gather(-1, torch.tensor(row[1:])[:, None]).sum()
    tokens = torch.tensor([len(row) - 1 for row in rows], dtype=torch.float32)
    lm = -sum(loglik[picked[b], b] for b in range(3)) / tokens.sum()
    kl = (q * (q.log() + math.log(3))).sum() / tokens.sum()
    scores = loglik / tokens
    best = q.argmax(-1)
    hinge = []
    for b in range(3):
        others = max(scores[k, b] for k in range(3) if k != best[b])
        hinge.append(max(0.0, 2.0 - float(scores[best[b], b] - others)))
    assert metrics["lm"] == pytest.approx(float(lm), rel=1e-4)
    assert metrics["kl"] == pytest.approx(float(kl), rel=1e-4, abs=1e-7)
    assert metrics["c"] == pytest.approx(sum(hinge) / 3, rel=1e-4, abs=1e-6)
    assert loss.item() == pytest.approx(0.7 * float(lm) + 0.2 * float(kl) + 0.5 * sum(hinge) / 3, rel=1e-4)
    loss.backward()
    assert prefixes.prefixes.grad.abs().sum() > 0 and prefixes.encoder_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_train_prefix_unsupervised_writes_latent_prefixes_and_keeps_the_model(tiny_gpt2, tmp_path):
    weights = hashlib.sha256(open(os.path.join(tiny_gpt2, "model.safetensors"), "rb").read()).hexdigest()
    words = "the cat sat on a mat and the dog ran far away home".split()
    rng = np.random.default_rng(0)
    (tmp_path / "texts.txt").write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(24)) + "\n")
    code, output = run("train-prefix", tiny_gpt2, "--unsupervised", 3, "--data", tmp_path / "texts.txt", "--out",
                       tmp_path / "p", "--steps", 3, "--length", 4, "--batch-size", 4, "--device", "cpu", "--quiet")
    assert code == 0, output
    assert "3 prefixes of 4 positions (z0, z1, z2)" in output and "KL" in output
    assert hashlib.sha256(open(os.path.join(tiny_gpt2, "model.safetensors"), "rb").read()).hexdigest() == weights
    assert load_prefix(str(tmp_path / "p"), "z2").keys_values.shape == (2, 2, 4, 4, 16)
    code, output = run("generate", tiny_gpt2, "--prefix", tmp_path / "p", "--attribute", "z1", "--prompt", "the cat",
                       "--max-new-tokens", 3, "--no-stream", "--device", "cpu")
    assert code == 0 and output.startswith("the cat"), output


def test_train_prefix_unsupervised_refuses_bad_input(tiny_gpt2, tmp_path):
    from lmkit.model import compose

    texts = tmp_path / "a.txt"
    texts.write_text("the cat sat\n")
    compose("t5-tiny", [f"tokenizer={tiny_gpt2}"], str(tmp_path / "t5"))
    cases = [
        (tiny_gpt2, ["--unsupervised", 2, "--data", f"{texts}:a"], f"give --data {texts} without :a"),
        (tiny_gpt2, ["--data", f"{texts}:a", "--data", f"{texts}:b", "--kl-weight", 2],
         "set the --unsupervised objective; give --unsupervised K"),
        (tiny_gpt2, ["--unsupervised", 1, "--data", texts], "--unsupervised"),
        (tmp_path / "t5", ["--unsupervised", 2, "--data", texts], "is an encoder-decoder; --unsupervised infers"),
    ]
    for model, flags, message in cases:
        code, output = run("train-prefix", model, "--out", tmp_path / "p", "--device", "cpu", *flags)
        assert code != 0 and message in output and "Traceback" not in output, output
    assert not (tmp_path / "p").exists()


@pytest.mark.skipif(os.environ.get("LMKIT_SLOW_TESTS") != "1", reason="trains for minutes; set LMKIT_SLOW_TESTS=1")
def test_latent_prefixes_find_the_two_attributes(tmp_path):
    """Trained on both attributes' texts without their labels, with seed 0 the two latent prefixes each steer toward
    one attribute, a different one each, in at least 80% of their samples. Seeds 1 and 2 do not find both (the
    measurement and why: docs/prefixes.md); this checks that seed 0 still does, as benchmarks/bench_prefixes.py
    --unsupervised measured it."""
    from lmkit.plugins.prefixes.control import make_lm, unsupervised_rates

    lm = make_lm(str(tmp_path), steps=300)
    rates = unsupervised_rates(lm, str(tmp_path), steps=150, samples=64, seed=0)
    found = {latent: max(r, key=r.get) for latent, r in rates.items() if latent != "none"}
    assert sorted(found.values()) == ["negative", "positive"], rates
    assert all(rates[latent][attribute] >= 0.8 for latent, attribute in found.items()), rates
