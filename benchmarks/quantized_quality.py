"""What int8 and int4 cost a trained model: top-1 agreement with PyTorch fp32 and perplexity on held-out text.

    python benchmarks/quantized_quality.py [--preset gpt-tiny] [--steps 600] [--documents 200] [--work DIR]
                                           [--threads 2]

A model of --preset (its vocabulary sized to the tokenizer) is trained for --steps on text drawn from
lmkit.synthetic's English Markov source, whose true entropy is known, then exported four ways with
`lmkit export`: fp32, --quantize int8, --quantize int4 (blocks in 4 bits, the output projection in 8)
and int4 with --int4-output --int4-embeddings ("int4all"). Over the held-out documents (each cut to the
context, scored from its first token) it prints, for PyTorch and each export:

    top-1     the share of positions where the export's most likely next token is PyTorch fp32's
    ppl       perplexity per token of the documents' tokens after the first
    x fp32    that perplexity over PyTorch fp32's (1.000: quantization cost nothing)
    MB        model.onnx's size

and, to show the model learnt its text, PyTorch's perplexity over whole documents against the Markov
source's own over the same tokens, the floor no model beats on average (lmkit.evaluation.score_against_source).

Nothing is asserted; --work keeps the corpus, the model and the exports between runs (training is skipped
when the model is there). Training takes most of the time: the defaults ran in about 15 minutes on two
heavily shared CPU cores (figures in docs/export.md); --preset gpt-mini (6 x 384) did not finish 1500 steps
there in half an hour.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile

import numpy as np

VARIANTS = {"fp32": ("fp32", {}), "int8": ("int8", {}), "int4": ("int4", {}),
            "int4all": ("int4", {"output_bits": 4, "embeddings": True})}


def prepare(work: str, preset: str, steps: int, documents: int) -> tuple[str, str, object]:
    """(model directory, held-out .jsonl, the source), trained unless already there."""
    from lmkit.model import compose
    from lmkit.synthetic import MarkovSource, write_corpus
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions, load_tokenizer
    from lmkit.training import train

    source = MarkovSource.english(seed=0)
    corpus, model_dir = os.path.join(work, "corpus"), os.path.join(work, "model")
    if not os.path.isfile(os.path.join(corpus, "valid.jsonl")):
        write_corpus(corpus, source, n_train=20000, n_valid=documents, seed=0)
    train_file, valid_file = os.path.join(corpus, "train.jsonl"), os.path.join(corpus, "valid.jsonl")
    if not os.path.isfile(os.path.join(model_dir, "trainer_state.json")):
        tokenizer_dir = os.path.join(work, "tok")
        ByteLevelBPE.train([train_file], ByteLevelBPEOptions(vocab_size=320), progress=False).save(tokenizer_dir)
        vocab = load_tokenizer(tokenizer_dir).vocab_size
        compose(preset, [f"tokenizer={tokenizer_dir}", f"decoder.vocab_size={vocab}"], model_dir, force=True)
        train(model_dir, [train_file], steps=steps, batch_size=16, seq_len=64, lr=1e-3, warmup=steps // 10,
              eval_every=0, save_every=0, device="cpu", progress=False)
    return model_dir, valid_file, source


def document_ids(model_dir: str, valid_file: str) -> tuple[list[list[int]], int]:
    """Each held-out document's tokens after an end-of-text (as score_against_source reads them), cut to the context."""
    from lmkit.model import load_model

    model, tokenizer, _ = load_model(model_dir)
    context = model.decoder.max_positions
    with open(valid_file, encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle if line.strip()]
    return [([tokenizer.eos_id] + tokenizer.encode(text))[:context] for text in texts], context


def torch_log_probs(model_dir: str, documents: list[list[int]]) -> list[np.ndarray]:
    import torch

    from lmkit.model import load_model

    decoder = load_model(model_dir)[0].eval().decoder
    with torch.no_grad():
        return [torch.log_softmax(decoder(torch.tensor([ids]))[0], -1).numpy() for ids in documents]


def export_log_probs(export: str, documents: list[list[int]], threads: int) -> list[np.ndarray]:
    """Every position's log-probabilities from the export's graph, one document at a time (no padding)."""
    import onnxruntime

    import lmkit.exports
    from lmkit.decoding.common import log_softmax

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    exported = lmkit.exports.load(export, device="cpu", session_options=options)
    graph, session = exported.manifest["graphs"]["model"], exported.export.session("model")
    shapes = {tensor["name"]: tensor["shape"] for tensor in graph["inputs"]}
    empty = {pair["input"]: np.zeros([{"batch_size": 1, "past_sequence_length": 0}.get(size, size)
                                      for size in shapes[pair["input"]]], dtype=np.float32)
             for pair in graph["cache"]}
    out = []
    for ids in documents:
        (logits,) = session.run(["logits"], {
            "input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None], **empty})
        out.append(log_softmax(logits[0].astype(np.float32)))
    return out


def floor_perplexity(model_dir: str, valid_file: str, source, context: int) -> tuple[float, float]:
    """The Markov source's perplexity per model token over the held-out documents (the floor), and the model's
    own as lmkit eval counts it (sliding windows of the context)."""
    from lmkit.evaluation import score_against_source
    from lmkit.model import load_model

    model, tokenizer, _ = load_model(model_dir)
    score, true_nll = score_against_source(model.eval().decoder, tokenizer, source, valid_file, context=context)
    return math.exp(sum(true_nll) / score.tokens), score.perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt-tiny")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--documents", type=int, default=200, help="held-out documents")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", help="keep the corpus, model and exports here (reused when present)")
    args = parser.parse_args()
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import torch

    torch.set_num_threads(args.threads)
    from lmkit.exports.export import export_model
    from lmkit.exports.manifest import MANIFEST
    from lmkit.exports.precision import Int4Options

    work = args.work or tempfile.mkdtemp(prefix="lmkit-quantized-quality-")
    os.makedirs(work, exist_ok=True)
    model_dir, valid_file, source = prepare(work, args.preset, args.steps, args.documents)
    documents, context = document_ids(model_dir, valid_file)
    floor, in_context = floor_perplexity(model_dir, valid_file, source, context)
    reference = torch_log_probs(model_dir, documents)
    targets = [np.asarray(ids[1:]) for ids in documents]
    positions = sum(len(ids) for ids in documents)
    predicted = sum(len(t) for t in targets)

    def perplexity(log_probs: list[np.ndarray]) -> float:
        nll = -sum(float(lp[np.arange(len(t)), t].sum()) for lp, t in zip(log_probs, targets))
        return math.exp(nll / predicted)

    base = perplexity(reference)
    print(f"{args.preset} trained {args.steps} steps: perplexity {in_context:.4f} on the held-out documents "
          f"(windows of {context}, stride {context // 2}), the source's floor {floor:.4f} (x {in_context / floor:.4f})")
    print(f"{len(documents)} documents cut to the context, {positions} positions:")
    print(f"{'':8} {'top-1':>7} {'ppl':>8} {'x fp32':>7} {'MB':>6}")
    print(f"{'torch':8} {1:>7.4f} {base:>8.4f} {1:>7.4f} {'':>6}")
    for name, (precision, int4) in VARIANTS.items():
        out = os.path.join(work, f"export-{name}")
        if not os.path.isfile(os.path.join(out, MANIFEST)):
            export_model(model_dir, out, precision=precision, force=True, int4=Int4Options(**int4))
        log_probs = export_log_probs(out, documents, args.threads)
        agree = sum(int((lp.argmax(-1) == ref.argmax(-1)).sum()) for lp, ref in zip(log_probs, reference))
        ppl = perplexity(log_probs)
        size = os.path.getsize(os.path.join(out, "model.onnx")) / 1e6
        print(f"{name:8} {agree / positions:>7.4f} {ppl:>8.4f} {ppl / base:>7.4f} {size:>6.2f}",
              flush=True)


if __name__ == "__main__":
    main()
