"""`lmkit neurons`: find a fact's knowledge neurons, and suppress or amplify them (click only at import)."""
from __future__ import annotations

import json
import os

import click


@click.command("neurons")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--prompt", "prompts", multiple=True, required=True, metavar="TEXT",
              help="A prompt of the fact; repeat for several phrasings. A masked LM's holds one blank ([MASK] or "
                   "the tokenizer's mask token); a causal LM's answer is the next token after it.")
@click.option("--answer", required=True, help="The fact's answer: one token of the model's tokenizer.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1),
              help="Points of the integrated gradients' left Riemann sum.")
@click.option("--threshold", default=0.2, show_default=True, type=float,
              help="Per prompt, keep neurons attributed at least this share of the largest attribution.")
@click.option("--share", default=0.7, show_default=True, type=float,
              help="Keep neurons that at least this share of the prompts keep (moved by 0.05, at most 6 times, "
                   "toward 2-5 neurons, as the paper does).")
@click.option("--suppress", is_flag=True, help="Also report P(answer) with the neurons set to 0.")
@click.option("--amplify", is_flag=True, help="Also report P(answer) with the neurons doubled.")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write a heat map (PNG) of the first prompt's attributions by layer and neuron (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print everything, attributions included, as JSON.")
def neurons_command(model_dir, prompts, answer, steps, threshold, share, suppress, amplify, plot, as_json):
    """The knowledge neurons of a fact in MODEL_DIR (Dai et al. 2022): FFN units whose integrated-gradients
    attribution to P(answer) is high across the fact's prompts.

    Works on BERT-family encoders with their masked-LM head (the answer fills the blank) and GPT-family
    decoders (the answer is the next token). Prints each prompt's P(answer), the neurons as LAYER:INDEX,
    and with --suppress or --amplify, P(answer) per prompt after the edit.
    """
    from lmkit.errors import require_torch

    require_torch("lmkit neurons")
    if plot is not None and not plot.endswith(".png"):
        raise click.UsageError(f"--plot {plot}: give a .png file name")
    if plot is not None and not os.path.isdir(os.path.dirname(os.path.abspath(plot))):
        raise click.UsageError(f"--plot {plot}: the folder {os.path.dirname(os.path.abspath(plot))} does not exist")
    from lmkit.model import load_model

    from .attribution import attributions, probability_with, shared_neurons
    from .queries import make_queries

    model, tokenizer, _ = load_model(model_dir)
    queries = make_queries(model, tokenizer, prompts, answer)
    per_prompt = [attributions(model, query, steps) for query in queries]
    neurons, chosen_share = shared_neurons(per_prompt, threshold, share)
    report = {"answer": answer, "steps": steps, "threshold": threshold, "share": chosen_share,
              "neurons": [list(n) for n in neurons], "prompts": []}
    edits = [(done, factor) for done, factor, wanted in (("suppressed", 0.0, suppress), ("amplified", 2.0, amplify))
             if wanted]
    for prompt, query, attribution in zip(prompts, queries, per_prompt):
        row = {"prompt": prompt, "probability": probability_with(model, query, [], 1.0)}
        for done, factor in edits:
            row[done] = probability_with(model, query, neurons, factor)
        if as_json:
            row["attributions"] = [[round(v, 7) for v in layer] for layer in attribution.tolist()]
        report["prompts"].append(row)
    if plot is not None:
        from .plot import heat_map

        heat_map(per_prompt[0], neurons, f"{prompts[0]} -> {answer}", plot)
    if as_json:
        click.echo(json.dumps(report))
        return
    for row in report["prompts"]:
        after = "".join(f"  {done} {row[done]:.4f}" for done, _ in edits)
        click.echo(f"P({answer}) {row['probability']:.4f}{after}  {row['prompt']}")
    shown = " ".join(f"{layer}:{index}" for layer, index in neurons) or "none"
    click.echo(f"knowledge neurons (layer:index, kept by >= {chosen_share:g} of {len(prompts)} prompts): {shown}")
