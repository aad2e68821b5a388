"""AWD-LSTM speed: lmkit's language model against a plain nn.LSTM model of the same size, and the
fine-tuned classifier on onnxruntime against PyTorch.

    python benchmarks/bench_ulmfit.py [--threads 2] [--repeats 5] [--size tiny|small|paper]

1. LM training tokens/s (forward + backward + AdamW step, batch 16 x BPTT 70): lmkit's awd-lstm
   (functional weight drop, locked and embedding dropout) against nn.LSTM layers of the same sizes
   with nn.Dropout, no weight drop: what the regularisation costs.
2. Classifier inference examples/s (batch 32 x 64 tokens): the PyTorch model against its ONNX export
   (encoder-only graph, the head's last linear layer in numpy) on onnxruntime's CPU provider.
Timings interleave the contenders (timing.interleaved). Nothing is asserted; the figures are for the notes.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from timing import interleaved, warn_if_busy
from torch import nn

from lmkit.plugins.ulmfit.config import AWDLSTMConfig
from lmkit.plugins.ulmfit.model import AWDLSTMDecoder

SIZES = {"tiny": dict(vocab_size=512, d_embed=32, hidden_size=48, n_layers=2),
         "small": dict(vocab_size=8000, d_embed=200, hidden_size=400, n_layers=3),
         "paper": dict(vocab_size=60000, d_embed=400, hidden_size=1152, n_layers=3)}


class PlainLSTM(nn.Module):
    """The same shapes with nn.LSTM and nn.Dropout: the baseline."""

    def __init__(self, config: AWDLSTMConfig):
        super().__init__()
        sizes = [config.hidden_size] * (config.n_layers - 1) + [config.d_embed]
        self.embedding = nn.Embedding(config.vocab_size, config.d_embed)
        self.layers = nn.ModuleList(nn.LSTM(config.d_embed if i == 0 else config.hidden_size, size, batch_first=True)
                                    for i, size in enumerate(sizes))
        self.drop = nn.Dropout(0.1)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, ids):
        x = self.drop(self.embedding(ids))
        for layer in self.layers:
            x, _ = layer(x)
            x = self.drop(x)
        return nn.functional.linear(x, self.embedding.weight, self.bias)


def lm_training(config: AWDLSTMConfig, repeats: int) -> None:
    batch, bptt = 16, 70
    ids = torch.randint(0, config.vocab_size, (batch, bptt + 1))
    contenders = {}
    for name, model in (("lmkit awd-lstm", AWDLSTMDecoder(config)), ("plain nn.LSTM", PlainLSTM(config))):
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(model=model, optimizer=optimizer):
            logits = model(ids[:, :-1])
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        contenders[name] = step
    times = interleaved(contenders, repeats, shuffle=True)
    for name, seconds in times.items():
        print(f"LM training   {name:16s} {batch * bptt / seconds:12,.0f} tokens/s")
    print(f"LM training   lmkit / plain     {times['plain nn.LSTM'] / times['lmkit awd-lstm']:.2f}x")


def classifier_inference(size: dict, repeats: int) -> None:
    import json

    from lmkit.exports.export import export_model
    from lmkit.model import build_model
    from lmkit.registry import get_host
    from lmkit.spec import resolve
    from lmkit.tasks.predict import export_runner

    spec = {"decoder": {"type": "awd-lstm", **size},
            "objectives": [{"type": "sequence-head", "recipe": "ulmfit", "num_labels": 2, "labels": ["a", "b"]}]}
    model = build_model(resolve(spec, get_host()), 0).eval()
    with tempfile.TemporaryDirectory() as root:
        from lmkit.model import save_model

        model_dir, export_dir = os.path.join(root, "clf"), os.path.join(root, "exp")
        save_model(model_dir, model, get_host(), None)
        export_model(model_dir, export_dir)
        runner = export_runner(export_dir, "cpu")
        batch, tokens = 32, 64
        ids = np.random.default_rng(0).integers(0, size["vocab_size"], (batch, 1, tokens))
        arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids),
                  "extract_index": np.full((batch, 1), tokens - 1)}
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        head = model.objectives["sequence-head"]

        def torch_run():
            with torch.inference_mode():
                return head.scores(model, dict(tensors))

        times = interleaved({"PyTorch": torch_run, "onnxruntime": lambda: runner.scores(arrays)}, repeats)
        agree = np.abs(torch_run().numpy() - runner.scores(arrays)).max()
        for name, seconds in times.items():
            print(f"classifier    {name:16s} {batch / seconds:12,.0f} examples/s")
        print(f"classifier    ORT / PyTorch     {times['PyTorch'] / times['onnxruntime']:.2f}x  (max |diff| "
              f"{agree:.2e}; {json.dumps({'batch': batch, 'tokens': tokens})})")


def main() -> None:
    warn_if_busy()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", choices=SIZES, default="small")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    print(f"AWD-LSTM {args.size}: {size}, {args.threads} threads, torch {torch.__version__}")
    lm_training(AWDLSTMConfig(**size), args.repeats)
    classifier_inference(size, args.repeats)


if __name__ == "__main__":
    main()
