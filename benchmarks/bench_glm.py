"""GLM in lmkit: blank filling with the key/value cache against the same model run uncached, and training
speed against lmkit's GPT-2 of the same size (no reference library holds a GLM).

    python benchmarks/bench_glm.py [--threads 2] [--repeats 5] [--quick]

Infilling: a prompt of P tokens with two blanks, each span decoded greedily for N tokens (no early
[E]), through the shared Greedy strategy over TorchBackend with GLM's positions (cached), and by
re-running the whole sequence for every token with the positions written out (uncached). Training:
one AdamW step on a batch of blank-infilling samples (Part A, shuffled spans, 2D positions, the GLM
mask) against one step of GPT-2's causal LM on the same number of tokens. Times are medians over
repeats, timed in turns; nothing is asserted: the figures are printed for the notes.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import interleaved, warn_if_busy  # benchmarks/timing.py

from lmkit.decoding.common import Positions
from lmkit.decoding.greedy import Greedy
from lmkit.decoding.options import GreedyOptions
from lmkit.decoding.torch_backend import TorchBackend
from lmkit.plugins.glm.config import BlankInfillingOptions, GLMConfig
from lmkit.plugins.glm.data import Blanker
from lmkit.plugins.glm.model import GLMDecoder
from lmkit.plugins.gpt.config import GPT2Config
from lmkit.plugins.gpt.model import GPT2Decoder

SIZES = {
    "mini": dict(n_layers=6, d_model=384, n_heads=6, vocab_size=8192, max_positions=256),
    "base": dict(n_layers=12, d_model=768, n_heads=12, vocab_size=30592, max_positions=512),
}
SPECIALS = {"[MASK]": 1, "[sMASK]": 2, "[gMASK]": 3, "[S]": 4, "[E]": 5}


def fill_cached(decoder, prompt: list[int], places: list[int], new_tokens: int) -> list[list[int]]:
    """Both blanks, span after span, as lmkit's generator does (one prefill per blank, then cached steps)."""
    search = Greedy(GreedyOptions(max_new_tokens=new_tokens))
    spans: list[list[int]] = []
    for _ in places:
        ids = list(prompt) + [t for s in spans for t in (SPECIALS["[S]"], *s)] + [SPECIALS["[S]"]]
        pos1 = list(range(len(prompt))) + [m for m, s in zip(places, [*spans, []]) for _ in range(len(s) + 1)]
        pos2 = [0] * len(prompt) + [p for s in [*spans, []] for p in range(1, len(s) + 2)]
        result = search.generate(TorchBackend(decoder, new_tokens), [ids], eos_id=None, pad_id=0,
                                 positions=Positions([np.array([pos1, pos2])], step=(0, 1)))[0]
        spans.append(result.tokens)
    return spans


@torch.inference_mode()
def fill_uncached(decoder, prompt: list[int], places: list[int], new_tokens: int) -> list[list[int]]:
    """The same spans, the whole sequence run again for every new token."""
    spans: list[list[int]] = []
    for _ in places:
        span: list[int] = []
        while len(span) < new_tokens:
            ids = list(prompt) + [t for s in [*spans, span] for t in (SPECIALS["[S]"], *s)]
            pos1 = list(range(len(prompt))) + [m for m, s in zip(places, [*spans, span]) for _ in range(len(s) + 1)]
            pos2 = [0] * len(prompt) + [p for s in [*spans, span] for p in range(1, len(s) + 2)]
            logits = decoder(torch.tensor([ids]), position_ids=torch.tensor([[pos1, pos2]]))
            span.append(int(logits[0, -1].argmax()))
        spans.append(span)
    return spans


def infilling(size: str, prompt_length: int, new_tokens: int, repeats: int) -> None:
    torch.manual_seed(0)
    decoder = GLMDecoder(GLMConfig(**SIZES[size], dropout=0.0)).eval()
    rng = np.random.default_rng(0)
    prompt = rng.integers(10, SIZES[size]["vocab_size"], size=prompt_length).tolist()
    places = [prompt_length // 4, 3 * prompt_length // 4]
    for place in places:
        prompt[place] = SPECIALS["[MASK]"]
    assert fill_cached(decoder, prompt, places, new_tokens) == fill_uncached(decoder, prompt, places, new_tokens)
    times = interleaved({"cached": lambda: fill_cached(decoder, prompt, places, new_tokens),
                         "uncached": lambda: fill_uncached(decoder, prompt, places, new_tokens)}, repeats)
    tokens = 2 * new_tokens
    print(f"infilling glm-{size}, prompt {prompt_length}, 2 blanks x {new_tokens} tokens (greedy, batch 1): "
          f"cached {1e3 * times['cached'] / tokens:.2f} ms/token, uncached {1e3 * times['uncached'] / tokens:.2f} "
          f"ms/token, {times['uncached'] / times['cached']:.2f}x")


def training(size: str, batch: int, seq_len: int, repeats: int) -> None:
    torch.manual_seed(0)
    glm = GLMDecoder(GLMConfig(**SIZES[size], dropout=0.0)).train()
    gpt = GPT2Decoder(GPT2Config(**SIZES[size], dropout=0.0)).train()
    rng = np.random.default_rng(0)
    blanker = Blanker(BlankInfillingOptions(), SPECIALS)
    samples = [blanker(rng.integers(10, SIZES[size]["vocab_size"], size=seq_len - 2 * (int(0.15 * seq_len) + 1)),
                       np.array([0]), rng) for _ in range(batch)]
    ids = torch.zeros(batch, seq_len, dtype=torch.long)
    positions = torch.zeros(batch, 2, seq_len, dtype=torch.long)
    positions[:, 1] = 1
    mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    labels = torch.full((batch, seq_len), -100, dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        ids[row, :n], positions[row, :, :n] = torch.from_numpy(s.input_ids), torch.from_numpy(s.position_ids)
        mask[row, :n], labels[row, :n] = True, torch.from_numpy(s.labels)
    gpt_ids = torch.from_numpy(rng.integers(10, SIZES[size]["vocab_size"], size=(batch, seq_len + 1)))
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in (("glm", glm), ("gpt", gpt))}

    def glm_step():
        states = glm.hidden_states(ids, None, mask, positions)
        picked = labels != -100
        loss = torch.nn.functional.cross_entropy(glm.logits(states[picked]), labels[picked])
        loss.backward()
        optimizers["glm"].step()
        optimizers["glm"].zero_grad(set_to_none=True)

    def gpt_step():
        logits = gpt(gpt_ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), gpt_ids[:, 1:].flatten())
        loss.backward()
        optimizers["gpt"].step()
        optimizers["gpt"].zero_grad(set_to_none=True)

    times = interleaved({"glm": glm_step, "gpt": gpt_step}, repeats)
    tokens = batch * seq_len
    print(f"training glm-{size} vs gpt2 of the same size, batch {batch} x {seq_len} tokens: glm "
          f"{tokens / times['glm']:,.0f} tokens/s, gpt2 {tokens / times['gpt']:,.0f} tokens/s, "
          f"glm/gpt2 {times['gpt'] / times['glm']:.2f}")


def main() -> None:
    warn_if_busy()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="the mini size, short runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = "mini" if args.quick else "base"
    infilling(size, prompt_length=64 if args.quick else 256, new_tokens=16 if args.quick else 32, repeats=args.repeats)
    training(size, batch=4 if args.quick else 8, seq_len=128 if args.quick else 256, repeats=args.repeats)


if __name__ == "__main__":
    main()
