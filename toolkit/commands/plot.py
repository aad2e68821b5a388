"""`lmkit plot`: training loss and validation perplexity against step, from metrics.jsonl (click only at import)."""
from __future__ import annotations

import json
import os

import click


def read_metrics(model_dir: str) -> list[dict]:
    """The records of metrics.jsonl; a last line cut short by a crash is left out."""
    from ..artifacts import read_config
    from ..errors import ArtifactError

    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        read_config(model_dir)  # not a directory, an export directory: said as every command says it
        raise ArtifactError(f"{model_dir} has no metrics.jsonl; train it with lmkit train first")
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle.read().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            step, loss = int(record["step"]), float(record["loss"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if number == len(lines):
                break
            raise ArtifactError(f"{path}:{number} is not a metrics record (JSON with step and loss); "
                                "remove the line or retrain") from None
        records.append({**record, "step": step, "loss": loss})
    if not records:
        raise ArtifactError(f"{path} has no records yet; train for at least --log-every steps")
    return records


def _keys(records: list[dict], prefix: str) -> list[str]:
    """The keys starting with `prefix` in any record, in the order first seen."""
    return list(dict.fromkeys(key for record in records for key in record if key.startswith(prefix)))


@click.command("plot")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="PNG to write  [default: MODEL_DIR/metrics.png]")
def plot_command(model_dir, out):
    """Plot the training loss and validation perplexity of MODEL_DIR against step."""
    from ..artifacts import atomic_write
    from ..errors import MissingDependency

    records = read_metrics(model_dir)
    try:
        import matplotlib

        matplotlib.use("Agg")  # draw to a file; no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependency("lmkit plot needs matplotlib, which is not installed; install it with: "
                                "pip install 'lmkit-toolkit[plot]'") from None
    out = out or os.path.join(model_dir, "metrics.png")
    evaluated = [r for r in records if "val_loss" in r]
    figure, (loss_axes, ppl_axes) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    loss_axes.plot([r["step"] for r in records], [r["loss"] for r in records], label="training")
    for key in _keys(records, "loss_"):  # each objective's own loss, when there are several (MLM, NSP)
        shown = [r for r in records if key in r]
        loss_axes.plot([r["step"] for r in shown], [r[key] for r in shown], lw=0.8, label=key[len("loss_"):])
    # Perplexity only of language-modelling objectives: a fine-tuning run's head or NSP has none.
    perplexities = _keys(evaluated, "val_ppl")
    if evaluated:
        loss_axes.plot([r["step"] for r in evaluated], [r["val_loss"] for r in evaluated], "o-", label="validation")
    for key in perplexities:
        shown = [r for r in evaluated if key in r]
        ppl_axes.plot([r["step"] for r in shown], [r[key] for r in shown], "o-",
                      label="validation" if key == "val_ppl" else key[len("val_ppl_"):])
    if perplexities:
        ppl_axes.set_yscale("log")
        ppl_axes.legend() if len(perplexities) > 1 else None
    else:
        ppl_axes.text(0.5, 0.5, "no validation yet" if not evaluated else "no language-modelling objective",
                      ha="center", va="center", transform=ppl_axes.transAxes)
    loss_axes.set(title="loss", xlabel="step", ylabel="cross-entropy (nats/token)")
    loss_axes.legend()
    ppl_axes.set(title="validation perplexity", xlabel="step", ylabel="perplexity")
    figure.suptitle(os.path.basename(os.path.abspath(model_dir)))
    with atomic_write(out, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)
    click.echo(f"plotted {len(records)} records ({len(evaluated)} evaluated) of {model_dir}", err=True)
    click.echo(out)
