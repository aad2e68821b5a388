"""T5 decoding and training speed (issue #13 part 10): lmkit on PyTorch and on onnxruntime (fp32, int8) against
transformers' T5ForConditionalGeneration, the same random t5-small-sized weights, side by side in one run.

    python benchmarks/bench_t5.py [--threads 2] [--repeats 3] [--new-tokens 32] [--source 32] [--quick]

The checkpoint is made by transformers (t5-small's sizes: 6+6 layers x 512, 8 heads, d_ff 2048, vocab
32,128, random weights), saved, imported with `lmkit import-hf` and exported with `lmkit export` (fp32 and
--quantize int8). Decoding: greedy and beam 4 at batch 1 and 8, sources of --source random tokens,
--new-tokens generated per row with eos never ending a row (lmkit: no eos id; transformers: its eos
id unset), reported as milliseconds per decoding step (one new token for every row) and the ratio of
transformers' time to each contender's (above 1: faster than transformers), and under it how many rows each
contender generated exactly as transformers did (int8 is expected to differ). Greedy search at batch 1 is
also set against the memory-bandwidth floor: the decoder's weight bytes per step over the read bandwidth of a
1 GB sum (benchmarks/timing.py). Training: one fused AdamW step
on a batch of 8 pairs of 64 source and 64 target tokens, as target tokens per second. Times are medians
over --repeats rounds timed in turns (benchmarks/timing.py); nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from timing import (  # benchmarks/timing.py
    bandwidth_bytes_per_s,
    interleaved,
    record,
    session_options,
    warn_if_busy,
)

SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8)
QUICK = dict(vocab_size=4096, d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_heads=8)


def checkpoint(directory: str, sizes: dict) -> None:
    """A random-weight T5ForConditionalGeneration and a small T5-style tokenizer.json, saved in `directory`."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    words = "the quick brown fox jumps over a lazy dog sat on mat and ran".split()
    rng = np.random.default_rng(0)
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.train_from_iterator([" ".join(rng.choice(words, 10)) for _ in range(200)], trainers.UnigramTrainer(
        vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>",
                                         unk_token="<unk>").save_pretrained(directory)
    torch.manual_seed(0)
    config = transformers.T5Config(**sizes, feed_forward_proj="relu", dropout_rate=0.0, decoder_start_token_id=0,
                                   eos_token_id=1, pad_token_id=0)
    transformers.T5ForConditionalGeneration(config).eval().save_pretrained(directory)


def decoder_bytes_per_step(model) -> int:
    """The bytes of weights one T5 decoding step reads: every decoder weight but the cross-attention keys' and
    values' (computed once per source) and the input embedding (one row looked up), plus the output layer (the
    shared embedding, when tied)."""
    decoder = model.decoder
    weights = [p for name, p in decoder.named_parameters()
               if not any(part in name for part in ("cross_attn.k.", "cross_attn.v.", "embed_tokens"))]
    if decoder.config.tie_word_embeddings:
        weights.append(decoder.token_embedding().weight)
    return sum(w.numel() * w.element_size() for w in weights)


def main() -> None:
    warn_if_busy()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--source", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="a smaller model (4+4 x 256), fewer settings")
    parser.add_argument("--out", help="keep the checkpoint, model and exports here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime
    import transformers

    from lmkit.commands.import_hf import import_hf
    from lmkit.decoding.beam import BeamSearch
    from lmkit.decoding.greedy import Greedy
    from lmkit.decoding.options import BeamSearchOptions, GreedyOptions
    from lmkit.exports.export import export_model
    from lmkit.model import load_model
    from lmkit.opening import open_model
    from lmkit.parallel import make_batch
    from lmkit.seq2seq import Seq2SeqGenerator

    root = args.out or tempfile.mkdtemp(prefix="lmkit-bench-t5-")
    sizes = QUICK if args.quick else SMALL
    hf_dir, model_dir = os.path.join(root, "hf"), os.path.join(root, "lmkit")
    if not os.path.isdir(model_dir):
        checkpoint(hf_dir, sizes)
        import_hf(hf_dir, model_dir)
    exports = {}
    for precision in ("fp32", "int8"):
        exports[precision] = os.path.join(root, f"export-{precision}")
        if not os.path.isdir(exports[precision]):
            print(f"exporting {precision} ...", flush=True)
            export_model(model_dir, exports[precision], precision=precision)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
    hf.generation_config.eos_token_id = None  # every row runs to --new-tokens, as lmkit's do below
    options = session_options(args.threads)
    contenders = {"lmkit torch": open_model(model_dir, device="cpu")}
    for precision, directory in exports.items():
        contenders[f"lmkit ort {precision}"] = open_model(directory, device="cpu", session_options=options)
    N, S = args.new_tokens, args.source
    rng = np.random.default_rng(1)
    print(f"T5 {'small' if not args.quick else 'quick'} sizes {sizes}, {args.threads} threads, torch "
          f"{torch.__version__}, transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"{'decoding':16} {'batch':>5} " + " ".join(f"{name:>16}" for name in ["transformers", *contenders])
          + "   ratios (transformers / lmkit)")
    settings = [("greedy", 1), ("greedy", 8), ("beam 4", 1), ("beam 4", 8)]
    tokens: dict[str, list[list[int]]] = {}  # each contender's last generation of a setting, compared below
    greedy_one_row: dict[str, float] = {}  # ms per step of greedy search at batch 1, against the floor below
    for strategy, batch in settings[::3] if args.quick else settings:
        sources = rng.integers(3, 50, size=(batch, S))
        ids, mask = torch.from_numpy(sources), torch.ones(batch, S, dtype=torch.long)
        beams = 4 if strategy.startswith("beam") else 1
        search = (BeamSearch(BeamSearchOptions(max_new_tokens=N, num_beams=4)) if beams > 1
                  else Greedy(GreedyOptions(max_new_tokens=N)))

        tokens.clear()

        def with_transformers(ids=ids, mask=mask, beams=beams):
            with torch.inference_mode():
                out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=beams,
                                  max_new_tokens=N, early_stopping=False, pad_token_id=0)
            assert out.shape[1] == N + 1
            tokens["transformers"] = out[:, 1:].tolist()

        functions = {"transformers": with_transformers}
        for name, opened in contenders.items():
            def run(opened=opened, search=search, sources=sources, name=name):
                generator = Seq2SeqGenerator(opened.backend(N), 0, None, 0)  # no eos: every row runs to N
                results = generator.generate(search, sources.tolist())
                assert all(len(r.tokens) == N for r in results)
                tokens[name] = [list(r.tokens) for r in results]
            functions[name] = run
        with torch.inference_mode():
            seconds = interleaved(functions, args.repeats, shuffle=True)
        ms = {name: 1000 * value / N for name, value in seconds.items()}
        if (strategy, batch) == ("greedy", 1):
            greedy_one_row = ms
        for name in contenders:
            record("bench_t5", f"{strategy}, batch {batch}, {name.removeprefix('lmkit ')}",
                   ms["transformers"] / ms[name])
        print(f"{strategy:16} {batch:>5} " + " ".join(f"{ms[name]:13.2f} ms" for name in functions) + "   "
              + "  ".join(f"{name.removeprefix('lmkit ')} {ms['transformers'] / ms[name]:.2f}x"
                          for name in contenders), flush=True)
        # A time is only worth comparing for the same work: the rows whose tokens are transformers'.
        print(f"{'':22} rows with transformers' tokens: " + "  ".join(
            f"{name.removeprefix('lmkit ')} {sum(a == b for a, b in zip(tokens[name], tokens['transformers']))}/"
            f"{len(tokens['transformers'])}" for name in contenders), flush=True)

    # What no implementation beats at one row: a step reads every weight it multiplies once, from memory.
    weight_bytes = decoder_bytes_per_step(contenders["lmkit torch"].model)
    bandwidth = bandwidth_bytes_per_s()
    floor_ms = 1e3 * weight_bytes / bandwidth
    print(f"greedy b1 against the memory-bandwidth floor: a step reads {weight_bytes / 1e6:.0f} MB of fp32 weights, "
          f"{floor_ms:.2f} ms at {bandwidth / 1e9:.1f} GB/s (a 1 GB sum); ms per step over the floor: " + "  ".join(
              f"{name.removeprefix('lmkit ')} {greedy_one_row[name] / floor_ms:.2f}x"
              for name in greedy_one_row if not name.endswith("int8"))
          + " (int8 reads a quarter of the bytes; each step's time also carries its share of the encoder's)",
          flush=True)

    # Training: one AdamW step on the same batch, each model its own copy of the same weights.
    model, _, _ = load_model(model_dir)
    model.train()
    hf.train()
    pairs = [(rng.integers(3, 50, 64).tolist(), rng.integers(3, 50, 63).tolist()) for _ in range(8)]
    batch = {k: torch.from_numpy(v) for k, v in make_batch(pairs, 0, 1, 0).items()}
    objective = next(iter(model.objectives.values()))
    # Fused AdamW for both: lmkit's Trainer and transformers' (its default from torch 2.8 on) use it.
    ours, theirs = (torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True) for m in (model, hf))

    def step_lmkit():
        ours.zero_grad(set_to_none=True)
        objective(model, batch).backward()
        ours.step()

    def step_transformers():
        theirs.zero_grad(set_to_none=True)
        hf(input_ids=batch["source_ids"], attention_mask=batch["source_mask"].long(),
           decoder_input_ids=batch["target_ids"], labels=batch["labels"]).loss.backward()
        theirs.step()

    seconds = interleaved({"transformers": step_transformers, "lmkit torch": step_lmkit}, args.repeats, shuffle=True)
    tokens = int((batch["labels"] != -100).sum())
    record("bench_t5", "training, target tokens/s", seconds["transformers"] / seconds["lmkit torch"])
    print(f"training: target tokens/s  transformers {tokens / seconds['transformers']:.0f}  lmkit torch "
          f"{tokens / seconds['lmkit torch']:.0f}  ratio (lmkit / transformers) "
          f"{seconds['transformers'] / seconds['lmkit torch']:.2f}x; files in {root}")


if __name__ == "__main__":
    main()
