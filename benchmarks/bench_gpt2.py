"""GPT-2 in lmkit against Hugging Face transformers and plain PyTorch eager, side by side in one run.

    python benchmarks/bench_gpt2.py [--threads 2] [--repeats 5] [--quick]

Both models get the same config and the same weights (transformers' random init, converted).
Times are medians over repeats; ratios > 1 mean lmkit is faster. "eager" is decoding without a
key/value cache (the whole sequence re-run for every token, as nanoGPT's generate does), the
baseline a cache has to beat. Nothing here is asserted: the figures are printed for the notes.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import interleaved, record, warn_if_busy  # benchmarks/timing.py

from lmkit.decoding.beam import BeamSearch
from lmkit.decoding.greedy import Greedy
from lmkit.decoding.options import BeamSearchOptions, GreedyOptions
from lmkit.decoding.torch_backend import TorchBackend
from lmkit.nn import decoding_layout
from lmkit.plugins.gpt.config import GPT2Config
from lmkit.plugins.gpt.hf import config_from_hf, state_dict_from_hf
from lmkit.plugins.gpt.model import GPT2Decoder

SIZES = {
    "gpt-mini": dict(n_layers=6, d_model=384, n_heads=6, vocab_size=8192, max_positions=256),
    "gpt2-small": dict(n_layers=12, d_model=768, n_heads=12, vocab_size=50257, max_positions=1024),
}


def pair(size: str):
    """(lmkit GPT2Decoder, transformers GPT2LMHeadModel) with identical weights, dropout off."""
    import transformers

    torch.manual_seed(0)
    sizes = SIZES[size]  # in lmkit's names; transformers 5 no longer maps n_layers, d_model, ...
    hf_config = transformers.GPT2Config(n_layer=sizes["n_layers"], n_embd=sizes["d_model"], n_head=sizes["n_heads"],
                                        vocab_size=sizes["vocab_size"], n_positions=sizes["max_positions"],
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    config = config_from_hf(hf_config.to_dict())
    ours = GPT2Decoder(GPT2Config(**{**config.__dict__, "dropout": 0.0}))
    ours.load_state_dict(state_dict_from_hf(hf.state_dict(), config))
    return ours.eval(), hf


def bench_training(size: str, batch: int, seq: int, repeats: int) -> dict:
    """One optimizer step as lmkit's Trainer takes it (objective, clipping, its AdamW) and as HF's model does."""
    from lmkit.model import ComposedModel
    from lmkit.nn import training_layout
    from lmkit.registry import get_host
    from lmkit.spec import resolve
    from lmkit.training import TrainingArguments, build_optimizer

    ours, hf = pair(size)
    spec = resolve({"decoder": {"type": "gpt2", **SIZES[size], "dropout": 0.0},
                    "objectives": [{"type": "causal-lm"}]}, get_host())
    model = ComposedModel(spec)
    model.decoder.load_state_dict(ours.state_dict())
    training_layout(model)  # as the Trainer lays out a model it trains on the CPU (lmkit.nn.onednn)
    model.train(), hf.train()
    args = TrainingArguments(data=("unused",), steps=1, batch_size=batch, seq_len=seq)
    ours_optimizer = build_optimizer(model, args, torch.device("cpu"))
    # transformers' Trainer uses torch's fused AdamW by default from torch 2.8 on (optim="adamw_torch_fused")
    hf_optimizer = torch.optim.AdamW(hf.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), fused=True)
    ids = torch.randint(0, SIZES[size]["vocab_size"], (batch, seq + 1))

    def step(module, optimizer, loss_of):
        loss_of().backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    tokens = batch * seq
    seconds = interleaved({
        "lmkit": lambda: step(model, ours_optimizer, lambda: model.loss({"input_ids": ids})[0]),
        # transformers shifts the labels itself
        "transformers": lambda: step(hf, hf_optimizer, lambda: hf(ids[:, :-1], labels=ids[:, :-1]).loss),
    }, repeats)
    # Model FLOPs as lmkit train's progress line counts them (6 per weight per token); a CPU has no known
    # peak to give them as MFU.
    flops_per_token = 6 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"lmkit tok/s": tokens / seconds["lmkit"], "transformers tok/s": tokens / seconds["transformers"],
            "ratio": seconds["transformers"] / seconds["lmkit"],
            "lmkit TFLOP/s": tokens / seconds["lmkit"] * flops_per_token / 1e12}


def lmkit_generate(decoder, prompt: list[int], new_tokens: int, beams: int = 1):
    backend = TorchBackend(decoder, new_tokens)
    if beams == 1:
        strategy = Greedy(GreedyOptions(max_new_tokens=new_tokens))
    else:
        strategy = BeamSearch(BeamSearchOptions(max_new_tokens=new_tokens, num_beams=beams))
    return strategy.generate(backend, [prompt], eos_id=None, pad_id=0)[0].tokens


@torch.inference_mode()
def eager_generate(decoder, prompt: list[int], new_tokens: int):
    ids = torch.tensor([prompt])
    for _ in range(new_tokens):
        next_token = decoder(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_token], dim=1)
    return ids[0, len(prompt):].tolist()


@torch.inference_mode()
def hf_generate(hf, prompt: list[int], new_tokens: int, beams: int = 1):
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                      do_sample=False, num_beams=beams, pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def bench_decoding(size: str, repeats: int, new_tokens: int, beams: int = 1, eager: bool = True) -> dict:
    ours, hf = pair(size)
    decoding_layout(ours)  # as lmkit's opened models have it (lmkit.nn.layout)
    prompt = torch.randint(0, SIZES[size]["vocab_size"], (16,)).tolist()
    functions = {"lmkit": lambda: lmkit_generate(ours, prompt, new_tokens, beams),
                 "transformers": lambda: hf_generate(hf, prompt, new_tokens, beams)}
    if eager and beams == 1:
        functions["eager"] = lambda: eager_generate(ours, prompt, new_tokens)
    seconds = interleaved(functions, repeats)
    same = lmkit_generate(ours, prompt, new_tokens, beams) == hf_generate(hf, prompt, new_tokens, beams)
    row = {f"{name} ms/token": 1e3 * value / new_tokens for name, value in seconds.items()}
    row["ratio"] = seconds["transformers"] / seconds["lmkit"]
    if "eager" in seconds:
        row["ratio vs eager"] = seconds["eager"] / seconds["lmkit"]
    row["same tokens"] = same
    return row


def bench_step(size: str, repeats: int, short: int = 8, long: int = 40) -> dict:
    """A decoding step's own cost at batch 1, without the prefill's share: the time of `long` new tokens less that
    of `short`, over long - short, for lmkit and transformers; and lmkit's against the bandwidth floor, the weights'
    bytes at the speed of a sum over 1 GB, timed in turns with the steps (that speed was 31 to 63 GB/s from run to
    run on the test machine: a floor measured at another time says little)."""
    ours, hf = pair(size)
    decoding_layout(ours)
    prompt = torch.randint(0, SIZES[size]["vocab_size"], (16,)).tolist()
    big = torch.ones(2**28)  # 1 GB, past the last-level cache
    seconds = interleaved({
        f"lmkit {short}": lambda: lmkit_generate(ours, prompt, short),
        f"lmkit {long}": lambda: lmkit_generate(ours, prompt, long),
        f"transformers {short}": lambda: hf_generate(hf, prompt, short),
        f"transformers {long}": lambda: hf_generate(hf, prompt, long),
        "a sum over 1 GB": big.sum,
    }, repeats)
    step = {name: 1e3 * (seconds[f"{name} {long}"] - seconds[f"{name} {short}"]) / (long - short)
            for name in ("lmkit", "transformers")}
    bandwidth = big.numel() * 4 / seconds["a sum over 1 GB"]
    floor_ms = 1e3 * sum(p.numel() * p.element_size() for p in ours.parameters()) / bandwidth
    return {"lmkit ms/step": step["lmkit"], "transformers ms/step": step["transformers"],
            "ratio": step["transformers"] / step["lmkit"], "bandwidth floor ms": floor_ms,
            "sum GB/s": bandwidth / 1e9, "lmkit / floor": step["lmkit"] / floor_ms}


def show(title: str, row: dict) -> None:
    cells = [f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()]
    print(f"{title:<44} " + " | ".join(cells), flush=True)
    record("bench_gpt2", title, row["ratio"])
    if "ratio vs eager" in row:
        record("bench_gpt2", title, row["ratio vs eager"], against="PyTorch eager (no cache)")


def main() -> None:
    warn_if_busy()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="gpt-mini only, fewer repeats")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    repeats = 3 if args.quick else args.repeats
    print(f"torch {torch.__version__}, {args.threads} threads, medians of {repeats}")

    show("train gpt-mini 8x256 (fwd+bwd+AdamW)", bench_training("gpt-mini", 8, 256, repeats))
    show("greedy gpt-mini b1, 64 tokens", bench_decoding("gpt-mini", repeats, 64))
    show("beam-8 gpt-mini, 64 tokens", bench_decoding("gpt-mini", repeats, 64, beams=8))
    show("greedy gpt-mini b1, 32 tokens", bench_decoding("gpt-mini", repeats, 32, eager=False))
    show("greedy gpt-mini b1, 240 tokens (context 256)", bench_decoding("gpt-mini", max(1, repeats // 2), 240, eager=False))
    if args.quick:
        return
    show("train gpt2-small 4x256 (fwd+bwd+AdamW)", bench_training("gpt2-small", 4, 256, 3))
    show("greedy gpt2-small b1, 32 tokens", bench_decoding("gpt2-small", repeats, 32, eager=False))
    show("greedy gpt2-small b1, one step (40 less 8 tokens)", bench_step("gpt2-small", repeats))


if __name__ == "__main__":
    main()
