"""Sutskever et al. 2014's finding on the synthetic task: reversing the source helps a Seq2Seq without attention.

    python benchmarks/bench_seq2seq_reversal.py [--steps 1500] [--threads 1] [--out DIR]

Trains the same small Seq2Seq (no attention, decoder started from the encoder's final state) twice,
with and without source reversal, and the attentional NMT model once, on sentences of 1-4 clauses
of lmkit.synthetic_translation; then prints corpus BLEU (sacrebleu) with greedy and beam search on
held-out long sentences (3-4 clauses, 20-40 words) and on short ones (1 clause), and training times.
Nothing is asserted: the figures are for the notes (docs/families/seq2seq.md).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from lmkit.decoding.beam import BeamSearch
from lmkit.decoding.greedy import Greedy
from lmkit.decoding.options import BeamSearchOptions, GreedyOptions
from lmkit.model import compose
from lmkit.opening import open_model
from lmkit.seq2seq import evaluate_bleu
from lmkit.synthetic_translation import TranslationTask, write_task
from lmkit.tokenizers import WordBPEOptions, train_tokenizer
from lmkit.training import train

TASK = TranslationTask(0, nouns=8, adjectives=5, verbs=5)

MODELS = {
    "seq2seq, reversed": ("seq2seq-tiny", ["encoder.reverse_source=true"]),
    "seq2seq, not reversed": ("seq2seq-tiny", ["encoder.reverse_source=false"]),
    "nmt (attention)": ("nmt-tiny", []),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=128, help="LSTM units of the Seq2Seq models")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.out or tempfile.mkdtemp(prefix="lmkit-reversal-")
    files = write_task(os.path.join(root, "data"), n_train=8000, n_valid=200, clauses=(1, 4), task=TASK)
    tests = {"long (3-4 clauses)": TASK.pairs(150, seed=11, clauses=(3, 4)),
             "short (1 clause)": TASK.pairs(150, seed=12, clauses=(1, 1))}
    tokenizer = train_tokenizer("bpe", [files["train.src"], files["train.tgt"]],
                                WordBPEOptions(vocab_size=200, min_frequency=1,
                                               special_tokens=("<pad>", "<unk>", "<s>", "</s>")), progress=False)
    tokenizer.save(os.path.join(root, "tok"))
    print(f"{'model':24} {'test':20} {'greedy':>7} {'beam 4':>7} {'train s':>8} {'val loss':>8}")
    for name, (preset, overrides) in MODELS.items():
        model_dir = os.path.join(root, name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", ""))
        sizes = ([f"encoder.hidden_size={args.hidden}", f"decoder.hidden_size={args.hidden}",
                  f"decoder.d_encoder={args.hidden}"] if preset == "seq2seq-tiny" else [])
        compose(preset, [f"tokenizer={root}/tok", "encoder.vocab_size=200", "decoder.vocab_size=200", *sizes,
                         *overrides], model_dir, force=True)
        started = time.perf_counter()
        record = train(model_dir, data=[files["train.src"], files["train.tgt"]],
                       val_data=[files["valid.src"], files["valid.tgt"]], steps=args.steps, batch_size=32,
                       seq_len=64, lr=1e-2, warmup=50, weight_decay=0.0, grad_clip=5.0, eval_every=0,
                       save_every=0, progress=False)
        seconds = time.perf_counter() - started
        translator = open_model(model_dir, device="cpu")
        for test, pairs in tests.items():
            greedy, _ = evaluate_bleu(translator, Greedy(GreedyOptions(max_new_tokens=80)), pairs)
            beam, _ = evaluate_bleu(translator, BeamSearch(BeamSearchOptions(max_new_tokens=80, num_beams=4)), pairs)
            print(f"{name:24} {test:20} {greedy.score:7.2f} {beam.score:7.2f} {seconds:8.1f} "
                  f"{record['val_loss']:8.4f}", flush=True)
    print(f"signature: {greedy.signature}; models and data in {root}")


if __name__ == "__main__":
    main()
