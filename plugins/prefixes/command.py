"""`lmkit train-prefix`: train one key/value prefix per attribute over a frozen decoder (click only at import)."""
from __future__ import annotations

import os

import click


def _data_option(value: str, unsupervised: bool = False) -> tuple[str, str | None]:
    if unsupervised:  # the attributes are learnt: a file alone
        if os.path.isfile(value):
            return value, None
        path, sep, attribute = value.rpartition(":")
        if sep and os.path.isfile(path):
            raise click.BadParameter(f"{value!r}: --unsupervised learns the attributes from unlabelled text; give "
                                     f"--data {path} without :{attribute}")
        raise click.BadParameter(f"{value} is not a file; give a text file of one example per line")
    path, sep, attribute = value.rpartition(":")
    if not sep or not path or not attribute:
        raise click.BadParameter(f"{value!r}: give FILE:ATTRIBUTE, e.g. pos.txt:positive")
    if not os.path.isfile(path):
        raise click.BadParameter(f"{path} is not a file; give a text file of one example per line")
    return path, attribute


@click.command("train-prefix")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--data", "data", multiple=True, required=True, metavar="FILE:ATTRIBUTE",
              help="A text file of one example per line, all of ATTRIBUTE; repeat for each attribute (several "
                   "files may share one). An encoder-decoder's (T5's) lines are SOURCE<TAB>TARGET.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="The directory to write prefixes.safetensors to (the model directory itself will do).")
@click.option("--length", default=10, show_default=True, type=click.IntRange(min=1),
              help="Positions per prefix (P): the prompt's tokens start at position P.")
@click.option("--lm-weight", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="w1: weight of the language-model loss, -log p(x | own prefix) per token.")
@click.option("--contrast-weight", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="w2: weight of the discriminative loss -log p(attribute | x) over all prefixes; 0 trains each "
                   "prefix on its own texts alone (plain prefix tuning). With --unsupervised: the weight of the "
                   "margin term.")
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-2, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(min=2),
              help="Read at most this many tokens of each example (and at most the context less the prefix).")
@click.option("--unsupervised", type=click.IntRange(min=2), metavar="K",
              help="Learn K prefixes for latent attributes z0 ... z{K-1} from unlabelled --data FILE (the paper's "
                   "unsupervised variant: a Gumbel-softmax latent attribute, VAE-like); decoder-only models.")
@click.option("--kl-weight", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="With --unsupervised: weight of KL(q(z|x) || uniform) per token.")
@click.option("--margin", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="With --unsupervised: the per-token log-likelihood margin by which a text's own latent prefix "
                   "must beat every other (weighted by --contrast-weight).")
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="With --unsupervised: the Gumbel-softmax temperature.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto (cuda when PyTorch has it), cpu, cuda or cuda:N.")
@click.option("--force", is_flag=True, help="Replace a prefix file already in --out.")
@click.option("--quiet", is_flag=True, help="Print only the result, not the loss as it trains.")
def train_prefix_command(model_dir, data, out, length, lm_weight, contrast_weight, steps, batch_size, lr, max_tokens,
                         unsupervised, kl_weight, margin, temperature, seed, device, force, quiet):
    """Train contrastive prefixes (Qian et al. 2022) for the decoder in MODEL_DIR (GPT, GLM, T5), which stays frozen.

    One prefix of --length key/value positions per attribute of --data, trained together with
    w1 * L_LM + w2 * L_d: each text's likelihood under its own attribute's prefix raised and, through
    p(attribute | text) over all prefixes, the others' lowered. Generate with
    `lmkit generate MODEL_DIR --prefix OUT --attribute NAME` (or the model's export). With --unsupervised K,
    K prefixes z0 ... z{K-1} are learnt from unlabelled texts, each text's latent attribute inferred as it trains.
    """
    from lmkit.errors import LmkitError, require_torch
    from lmkit.prefix import PREFIX_FILE

    require_torch("lmkit train-prefix")
    if not unsupervised and any(flag != 1.0 for flag in (kl_weight, margin, temperature)):
        raise click.UsageError("--kl-weight, --margin and --temperature set the --unsupervised objective; give "
                               "--unsupervised K")
    sources = [_data_option(value, bool(unsupervised)) for value in data]
    attributes = ([f"z{k}" for k in range(unsupervised)] if unsupervised
                  else list(dict.fromkeys(attribute for _, attribute in sources)))
    if not unsupervised and contrast_weight and len(attributes) < 2:
        raise LmkitError(f"the contrastive loss needs texts of at least two attributes and --data gives only "
                         f"{attributes[0]!r}; add another attribute's file, or pass --contrast-weight 0")
    if not lm_weight and not contrast_weight and not (unsupervised and kl_weight):
        raise LmkitError("--lm-weight and --contrast-weight are both 0: nothing to train; give one a weight")
    target = os.path.join(out, PREFIX_FILE)
    if os.path.exists(target) and not force:
        raise LmkitError(f"{target} exists; choose another --out or pass --force to replace it")

    from .training import train_prefixes

    result = train_prefixes(model_dir, sources, out, length=length, lm_weight=lm_weight,
                            contrast_weight=contrast_weight, steps=steps, batch_size=batch_size, lr=lr,
                            max_tokens=max_tokens, seed=seed, device=device,
                            log=None if quiet else click.echo, unsupervised=unsupervised, kl_weight=kl_weight,
                            margin=margin, temperature=temperature)
    metrics = result["final"]
    click.echo(f"wrote {result['path']}: {len(attributes)} prefixes of {length} positions "
               f"({', '.join(attributes)}); last step: LM loss {metrics['lm']:.4f}"
               + (f", KL {metrics['kl']:.4f}, margin loss {metrics['c']:.4f}" if unsupervised
                  else f", -log p(attribute|text) {metrics['d']:.4f}, accuracy {metrics['accuracy']:.2f}"
                  if contrast_weight else ""))
