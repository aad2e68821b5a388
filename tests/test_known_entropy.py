"""A trained model's perplexity lands just above the true entropy of its data, never below it."""
import math

import numpy as np
import pytest

from lmkit.evaluation import score_against_source
from lmkit.model import compose, load_model
from lmkit.synthetic import MarkovSource, write_corpus
from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions, load_tokenizer
from lmkit.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model directory, held-out .jsonl, the source): gpt2-tiny trained 800 steps on a Markov chain's text."""
    tmp_path = tmp_path_factory.mktemp("known-entropy")
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
    return model_dir, valid_file, source


def test_heldout_perplexity_is_within_5_percent_above_the_entropy_floor(trained):
    model_dir, valid_file, source = trained
    model, tokenizer, _ = load_model(model_dir)
    score, true_nll = score_against_source(model.eval().decoder, tokenizer, source, valid_file, context=64)
    floor = math.exp(sum(true_nll) / score.tokens)
    ratio = score.perplexity / floor
    # No model beats the source in expectation; on 400 documents it can by chance, by about the
    # standard error of their total NLL (an upper bound for that of the model-minus-source gap).
    noise = 3 * np.std(true_nll) * math.sqrt(len(true_nll)) / score.tokens
    assert math.exp(-noise) <= ratio <= 1.05, (score.perplexity, floor)


def test_int8_and_int4_keep_the_trained_models_top1_and_perplexity(trained, tmp_path):
    """--quantize int8, int4 on a trained model (blocks in 4 bits, output projection in 8), and everything in 4
    bits: top-1 agreement with PyTorch and perplexity on held-out text (benchmarks/quantized_quality.py measures
    a larger model). Measured: int8 top-1 0.988, perplexity x 1.0000; int4 0.984, x 1.0004; all in 4 bits
    0.932, x 1.0018. A broken quantization (a weight transposed, a wrong scale) lands near chance."""
    import json

    pytest.importorskip("onnxscript")
    import onnxruntime
    import torch

    from lmkit.decoding.common import log_softmax
    from lmkit.exports.export import export_model
    from lmkit.exports.precision import Int4Options, to_int4, to_int8

    model_dir, valid_file, _ = trained
    model, tokenizer, _ = load_model(model_dir)
    fp32 = tmp_path / "fp32"
    export_model(model_dir, str(fp32))
    lines = open(valid_file, encoding="utf-8").read().splitlines()[:100]
    documents = [([tokenizer.eos_id] + tokenizer.encode(json.loads(line)["text"]))[:64] for line in lines]
    with torch.no_grad():
        reference = [torch.log_softmax(model.eval().decoder(torch.tensor([ids]))[0], -1).numpy() for ids in documents]

    def scores(graph: str) -> tuple[float, float]:
        """(top-1 agreement with PyTorch, perplexity) of the graph over the documents, each alone from no past."""
        session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
        empty = {i.name: np.zeros([0 if "past" in str(d) else 1 if "batch" in str(d) else d for d in i.shape],
                                  dtype=np.float32) for i in session.get_inputs() if i.name.startswith("past")}
        agree = total = 0
        nll = count = 0.0
        for ids, expected in zip(documents, reference):
            feeds = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
                     "position_ids": np.arange(len(ids))[None], **empty}
            log_probs = log_softmax(session.run(["logits"], feeds)[0][0])
            agree += int((log_probs.argmax(-1) == expected.argmax(-1)).sum())
            total += len(ids)
            nll -= float(log_probs[np.arange(len(ids) - 1), ids[1:]].sum())
            count += len(ids) - 1
        return agree / total, math.exp(nll / count)

    base = math.exp(-sum(float(lp[np.arange(len(ids) - 1), ids[1:]].sum()) for lp, ids in zip(reference, documents))
                    / sum(len(ids) - 1 for ids in documents))
    for name, convert, min_top1, max_ratio in (
            ("int8", to_int8, 0.97, 1.01), ("int4", lambda *paths: to_int4(*paths, Int4Options()), 0.95, 1.02),
            ("int4-all", lambda *paths: to_int4(*paths, Int4Options(output_bits=4, embeddings=True)), 0.90, 1.05)):
        graph = tmp_path / name / "model.onnx"
        graph.parent.mkdir()
        convert(str(fp32 / "model.onnx"), str(graph))
        top1, perplexity = scores(str(graph))
        print(f"{name}: top-1 {top1:.4f}, perplexity {perplexity:.4f} against {base:.4f} (x {perplexity / base:.4f})")
        assert top1 >= min_top1 and perplexity / base <= max_ratio, (name, top1, perplexity, base)
