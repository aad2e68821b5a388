"""The control measurement of Qian et al. 2022 on the synthetic two-attribute corpus: how often generations
carry an attribute without a prefix and with each trained prefix (tests/test_prefixes.py, benchmarks/bench_prefixes.py).
"""
from __future__ import annotations

import os

from .synthetic import attribute_rate, make_corpus

PROMPTS = ["the movie is", "the plot is", "the music is", "the actor is"]


def make_lm(root: str, steps: int = 300, n_per_attribute: int = 2000, seed: int = 0) -> str:
    """Write the corpus (root/positive.txt, root/negative.txt), a word-level BPE in which every word is one token, and a gpt2-tiny trained on
    both attributes for `steps` steps; returns the model directory."""
    from lmkit.model import compose
    from lmkit.tokenizers import WordBPE, WordBPEOptions, load_tokenizer
    from lmkit.training import train

    corpus = make_corpus(n_per_attribute, seed=seed)
    for attribute, texts in corpus.items():
        with open(os.path.join(root, f"{attribute}.txt"), "w") as out:
            out.write("\n".join(texts) + "\n")
    both = os.path.join(root, "both.txt")
    with open(both, "w") as out:
        out.write("\n".join(text for texts in corpus.values() for text in texts) + "\n")
    WordBPE.train([both], WordBPEOptions(vocab_size=160, min_frequency=1), progress=False).save(os.path.join(root, "tok"))
    vocab = load_tokenizer(os.path.join(root, "tok")).vocab_size
    model_dir = os.path.join(root, "lm")
    compose("gpt2-tiny", [f"tokenizer={os.path.join(root, 'tok')}", f"decoder.vocab_size={vocab}"], model_dir)
    train(model_dir, [both], steps=steps, batch_size=16, seq_len=64, lr=3e-3, warmup=20, eval_every=0,
          save_every=0, device="cpu", progress=False, seed=seed)
    return model_dir


def sample_rates(model, prefixes: dict, samples: int = 64, seed: int = 0) -> dict[str, float]:
    """{attribute: share of `samples` sampled continuations of PROMPTS the classifier labels so}, each attribute
    with prefixes[attribute] (a CachePrefix, or None for no prefix)."""
    tokenizer = model.tokenizer
    ids = tokenizer.encode_batch([PROMPTS[i % len(PROMPTS)] for i in range(samples)])
    decoding = model.decoding("sample", max_new_tokens=8, seed=seed)
    rates = {}
    for attribute, prefix in prefixes.items():
        texts = [tokenizer.decode(result.tokens) for result in model.generate_ids(ids, decoding, prefix=prefix)]
        rates[attribute] = attribute_rate(texts, attribute)
    return rates


def control_rates(model_dir: str, root: str, contrast_weights=(1.0, 0.0), steps: int = 150, length: int = 5,
                  samples: int = 64, seed: int = 0, lr: float = 3e-2) -> dict:
    """{"none": rates without a prefix, w2: rates with prefixes trained at contrast weight w2, ...}."""
    from lmkit import open_model
    from lmkit.prefix import load_prefix

    from .training import train_prefixes

    model = open_model(model_dir, device="cpu")
    attributes = ["positive", "negative"]
    sources = [(os.path.join(root, f"{attribute}.txt"), attribute) for attribute in attributes]
    results = {"none": sample_rates(model, dict.fromkeys(attributes), samples, seed)}
    for weight in contrast_weights:
        out = os.path.join(root, f"prefix-w{weight:g}")
        train_prefixes(model_dir, sources, out, length=length, contrast_weight=weight, steps=steps, lr=lr,
                       seed=seed, device="cpu")
        prefixes = {attribute: load_prefix(out, attribute) for attribute in attributes}
        results[weight] = sample_rates(model, prefixes, samples, seed)
    return results


def unsupervised_rates(model_dir: str, root: str, steps: int = 150, length: int = 5, samples: int = 64,
                       seed: int = 0, lr: float = 3e-2, **objective) -> dict:
    """{"none": rates without a prefix, "z0": {attribute: share of z0's samples the classifier labels so}, "z1": ...}
    for two latent prefixes trained (`lmkit train-prefix --unsupervised 2`) on both attributes' texts, unlabelled.
    objective: LatentPrefixes' options (kl_weight, margin, temperature, contrast_weight)."""
    from lmkit import open_model
    from lmkit.prefix import load_prefix

    from .training import train_prefixes

    model = open_model(model_dir, device="cpu")
    attributes = ["positive", "negative"]
    results = {"none": sample_rates(model, dict.fromkeys(attributes), samples, seed)}
    out = os.path.join(root, "prefix-unsupervised")
    train_prefixes(model_dir, [(os.path.join(root, "both.txt"), None)], out, length=length, steps=steps, lr=lr,
                   seed=seed, device="cpu", unsupervised=2, **objective)
    for latent in ("z0", "z1"):
        prefix = load_prefix(out, latent)
        results[latent] = {attribute: sample_rates(model, {attribute: prefix}, samples, seed)[attribute]
                           for attribute in attributes}
    return results
