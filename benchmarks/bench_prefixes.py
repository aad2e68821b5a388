"""How often generations carry an attribute with contrastive prefixes, plain prefixes and none (Qian et al. 2022).

    .venv/bin/python benchmarks/bench_prefixes.py [--lm-steps 300] [--prefix-steps 300] [--samples 64] [--seeds 0 1 2]

Trains a gpt2-tiny on the synthetic two-attribute corpus (lmkit.plugins.prefixes.synthetic), then for each
seed trains prefixes with the supervised contrastive objective (w2 = 1) and the plain prefix-tuning one
(w2 = 0), and prints the share of sampled continuations of "the movie is"-style prompts that the corpus's
word-count classifier labels with the prefix's attribute, without a prefix and with each.
"""
import argparse
import os
import tempfile
import time

from lmkit.plugins.prefixes.control import control_rates, make_lm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lm-steps", type=int, default=300)
    parser.add_argument("--prefix-steps", type=int, default=300)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", help="work here and keep the files (a language model already there is reused)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or scratch
        os.makedirs(root, exist_ok=True)
        start = time.perf_counter()
        lm = os.path.join(root, "lm")
        if not os.path.isdir(lm):
            lm = make_lm(root, steps=args.lm_steps)
        print(f"language model: {args.lm_steps} steps in {time.perf_counter() - start:.0f} s")
        print("seed  prefix            positive  negative")
        for seed in args.seeds:
            rates = control_rates(lm, root, contrast_weights=(1.0, 0.0), steps=args.prefix_steps,
                                  samples=args.samples, seed=seed)
            for key, label in (("none", "none"), (1.0, "contrastive w2=1"), (0.0, "plain w2=0")):
                print(f"{seed:4d}  {label:16s}  {rates[key]['positive']:8.3f}  {rates[key]['negative']:8.3f}",
                      flush=True)


if __name__ == "__main__":
    main()
