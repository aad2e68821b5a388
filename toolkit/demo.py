"""`lmkit demo`: the whole path on data with a known answer, in about two minutes on 2 CPU cores.

A random Markov chain over real English words, each followed by words of the classes a small
grammar allows, writes the corpus, so the best achievable perplexity is known exactly; a byte-level BPE tokenizer and a small GPT-2 are trained on it, the model's
held-out perplexity is compared with that floor, and it generates with each decoding strategy.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class DemoSize:
    train_documents: int = 6000
    valid_documents: int = 300
    vocab_size: int = 512
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 600
    lr: float = 3e-3


NO_REPEAT = 3  # the beam's no_repeat_ngram_size


def say(message: str) -> None:
    click.secho(message, err=True, bold=True)


def run_demo(out: str, size: DemoSize = DemoSize(), seed: int = 0, force: bool = False) -> dict:
    from .artifacts import claimed_directory
    from .decoding.torch_backend import TorchBackend
    from .evaluation import score_against_source
    from .model import compose, load_model
    from .registry import get_host
    from .synthetic import MarkovSource, write_corpus
    from .tokenizers import ByteLevelBPE, ByteLevelBPEOptions
    from .training import train

    started = time.perf_counter()
    # In place, since the training state records the corpus's absolute paths; a failure (Ctrl-C included)
    # removes what was written and puts back the directory --force was replacing.
    with claimed_directory(out, force):
        corpus, tokenizer_dir, model_dir = (os.path.join(out, name) for name in ("corpus", "tokenizer", "model"))
        source = MarkovSource.english(branching=4, mean_length=40, seed=seed)
        say(f"1/5  writing a corpus from a random Markov chain over {source.n_words} English words")
        facts = write_corpus(corpus, source, size.train_documents, size.valid_documents, seed=seed)
        say(f"     true entropy rate: {facts['entropy_rate_nats_per_symbol']:.3f} nats per word")

        say(f"2/5  training a byte-level BPE tokenizer (up to {size.vocab_size} tokens)")
        tokenizer = ByteLevelBPE.train([os.path.join(corpus, "train.jsonl")],
                                       ByteLevelBPEOptions(vocab_size=size.vocab_size), progress=False)
        tokenizer.save(tokenizer_dir)
        if tokenizer.vocab_size < size.vocab_size:  # a small vocabulary of words runs out of merges first
            say(f"     {tokenizer.vocab_size} tokens: every merge the corpus has")

        say(f"3/5  training a GPT-2 ({size.n_layers} layers, {size.d_model} wide) for {size.steps} steps")
        # Sized to the tokenizer by compose; named for what it is, based on gpt-mini (lmkit show says both).
        compose("gpt-mini", [f"tokenizer={tokenizer_dir}", "name=demo-gpt2",
                             f"decoder.n_layers={size.n_layers}", f"decoder.d_model={size.d_model}",
                             f"decoder.n_heads={size.n_heads}", f"decoder.max_positions={size.seq_len}"],
                model_dir, seed=seed)
        last = train(model_dir, [os.path.join(corpus, "train.jsonl")],
                     val_data=[os.path.join(corpus, "valid.jsonl")], steps=size.steps, batch_size=size.batch_size,
                     seq_len=size.seq_len, lr=size.lr, warmup=size.steps // 10, eval_every=size.steps // 3,
                     save_every=0, log_every=20, seed=seed, device="cpu")

        say("4/5  scoring the held-out documents against the entropy floor")
        model, tokenizer, _ = load_model(model_dir)
        model.eval()
        score, true_nll = score_against_source(model.decoder, tokenizer, source, os.path.join(corpus, "valid.jsonl"),
                                               size.seq_len)
        floor = math.exp(sum(true_nll) / score.tokens)

        say("5/5  generating from the first two words of a held-out document")
        prompt = " ".join(source.text(source.sample(1, seed=seed + 7)[0]).split()[:2])
        generations = {}
        host = get_host()
        # Beam search seeks the likeliest continuation, and the likeliest walk of a chain loops through its
        # likeliest transitions: without a ban on repeated 3-grams a beam repeats itself to the end.
        for name, options in (("greedy", {"max_new_tokens": 16}),
                              ("beam", {"max_new_tokens": 16, "num_beams": 4, "no_repeat_ngram_size": NO_REPEAT}),
                              ("sample", {"max_new_tokens": 16, "temperature": 0.8, "top_p": 0.9, "seed": seed})):
            component = host.component("decoding", name)
            strategy = component.load()(component.options_class()(**options))
            backend = TorchBackend(model.decoder, options["max_new_tokens"])
            result = strategy.generate(backend, [tokenizer.encode(prompt)], eos_id=tokenizer.eos_id,
                                       pad_id=tokenizer.eos_id)[0]
            generations[name] = prompt + tokenizer.decode(result.tokens)

        summary = {
            "directory": os.path.abspath(out),
            "perplexity": score.perplexity, "floor": floor, "ratio": score.perplexity / floor,
            "bits_per_token": score.bits_per_token, "train_loss": last.get("loss"),
            "generations": generations, "seconds": time.perf_counter() - started,
        }
        return summary


def report(summary: dict) -> None:
    """The demo's results on stdout, and what to try next."""
    out = summary["directory"]
    lines = [
        "",
        f"held-out perplexity {summary['perplexity']:.3f} per token; the true source allows "
        f"{summary['floor']:.3f} (ratio {summary['ratio']:.3f}; 1.000 would be a perfect model)",
        "",
    ]
    lines += [f"{name:>7}: {text}" for name, text in summary["generations"].items()]
    lines += [
        f"(the beam bans repeating any {NO_REPEAT} tokens: the likeliest walk of a Markov chain loops through its "
        "likeliest words, so an unconstrained beam, or greedy, repeats itself)",
        "",
        f"written to {out} in {summary['seconds']:.0f} s:",
        "  corpus/      train.jsonl, valid.jsonl, source.json (the chain itself)",
        "  tokenizer/   tokenizer.json",
        "  model/       config.json, model.safetensors, metrics.jsonl, trainer state",
        "",
        "try next:",
        f"  lmkit show {out}/model",
        f"  lmkit generate {out}/model --prompt \"{summary['generations']['greedy'].split()[0]}\" --strategy beam --num-beams 8 "
        f"--no-repeat-ngram-size {NO_REPEAT}",
        f"  lmkit train {out}/model --resume --steps 1200      # keep training",
        f"  lmkit plot {out}/model                              # loss and perplexity curves (needs lmkit-toolkit[plot])",
    ]
    click.echo("\n".join(lines))
