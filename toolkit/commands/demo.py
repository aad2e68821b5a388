"""`lmkit demo`: corpus, tokenizer, training, evaluation and generation, end to end (click only at import)."""
import click


@click.command("demo")
@click.option("--out", default="lmkit-demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the corpus, tokenizer and model.")
@click.option("--steps", type=click.IntRange(min=1), help="Training steps.  [default: 600, about two minutes]")
@click.option("--seed", default=0, show_default=True, help="Seed of the corpus, the weights and the data order.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def demo_command(out, steps, seed, force):
    """Train a small GPT on a corpus of known entropy, score it against that floor, and generate."""
    import dataclasses

    from ..demo import DemoSize, report, run_demo
    from ..errors import require_torch

    require_torch("lmkit demo")
    size = DemoSize() if steps is None else dataclasses.replace(DemoSize(), steps=steps)
    report(run_demo(out, size, seed=seed, force=force))
