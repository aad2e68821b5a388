"""GLM's blank infilling against a left-to-right model on the same positions (Du et al. 2022 §2.1).

A glm-tiny trained on token-level blanks and a gpt2-tiny (the same width, depth, heads and context)
trained as a left-to-right LM, for the same steps on the same text of the repo's Markov source, score the
same tokens of held-out text: token-level blanks drawn by GLM's own data pipeline (Poisson(3) spans until
15% of the tokens), one draw per document from a fixed seed. GLM fills each blank seeing the text on both
sides of it (the other blanks masked, the spans before it in Part B); the left-to-right model predicts each
of those tokens from all the text before it, and nothing after. Lower perplexity on the same tokens means
the other side of the blank helps.

    python benchmarks/glm_infilling.py --steps 800 --threads 1

Both runs and the scoring are lmkit's own code (lmkit.plugins.glm.evaluation: blank_samples,
infilling_nll, left_to_right_nll); tests/test_glm_infilling.py checks their mechanics.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps of each model")
    parser.add_argument("--glm-steps", type=int,
                        help="GLM's steps, if other than --steps: a step of blanks predicts about 15%% of its tokens, "
                             "a left-to-right step all of them  [default: --steps]")
    parser.add_argument("--documents", type=int, default=400, help="held-out documents scored")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="which blanks the held-out documents get")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from lmkit.model import compose, load_model
    from lmkit.plugins.glm.data import special_ids
    from lmkit.plugins.glm.evaluation import blank_samples, infilling_nll, left_to_right_nll
    from lmkit.synthetic import MarkovSource, write_corpus
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions
    from lmkit.training import train

    source = MarkovSource.random(n_words=24, branching=3, mean_length=30, seed=0)
    with tempfile.TemporaryDirectory() as root:
        corpus = os.path.join(root, "corpus")
        write_corpus(corpus, source, n_train=8000, n_valid=args.documents, seed=0)
        train_file, valid_file = os.path.join(corpus, "train.jsonl"), os.path.join(corpus, "valid.jsonl")
        tok = os.path.join(root, "tok")
        ByteLevelBPE.train([train_file], ByteLevelBPEOptions(vocab_size=320), progress=False).save(tok)
        dirs, seconds = {}, {}
        for name, preset in (("glm", "glm-tiny"), ("gpt2", "gpt2-tiny")):
            dirs[name] = os.path.join(root, name)
            compose(preset, [f"tokenizer={tok}"], dirs[name])  # glm-tiny: token-level blanks only (its preset)
            began = time.perf_counter()
            steps = args.glm_steps or args.steps if name == "glm" else args.steps
            train(dirs[name], [train_file], val_data=[valid_file], steps=steps, batch_size=16, seq_len=64,
                  lr=3e-3, warmup=steps // 10, eval_every=0, save_every=0, device="cpu", progress=False)
            seconds[name] = time.perf_counter() - began

        glm, tokenizer, _ = load_model(dirs["glm"])
        gpt2, gpt2_tokenizer, _ = load_model(dirs["gpt2"])
        ids = special_ids(tokenizer)
        options = glm.objectives["blank-infilling"].options
        texts = [tokenizer.encode(source.text(d)) for d in source.sample(args.documents, seed=1)]  # valid.jsonl's
        # a blank at least (15% of the text is a token), and the sample within the 64 positions
        texts = [t for t in texts if int(0.15 * len(t)) >= 1 and len(t) + 2 * (int(0.15 * len(t)) + 1) <= 64]
        samples = blank_samples(texts, ids, options, seed=args.seed)
        g_nll, g_count = infilling_nll(glm.eval().decoder, samples, ids["[E]"])
        l_nll, l_count = left_to_right_nll(gpt2.eval().decoder, texts, samples, gpt2_tokenizer.eos_id)
    assert g_count == l_count
    g, lr = math.exp(g_nll / g_count), math.exp(l_nll / l_count)
    print(f"{len(texts)} held-out documents, {g_count} blanked tokens in {sum(len(s.spans) for s in samples)} "
          f"token-level blanks (seed {args.seed}); batch 16 x 64")
    print(f"glm-tiny, blank infilling (both sides)     perplexity {g:.4f}   {args.glm_steps or args.steps} steps in "
          f"{seconds['glm']:.0f} s")
    print(f"gpt2-tiny, left to right (left side only)  perplexity {lr:.4f}   {args.steps} steps in "
          f"{seconds['gpt2']:.0f} s")
    print(f"ratio glm / left-to-right {g / lr:.4f}")


if __name__ == "__main__":
    main()
