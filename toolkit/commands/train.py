"""`lmkit train`: train a model directory on text, or resume its run (click only at import)."""
from __future__ import annotations

import os

import click

from .optimizer_cli import optimizer_flags


@click.command("train")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--data", multiple=True, metavar="PATH",
              help="A text or .jsonl file, a directory of them, or a quoted glob; repeat for more. Translation "
                   "models: a source file then a target file, or .tsv files of source<TAB>target lines.")
@click.option("--val-data", multiple=True, metavar="PATH",
              help="Held-out data to evaluate on  [default: the last --val-fraction of --data]")
@click.option("--unlabeled", multiple=True, metavar="PATH",
              help="Unlabelled text, one sentence per line, for an objective that learns from it (cvt-translation: "
                   "source sentences without translations); repeat for more.")
@click.option("--steps", type=int, help="Optimizer steps in all; on --resume it may be raised.")
@click.option("--batch-size", type=int, help="Windows per forward pass, at most.")
@click.option("--seq-len", type=int, help="Tokens each window predicts; at most the model's context. For "
                                         "parallel text: the longest sentence, in tokens.")
@click.option("--lr", type=float, help="Peak learning rate.  [default: 3e-4]")
@click.option("--warmup", type=int, help="Steps of linear warmup.  [default: a tenth of --steps, at most 100]")
@click.option("--min-lr-ratio", type=float, help="The cosine ends at lr times this.  [default: 0.1]")
@click.option("--weight-decay", type=float, help="AdamW decay of matrices and embeddings.  [default: 0.1]")
@click.option("--beta1", type=float, help="AdamW's first-moment decay.  [default: 0.9]")
@click.option("--beta2", type=float, help="AdamW's second-moment decay (BERT: 0.999, RoBERTa: 0.98).  "
                                         "[default: 0.95, GPT-3's]")
@click.option("--grad-clip", type=float, help="Max gradient norm; 0 turns clipping off.  [default: 1.0]")
@click.option("--grad-accum", type=int,
              help="Each step reads batch-size x grad-accum windows, split over the processes under torchrun "
                   "(which then make fewer passes each).  [default: 1]")
@click.option("--eval-every", type=int, help="Steps between validation losses; 0: at the end.  [default: 200]")
@click.option("--eval-batches", type=int, help="Batches of fixed windows each evaluation reads.  [default: 20]")
@click.option("--save-every", type=int, help="Steps between checkpoints; 0: at the end.  [default: 500]")
@click.option("--log-every", type=int, help="Steps between metrics.jsonl records.  [default: 10]")
@click.option("--bf16", is_flag=True, default=None, help="bfloat16 autocast for the forward pass.")
@click.option("--seed", type=int, help="Seed of the data order and of dropout.  [default: 0]")
@click.option("--val-fraction", type=float,
              help="Share of --data held out for validation when there is no --val-data.  [default: 0.05]")
@click.option("--text-field", help="The field of .jsonl records that holds the text.  [default: text]")
@click.option("--device", help="auto (cuda when there is one), cpu, cuda or cuda:N.  [default: auto]")
@click.option("--shard", is_flag=True, default=None,
              help="Under torchrun: shard weights, gradients and optimizer state over the processes (FSDP2).")
@click.option("--compile", "compile", is_flag=True, default=None,
              help="torch.compile the forward and backward passes: faster steps after a first one that compiles "
                   "(minutes on a CPU); needs a C++ compiler on the CPU, Triton on CUDA.")
@optimizer_flags
@click.option("--recipe", metavar="NAME",
              help="A registered training recipe (lmkit components --kind training-recipe) whose optimizer, schedule "
                   "and rates the run starts from; flags given win, e.g. ulmfit-lm.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Train a copy of MODEL_DIR's model (spec, weights, tokenizer; none of its run) in this new "
                   "directory, MODEL_DIR left as it is: further training of a trained model, e.g. ULMFiT's stage 2.")
@click.option("--force", is_flag=True, help="With --out: replace it if it exists.")
@click.option("--resume", is_flag=True, help="Continue the run saved in MODEL_DIR, with its arguments.")
def train_command(model_dir, resume, out, force, **options):
    """Train the model in MODEL_DIR on text; checkpoints and metrics.jsonl go into MODEL_DIR (or --out).

    Run it under `torchrun --nproc-per-node N -m lmkit train ...` to train on N processes, each with
    the whole model (DDP), or with 1/N of it (--shard, FSDP2); see docs/distributed.md.
    """
    from ..errors import require_torch

    require_torch("lmkit train")
    from ..options import parse_assignments
    from ..training import train

    for name in ("optimizer_options", "schedule_options"):
        options[name] = parse_assignments(options[name], "--" + name.replace("_options", "-set")) or None
    given = {name: value for name, value in options.items() if value not in (None, ())}
    if force and out is None:
        raise click.UsageError("--force replaces --out; it goes with --out")
    record = train(model_dir, resume=resume, out=out, force=force, **given)
    model_dir = out or model_dir
    if os.environ.get("RANK", "0") != "0":  # under torchrun, the first process reports for all
        return
    if record:
        summary = f"step {record['step']}: loss {record['loss']:.4f}"
        parts = [f"{key[len('loss_'):]} {value:.4f}" for key, value in record.items() if key.startswith("loss_")]
        if parts:  # several objectives: each one's own loss (BERT: masked-lm and next-sentence)
            summary += f" ({', '.join(parts)})"
        if "val_loss" in record:
            summary += f", val_loss {record['val_loss']:.4f}"
            perplexities = [(key, value) for key, value in record.items() if key.startswith("val_ppl")]
            summary += "".join(f" ({_perplexity_label(key, value, record)} {value:.2f})" for key, value in perplexities)
        click.echo(f"trained {summary}, {record['tokens_per_s']:,.0f} tokens/s: {model_dir}", err=True)
    click.echo(model_dir)


def _perplexity_label(key: str, value: float, record: dict) -> str:
    """"perplexity", or "masked-lm perplexity" where the loss beside it sums several objectives (BERT's masked-LM
    and next-sentence: a trial read exp(val_loss) into a perplexity that is the masked-LM loss's alone)."""
    import math

    if key != "val_ppl":
        return f"{key[len('val_ppl_'):]} perplexity"
    of = [name[len("val_loss_"):] for name, loss in record.items()
          if name.startswith("val_loss_") and math.isclose(math.exp(min(loss, 700.0)), value, rel_tol=1e-9)]
    return f"{of[0]} perplexity" if of else "perplexity"
