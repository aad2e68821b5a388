"""`lmkit export-hf`: an lmkit model directory as a transformers checkpoint directory (click only at import).

The converse of `lmkit import-hf`. The generic part lives here: loading the model, finding its
family's converter, writing config.json, model.safetensors and the tokenizer the way save_pretrained
does, atomically. What is particular to a model type (transformers' names, its config keys) is a
converter the family registers (the `register_hf_exporters` hook, lmkit.contract.HFExporter) under the
stack it converts, as exporters to ONNX are: "decoder.gpt2", "encoder.bert".
"""
from __future__ import annotations

import os

import click


def find_hf_exporter(spec, host):
    """The converter of a composition: its decoder's if it has one, else its encoder's; one-line error if none."""
    from ..errors import LmkitError

    kind, part = ("decoder", spec.decoder) if spec.decoder is not None else ("encoder", spec.encoder)
    if part is None:
        raise LmkitError("the model has neither an encoder nor a decoder: there is nothing to export")
    name = f"{kind}.{part.type}"
    registered = host.components["hf-exporter"]
    if name not in registered:
        raise LmkitError(f"the {kind} '{part.type}' has no transformers twin lmkit can write (converters: "
                         f"{', '.join(sorted(registered)) or 'none'}); a plugin adds one with the "
                         "register_hf_exporters hook")
    return host.component("hf-exporter", name)


def export_hf(model_dir: str, out: str, *, force: bool = False, host=None) -> dict:
    """Write the model in `model_dir` to `out` as transformers' save_pretrained would; returns config.json.

    `out` gets config.json (model_type, architectures, the sizes in transformers' names, the special
    token ids), model.safetensors (tied copies left out: transformers ties them again) and the
    tokenizer (tokenizer.json, tokenizer_config.json). LmkitError, in one line, for a model no
    converter can represent.
    """
    from ..artifacts import atomic_write_json, staged_directory
    from ..errors import LmkitError, require_torch
    from ..registry import get_host

    require_torch("lmkit export-hf")
    from safetensors.torch import save_file

    from ..model import load_model

    host = host or get_host()
    model, tokenizer, _ = load_model(model_dir, host)
    model.eval()
    converter = find_hf_exporter(model.spec, host)
    try:
        config, tensors = converter.load()(model, tokenizer)
    except ValueError as error:
        raise LmkitError(f"{model_dir}: {error}") from None
    if tokenizer is not None:
        for role in ("bos", "eos", "pad"):
            token = getattr(tokenizer, f"{role}_id")
            # GPT-2's one special token also pads in lmkit; transformers' GPT-2 has no pad token.
            if token is not None and not (role == "pad" and token == tokenizer.eos_id):
                config.setdefault(f"{role}_token_id", token)
    config.setdefault("dtype", "float32")
    with staged_directory(out, force=force, inputs=(model_dir,)) as stage:
        # One storage per tensor: safetensors refuses views and shared storage.
        save_file({name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()},
                  os.path.join(stage, "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(os.path.join(stage, "config.json"), config)
        if tokenizer is not None:
            tokenizer.save(stage)
    return config


@click.command("export-hf")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Checkpoint directory to write.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def export_hf_command(model_dir, out, force):
    """Write MODEL_DIR as a transformers checkpoint: config.json, model.safetensors, tokenizer.

    For the families with a transformers twin (GPT-2, GPT, BERT, ALBERT, RoBERTa, T5); the
    directory loads with transformers' from_pretrained, and `lmkit import-hf` reads it back.
    """
    config = export_hf(model_dir, out, force=force)
    click.echo(f"wrote {config['architectures'][0]} ({config['model_type']}): {out}", err=True)
    click.echo(out)
