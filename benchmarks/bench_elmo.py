"""ELMo embedding throughput: lmkit's biLM in PyTorch, its export on onnxruntime (fp32 and int8), and a plain
`nn.LSTM(proj_size)` biLM of the same size as the eager baseline, in one run.

    python benchmarks/bench_elmo.py [--preset elmo-small] [--threads 2] [--repeats 5] [--sentences 64]
                                    [--work DIR]

One model (random weights, seed 0) of the preset, with a `word` tokenizer trained on sentences of
lmkit.synthetic's English Markov source, is exported with `lmkit export` (fp32); the int8 graph is
that export quantized as `lmkit export --quantize int8` quantizes (lmkit.exports.precision.to_int8: per
channel, the two directions' stacked 3-D weights per tensor; the command itself refuses a plain feature
encoder, which has no top-1 to check, and exports int8 a fine-tuned one). Each
contender embeds --sentences sentences (8-20 words), one at a time (batch 1) and in batches of 32:

    torch       lmkit's ELMoBiLM: all layers, projected and clipped LSTMs, both directions stepped together
    ort-fp32    the export: all layers and the mix, on onnxruntime
    ort-int8    the same graph, int8 weights
    nn.LSTM     the same char CNN, then nn.LSTM(proj_size) layers per direction (no clipping: not ELMo's
                equations, the eager baseline of the same size), backward over each row's real tokens

sentences/s is --sentences over the median time of --repeats rounds; the contenders take turns. int8's
accuracy: the max absolute difference and the mean cosine similarity of its layers to fp32's over the
same sentences. Nothing is asserted: the figures are printed for the notes.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from timing import interleaved, session_options, warn_if_busy


class LSTMBaseline(torch.nn.Module):
    """The same token encoder, then per direction nn.LSTM(P, H, proj_size=P) layers with bilm-tf's residuals."""

    def __init__(self, encoder):
        super().__init__()
        config = encoder.config
        self.encoder = encoder
        P, H = config.projection_dim, config.lstm_dim
        make = lambda: torch.nn.LSTM(P, H, proj_size=P, batch_first=True)  # noqa: E731
        self.forward_layers = torch.nn.ModuleList(make() for _ in range(config.n_layers))
        self.backward_layers = torch.nn.ModuleList(make() for _ in range(config.n_layers))

    def forward(self, ids, mask):
        from lmkit.nn.lstm import reverse_padded

        lengths = mask.sum(1)
        x = self.encoder.token_states(ids)
        out = [torch.cat([x, x], -1)]
        h_f, h_b = x, reverse_padded(x, lengths)
        for k, (lf, lb) in enumerate(zip(self.forward_layers, self.backward_layers)):
            f, b = lf(h_f)[0], lb(h_b)[0]
            if k:
                f, b = f + h_f, b + h_b
            out.append(torch.cat([f, reverse_padded(b, lengths)], -1))
            h_f, h_b = f, b
        return out


def main():
    warn_if_busy()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="elmo-small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--work", help="keep the model and exports here between runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    from lmkit.exports.export import export_model
    from lmkit.model import compose, load_model
    from lmkit.synthetic import MarkovSource
    from lmkit.tokenizers import Word, WordOptions

    work = args.work or tempfile.mkdtemp(prefix="bench-elmo-")
    os.makedirs(work, exist_ok=True)
    source = MarkovSource.english(seed=0)
    rng = np.random.default_rng(0)
    texts = []
    for document in source.sample(args.sentences * 4, seed=1):
        words = source.text(document).split()
        if len(words) >= 8:
            texts.append(" ".join(words[:int(rng.integers(8, 21))]))
    texts = texts[:args.sentences]
    model_dir, exported = os.path.join(work, "model"), os.path.join(work, "export")
    if not os.path.isdir(model_dir):
        corpus = os.path.join(work, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as handle:
            handle.write("\n".join(texts) + "\n")
        Word.train([corpus], WordOptions(vocab_size=1000), progress=False).save(os.path.join(work, "tok"))
        compose(args.preset, [f"tokenizer={os.path.join(work, 'tok')}"], model_dir)
    if not os.path.isdir(exported):
        export_model(model_dir, exported)
    int8_path = os.path.join(work, "model.int8.onnx")
    if not os.path.isfile(int8_path):
        from lmkit.exports.precision import to_int8

        to_int8(os.path.join(exported, "model.onnx"), int8_path)
    model, tokenizer, _ = load_model(model_dir)
    encoder = model.encoder.eval()
    baseline = LSTMBaseline(encoder).eval()
    table = encoder.char_table.numpy()
    options = session_options(args.threads)
    sessions = {name: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                for name, path in (("ort-fp32", os.path.join(exported, "model.onnx")), ("ort-int8", int8_path))}

    def batch(rows):
        ids = [tokenizer.encode(t, add_special_tokens=True) for t in rows]
        width = max(map(len, ids))
        input_ids = np.array([r + [0] * (width - len(r)) for r in ids], dtype=np.int64)
        mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in ids], dtype=np.int64)
        return input_ids, mask, table[input_ids]  # the graph reads every token's char ids

    def contenders(size):
        batches = [batch(texts[i:i + size]) for i in range(0, len(texts), size)]

        def run_torch(module):
            def go():
                with torch.inference_mode():
                    for ids, mask, _ in batches:
                        t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask).bool()
                        (encoder.layers(t_ids, t_mask) if module is None else module(t_ids, t_mask))
            return go

        def run_ort(session):
            return lambda: [session.run(["layers"], {"char_ids": c, "attention_mask": m}) for _, m, c in batches]

        return {"torch": run_torch(None), "ort-fp32": run_ort(sessions["ort-fp32"]),
                "ort-int8": run_ort(sessions["ort-int8"]), "nn.LSTM": run_torch(baseline)}

    config = encoder.config
    print(f"{args.preset}: char CNN {config.n_filters} filters, {config.n_layers} x {config.lstm_dim} cells "
          f"projected to {config.projection_dim}; {len(texts)} sentences of 8-20 words; {args.threads} threads")
    for size in (1, 32):
        seconds = interleaved(contenders(size), args.repeats, shuffle=True)
        rates = {name: len(texts) / s for name, s in seconds.items()}
        line = "  ".join(f"{name} {rate:8.1f}" for name, rate in rates.items())
        print(f"batch {size:>2}: sentences/s  {line}")
        print(f"          ort-fp32/torch {rates['ort-fp32'] / rates['torch']:.2f}x  ort-int8/torch "
              f"{rates['ort-int8'] / rates['torch']:.2f}x  torch/nn.LSTM {rates['torch'] / rates['nn.LSTM']:.2f}x")
    ids, mask, chars = batch(texts)
    fp32 = sessions["ort-fp32"].run(["layers"], {"char_ids": chars, "attention_mask": mask})[0]
    int8 = sessions["ort-int8"].run(["layers"], {"char_ids": chars, "attention_mask": mask})[0]
    with torch.inference_mode():
        reference = torch.stack(encoder.layers(torch.from_numpy(ids), torch.from_numpy(mask).bool()), 1).numpy()
    real = mask.astype(bool)
    a, b = np.moveaxis(fp32, 1, 2)[real], np.moveaxis(int8, 1, 2)[real]  # (N, L + 1, D) at real tokens
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    print(f"fp32 export vs PyTorch: max |diff| {np.abs(fp32 - reference)[np.broadcast_to(real[:, None, :], fp32.shape[:3])].max():.2e}")
    print(f"int8 vs fp32 (layers at real tokens): max |diff| {np.abs(a - b).max():.3f}, mean |diff| "
          f"{np.abs(a - b).mean():.4f}, mean |value| {np.abs(a).mean():.4f}, mean cosine {cosine.mean():.4f}")


if __name__ == "__main__":
    main()
