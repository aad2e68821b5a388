"""ELMo features against context-free features of the same size, on a tagging task where a word's tag depends
on its context (issue part 7's comparison, run as a script: nothing is asserted, the figures go in the notes).

    OMP_NUM_THREADS=1 python benchmarks/elmo_features.py [--steps 400] [--seeds 3] [--work DIR]

Text: lmkit.synthetic's English Markov source. Task: tag each word with the class of the word before it
(article, adjective, noun, verb, ..., START for the first): a word's own identity leaves its tag ambiguous
(a noun follows an article or an adjective), its left context decides it. An elmo-tiny biLM (projection 32,
64 cells) is trained on the source's text with `lmkit train`; then, with the biLM frozen, two linear taggers
are trained on the same tokens, each for every seed:

    elmo          the scalar mix of the L + 1 layers (its weights and gamma learned with the tagger)
    context-free  layer 0, the char CNN's token representation [x; x], of the same width (2P)

Reported: test accuracy per seed, and the mean.

With --tagger, the paper's task model instead (Peters et al. §3.3), fine-tuned with `lmkit finetune --task
token-classification` on --train-sentences tagged sentences (CoNLL files written from the same source) and
scored with `lmkit predict` on 200 others, for each seed:

    elmo-bilstm         [word embedding; ELMo mix] into a BiLSTM tagger, the biLM frozen
    elmo-bilstm-output  the same, with a second mix of ELMo beside the BiLSTM's states at the output
    word-bilstm         the same BiLSTM tagger over the word embedding alone (no ELMo)
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work")
    parser.add_argument("--tagger", action="store_true", help="the BiLSTM tagger recipes through lmkit finetune")
    parser.add_argument("--train-sentences", type=int, default=100)
    parser.add_argument("--tagger-steps", type=int, default=300)
    parser.add_argument("--recipes", default="elmo-bilstm,elmo-bilstm-output,word-bilstm",
                        help="--tagger: the recipes to compare, comma-separated")
    args = parser.parse_args()
    from lmkit.model import compose, load_model
    from lmkit.nn.scalar_mix import ScalarMix
    from lmkit.synthetic import ENGLISH, MarkovSource
    from lmkit.tokenizers import Word, WordOptions
    from lmkit.training import train

    work = args.work or tempfile.mkdtemp(prefix="elmo-features-")
    os.makedirs(work, exist_ok=True)
    source = MarkovSource.english(seed=0)
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as handle:
        handle.write("\n\n".join(source.text(d) for d in source.sample(3000, seed=0)) + "\n")
    model_dir = os.path.join(work, "model")
    if not os.path.isdir(model_dir):
        Word.train([corpus], WordOptions(vocab_size=100), progress=False).save(os.path.join(work, "tok"))
        compose("elmo-tiny", [f"tokenizer={os.path.join(work, 'tok')}", "encoder.projection_dim=32",
                              "encoder.lstm_dim=64"], model_dir)
        train(model_dir, [corpus], steps=args.steps, batch_size=16, seq_len=32, lr=3e-3, warmup=40, eval_every=0,
              save_every=0, device="cpu", progress=False)
    if args.tagger:
        return tagger(args, source, model_dir, work)
    model, tokenizer, _ = load_model(model_dir)
    word_class = {w: name for name, words in ENGLISH.items() for w in words.split()}
    classes = ["START", *ENGLISH]

    def tagged(n, seed):
        """(layers (N, L + 1, 2P), tags (N,)) of every word of n fresh documents (at most 30 words each)."""
        features, tags = [], []
        for document in source.sample(n, seed=seed):
            words = source.text(document).split()[:30]
            ids = torch.tensor([tokenizer.encode(" ".join(words), add_special_tokens=True)])
            with torch.no_grad():
                layers = torch.stack(model.encoder.layers(ids), dim=2)[0, 1:-1]  # drop <s> and </s>
            features.append(layers)
            tags += [classes.index("START" if i == 0 else word_class[words[i - 1]]) for i in range(len(words))]
        return torch.cat(features), torch.tensor(tags)

    train_x, train_y = tagged(300, seed=1)
    test_x, test_y = tagged(200, seed=2)
    width = train_x.shape[-1]
    print(f"biLM: {args.steps} steps; tagging: {len(train_y)} train and {len(test_y)} test words, "
          f"{len(classes)} tags, features {width} wide")

    def fit(kind: str, seed: int) -> float:
        torch.manual_seed(seed)
        mix = ScalarMix(train_x.shape[1])
        linear = torch.nn.Linear(width, len(classes))
        parameters = [*linear.parameters(), *(mix.parameters() if kind == "elmo" else [])]
        optimizer = torch.optim.Adam(parameters, lr=1e-2)

        def features(x):
            return mix(list(x.unbind(1))) if kind == "elmo" else x[:, 0]

        order = torch.randperm(len(train_y))
        for step in range(300):
            batch = order[(step * 256) % len(order):][:256]
            loss = torch.nn.functional.cross_entropy(linear(features(train_x[batch])), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return (linear(features(test_x)).argmax(-1) == test_y).float().mean().item()

    for kind in ("elmo", "context-free"):
        accuracies = [fit(kind, seed) for seed in range(args.seeds)]
        print(f"{kind:<13} test accuracy " + "  ".join(f"{a:.3f}" for a in accuracies)
              + f"   mean {np.mean(accuracies):.3f}")


def tagger(args, source, model_dir: str, work: str) -> None:
    import json
    import subprocess
    import sys

    from lmkit.synthetic import ENGLISH

    word_class = {w: name for name, words in ENGLISH.items() for w in words.split()}

    def conll(path: str, n: int, seed: int) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            for document in source.sample(n, seed=seed):
                words = source.text(document).split()[:30]
                tags = ["START" if i == 0 else word_class[words[i - 1]] for i in range(len(words))]
                handle.write("".join(f"{w} {t}\n" for w, t in zip(words, tags)) + "\n")

    files = {name: os.path.join(work, f"{name}.conll") for name in ("train", "dev", "test")}
    conll(files["train"], args.train_sentences, 11)
    conll(files["dev"], 50, 12)
    conll(files["test"], 200, 13)
    lmkit = [sys.executable, "-m", "lmkit"]
    print(f"tagger: {args.train_sentences} training sentences, {args.tagger_steps} steps, 200 test sentences")
    for recipe in args.recipes.split(","):
        accuracies = []
        for seed in range(args.seeds):
            out = os.path.join(work, f"{recipe}-{seed}")
            subprocess.run([*lmkit, "finetune", model_dir, "--task", "token-classification", "--recipe", recipe,
                            "--train", files["train"], "--dev", files["dev"], "--out", out, "--steps",
                            str(args.tagger_steps), "--batch-size", "16", "--seed", str(seed), "--force",
                            "--eval-every", str(args.tagger_steps)], check=True, capture_output=True)
            result = subprocess.run([*lmkit, "predict", os.path.join(out, "best"), "--data", files["test"]],
                                    check=True, capture_output=True, text=True)
            right = total = 0
            gold = [line.split() for line in open(files["test"], encoding="utf-8")]
            gold = [[]] + gold
            for line in result.stdout.splitlines():
                row = json.loads(line)
                for i, tag in enumerate(row["tags"]):
                    right += tag == gold[row["line"] + i][1]
                    total += 1
            accuracies.append(right / total)
        print(f"{recipe:<19} test accuracy " + "  ".join(f"{a:.3f}" for a in accuracies)
              + f"   mean {np.mean(accuracies):.3f}", flush=True)


if __name__ == "__main__":
    main()
