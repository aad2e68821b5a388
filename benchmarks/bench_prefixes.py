"""How often generations carry an attribute with contrastive prefixes, plain prefixes and none (Qian et al. 2022).

    .venv/bin/python benchmarks/bench_prefixes.py [--lm-steps 300] [--prefix-steps 300] [--samples 64] [--seeds 0 1 2]
    .venv/bin/python benchmarks/bench_prefixes.py --unsupervised [--prefix-steps 150] [--seeds 0 1 2]

Trains a gpt2-tiny on the synthetic two-attribute corpus (lmkit.plugins.prefixes.synthetic), then for each
seed trains prefixes with the supervised contrastive objective (w2 = 1) and the plain prefix-tuning one
(w2 = 0), and prints the share of sampled continuations of "the movie is"-style prompts that the corpus's
word-count classifier labels with the prefix's attribute, without a prefix and with each.

--unsupervised: instead, two latent prefixes (train-prefix --unsupervised 2) trained on both attributes' texts
without their labels, with the margin term (w2 = 1) and without it (w2 = 0), and for each latent prefix the share
of its samples the classifier labels positive and negative: a latent prefix that found an attribute steers
toward it, and the two should find different ones.
"""
import argparse
import os
import tempfile
import time

from lmkit.plugins.prefixes.control import control_rates, make_lm, unsupervised_rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lm-steps", type=int, default=300)
    parser.add_argument("--prefix-steps", type=int, default=300)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", help="work here and keep the files (a language model already there is reused)")
    parser.add_argument("--unsupervised", action="store_true", help="measure the latent (unlabelled) prefixes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or scratch
        os.makedirs(root, exist_ok=True)
        start = time.perf_counter()
        lm = os.path.join(root, "lm")
        if os.path.isdir(lm):
            print(f"language model: {lm}, reused")
        else:
            lm = make_lm(root, steps=args.lm_steps)
            print(f"language model: {args.lm_steps} steps in {time.perf_counter() - start:.0f} s")
        print("seed  prefix            positive  negative")
        if args.unsupervised:
            for seed in args.seeds:
                for weight in (1.0, 0.0):
                    start = time.perf_counter()
                    rates = unsupervised_rates(lm, root, steps=args.prefix_steps, samples=args.samples, seed=seed,
                                               contrast_weight=weight)
                    if weight == 1.0:
                        print(f"{seed:4d}  {'none':16s}  {rates['none']['positive']:8.3f}  "
                              f"{rates['none']['negative']:8.3f}")
                    for latent in ("z0", "z1"):
                        label = f"{latent} w2={weight:g}"
                        print(f"{seed:4d}  {label:16s}  {rates[latent]['positive']:8.3f}  "
                              f"{rates[latent]['negative']:8.3f}", flush=True)
                    print(f"      ({time.perf_counter() - start:.0f} s)", flush=True)
            return
        for seed in args.seeds:
            rates = control_rates(lm, root, contrast_weights=(1.0, 0.0), steps=args.prefix_steps,
                                  samples=args.samples, seed=seed)
            for key, label in (("none", "none"), (1.0, "contrastive w2=1"), (0.0, "plain w2=0")):
                print(f"{seed:4d}  {label:16s}  {rates[key]['positive']:8.3f}  {rates[key]['negative']:8.3f}",
                      flush=True)


if __name__ == "__main__":
    main()
