"""A trained model's perplexity lands just above the true entropy of its data, never below it."""
import math

import numpy as np

from lmkit.evaluation import score_against_source
from lmkit.model import compose, load_model
from lmkit.synthetic import MarkovSource, write_corpus
from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions, load_tokenizer
from lmkit.training import train


def test_heldout_perplexity_is_within_5_percent_above_the_entropy_floor(tmp_path):
    source = MarkovSource.random(n_words=24, branching=3, mean_length=30, seed=0)
    corpus = tmp_path / "corpus"
    write_corpus(str(corpus), source, n_train=8000, n_valid=400, seed=0)
    train_file, valid_file = str(corpus / "train.jsonl"), str(corpus / "valid.jsonl")
    ByteLevelBPE.train([train_file], ByteLevelBPEOptions(vocab_size=320), progress=False).save(str(tmp_path / "tok"))
    vocab = load_tokenizer(str(tmp_path / "tok")).vocab_size
    model_dir = str(tmp_path / "model")
    compose("gpt2-tiny", [f"tokenizer={tmp_path / 'tok'}", f"decoder.vocab_size={vocab}"], model_dir)
    train(model_dir, [train_file], val_data=[valid_file], steps=800, batch_size=16, seq_len=64, lr=3e-3,
          warmup=80, eval_every=0, save_every=0, device="cpu", progress=False)

    model, tokenizer, _ = load_model(model_dir)
    score, true_nll = score_against_source(model.eval().decoder, tokenizer, source, valid_file, context=64)
    floor = math.exp(sum(true_nll) / score.tokens)
    ratio = score.perplexity / floor
    # No model beats the source in expectation; on 400 documents it can by chance, by about the
    # standard error of their total NLL (an upper bound for that of the model-minus-source gap).
    noise = 3 * np.std(true_nll) * math.sqrt(len(true_nll)) / score.tokens
    assert math.exp(-noise) <= ratio <= 1.05, (score.perplexity, floor)
