"""`lmkit bench`: prefill and decoding speed of model and export directories, side by side (click only at import)."""
from __future__ import annotations

import json

import click


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--prompt-tokens", type=click.IntRange(min=1),
              help="Tokens of each prompt (an encoder: of each text).  [default: 128, or fewer where a model's "
                   "context leaves less room]")
@click.option("--new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Decoding steps timed after the prefill (decoders).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Rows per run.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs of each model, taken in turns; the figures are their medians.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for PyTorch and onnxruntime.  [default: theirs]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N, for every model.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON instead of a table.")
def bench_command(models, prompt_tokens, new_tokens, batch_size, repeats, threads, device, as_json):
    """Time the prefill and decoding of each of MODELS on this machine, side by side.

    Each of MODELS is a model directory (run with PyTorch) or an export directory (run with
    onnxruntime): `lmkit bench runs/m0 exp/m0 exp/m0-int8` compares a model with its exports. The
    inputs are random token ids; the models take turns, and the last column is each model's decoding
    speed (an encoder's forward pass) relative to the first model's of the same kind. Nothing is written.
    """
    import sys

    from ..benchmark import busy_machine, default_prompt_tokens, measure, table
    from ..opening import is_export, open_model

    session_options = None
    if threads is not None:
        if any(not is_export(path) for path in models):
            from ..errors import require_torch

            require_torch("lmkit bench on a model directory")
            import torch

            torch.set_num_threads(threads)
        if any(is_export(path) for path in models):
            import onnxruntime

            session_options = onnxruntime.SessionOptions()
            session_options.intra_op_num_threads = threads
    opened = [open_model(path, device=device, session_options=session_options if is_export(path) else None)
              for path in models]
    if prompt_tokens is None:
        prompt_tokens = default_prompt_tokens(opened, new_tokens)
    busy = busy_machine()  # before the run, which loads the machine itself
    speeds = measure(opened, prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch_size=batch_size,
                     repeats=repeats, progress=lambda done: click.echo(f"round {done}/{repeats}", err=True))
    if busy is not None:  # after it: settings it refuses get their one-line error alone
        click.echo(f"warning: {busy}", err=True)
    if as_json:
        click.echo(json.dumps({"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "batch_size": batch_size,
                               "repeats": repeats, "threads": threads, "python": sys.version.split()[0],
                               "busy_machine": busy,
                               "models": [s.as_dict() for s in speeds]}, indent=2))
        return
    steps = f", {new_tokens} decoding steps" if any(speed.decode_ms_per_step is not None for speed in speeds) else ""
    click.echo(f"batch {batch_size}, prompts of {prompt_tokens} tokens{steps}, median of {repeats} runs each, in turns"
               + ("; speed vs the first model of the same kind" if len({speed.kind for speed in speeds}) > 1 else ""))
    click.echo(table(speeds))
