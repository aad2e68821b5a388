"""What `lmkit generate` and `lmkit translate` share: the decoding flags, the strategy options they
make, and telling an export directory from a model directory (click only at import).

Both commands import this module and neither imports the other's, except generate -> translate
(a prompt to an encoder-decoder model is a source sentence): the dependency points one way.
"""
from __future__ import annotations

import dataclasses

import click

# The decoding strategies' options, as `generate` and `translate` both take them; a flag belongs to
# the strategies whose options have its name (--num-beams: beam).
DECODING_FLAGS = (
    click.option("--strategy", help="greedy, beam, sample or another registered one.  [default: the model's, "
                                    "else greedy]"),
    click.option("--max-new-tokens", type=int, help="Most tokens to add to each input.  [default: the model's, else 50]"),
    click.option("--num-beams", type=int, help="beam: hypotheses kept per input.  [default: 4]"),
    click.option("--length-penalty", type=float, help="beam: scores are divided by length ** this.  [default: 1.0]"),
    click.option("--early-stopping/--no-early-stopping", default=None,
                 help="beam: stop once num_beams hypotheses have ended.  [default: no]"),
    click.option("--num-return-sequences", type=int, help="beam: best hypotheses to print.  [default: 1]"),
    click.option("--no-repeat-ngram-size", type=int, help="Never generate an n-gram of this size twice."),
    click.option("--temperature", type=float, help="sample: below 1 sharpens, above 1 flattens.  [default: 1.0]"),
    click.option("--top-k", type=int, help="sample: among the k most likely tokens only."),
    click.option("--top-p", type=float, help="sample: among the most likely tokens that make up this mass."),
    click.option("--seed", type=int, help="sample: seed of the random choices."),
)


def decoding_flags(command):
    """Add DECODING_FLAGS to a click command, in their order."""
    for option in reversed(DECODING_FLAGS):
        command = option(command)
    return command


def is_export(directory: str) -> bool:
    """True for an export directory, False for a model directory; a one-line error for anything else."""
    import os

    from ..artifacts import CONFIG
    from ..errors import ArtifactError
    from ..exports.manifest import MANIFEST

    if not os.path.isdir(directory):
        raise ArtifactError(f"{directory} is not a directory; give a model directory (lmkit compose, lmkit import-hf) "
                            "or an export directory (lmkit export)")
    if os.path.isfile(os.path.join(directory, MANIFEST)):
        return True
    if os.path.isfile(os.path.join(directory, CONFIG)):
        return False
    models = [name for name in sorted(os.listdir(directory)) if os.path.isfile(os.path.join(directory, name, MANIFEST))]
    hint = f" (it looks like a Triton repository: give {os.path.join(directory, models[0])})" if models else ""
    raise ArtifactError(f"{directory} is neither an export directory (no {MANIFEST}) nor a model directory (no "
                        f"{CONFIG}){hint}; make one with lmkit export, or lmkit compose")


def decoding_options(default: tuple[str, dict] | None, strategy: str | None, given: dict, host):
    """(strategy name, options): the model's settings for its strategy, overridden by the command line."""

    from ..options import build_options

    name = strategy or (default[0] if default is not None else "greedy")
    options_class = host.component("decoding", name).options_class()
    values = dict(default[1]) if default is not None and default[0] == name else {}
    accepted = {f.name for f in dataclasses.fields(options_class)}
    for key in given:
        if key not in accepted:
            takers = [other for other, component in sorted(host.components["decoding"].items())
                      if key in {f.name for f in dataclasses.fields(component.options_class())}]
            hint = f"; it is an option of {', '.join(takers)} (--strategy {takers[0]})" if takers else ""
            raise click.UsageError(f"--{key.replace('_', '-')} does not apply to the {name} strategy{hint}")
    return name, build_options(options_class, {**values, **given}, f"decoding {name}")
