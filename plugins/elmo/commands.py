"""`lmkit import-elmo`: bilm-tf's released weights as an lmkit model directory (click only at import)."""
from __future__ import annotations

import click


@click.command("import-elmo")
@click.argument("options_json", type=click.Path(dir_okay=False))
@click.argument("weights_hdf5", type=click.Path(dir_okay=False))
@click.option("--vocab", "vocab_path", required=True, type=click.Path(dir_okay=False),
              help="bilm-tf's vocabulary file (one token a line, with <S>, </S> and <UNK>): the words the model reads.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def import_elmo_command(options_json, weights_hdf5, vocab_path, out, force):
    """Convert bilm-tf's OPTIONS_JSON and WEIGHTS_HDF5 (a released ELMo) into an lmkit model directory.

    The biLM is imported as a frozen feature extractor: the released file has no softmax, so the model
    has no objective; `lmkit embed` and `lmkit finetune` read its layers. Needs h5py.
    """
    from .bilm_tf import import_bilm

    import_bilm(options_json, weights_hdf5, vocab_path, out, force=force)
    click.echo(f"imported {weights_hdf5} with {options_json}: {out}", err=True)
    click.echo(out)
