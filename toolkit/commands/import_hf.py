"""`lmkit import-hf`: a Hugging Face checkpoint directory as an lmkit model directory (click only at import).

The generic part lives here: reading config.json, finding safetensors weights (pickles are refused,
never loaded), the tokenizer, and writing the model directory through the same code as `lmkit
compose`. What is particular to a model type (its config and tensor names) is an importer its family
registers (the `register_importers` hook, lmkit.contract.Importer) under the `model_type` of config.json.
"""
from __future__ import annotations

import json
import os

import click

SHARD_INDEX = "model.safetensors.index.json"
SPIECE = "spiece.model"  # a SentencePiece model, converted at import (lmkit.tokenizers.sentencepiece)


def import_hf(src: str, out: str, *, force: bool = False, host=None) -> dict:
    """Write the Hugging Face checkpoint in `src` as an lmkit model directory `out`; returns its config.json.

    `src` is what `save_pretrained` writes: config.json, model.safetensors (or shards with their
    index) and the tokenizer (tokenizer.json, vocab.json with merges.txt, vocab.txt, or a SentencePiece
    spiece.model alone, converted to tokenizer.json here).
    """
    from ..artifacts import read_safetensors_header, staged_directory
    from ..errors import ArtifactError, require_torch
    from ..registry import get_host
    from ..spec import resolve
    from ..tokenizers import load_tokenizer

    require_torch("lmkit import-hf")
    from safetensors.torch import load_file

    from ..model import build_model, check_weights_match, describe_build, save_model

    host = host or get_host()
    hf_config = _read_hf_config(src, host)
    weights = _find_weights(src)
    importer = host.component("importer", hf_config["model_type"]).load()
    path = _tokenizer_path(src)
    tokenizer = load_tokenizer(path) if path != SPIECE else _convert_spiece(src, importer)
    with staged_directory(out, force=force, inputs=(src,)) as stage:
        tensors = {}
        for path in weights:
            read_safetensors_header(path)  # whole, and not a pickle in disguise
            tensors.update(load_file(path))
        try:
            table, state = importer(hf_config, tensors)
        except ValueError as error:
            raise ArtifactError(f"{src}: {error}") from None
        table["name"] = os.path.basename(os.path.normpath(src))
        spec = resolve(table, host)
        stack = spec.encoder or spec.decoder
        vocab_size = stack.options.vocab_size
        if tokenizer.vocab_size > vocab_size:
            raise ArtifactError(f"{src}: the tokenizer has {tokenizer.vocab_size} tokens but the model embeds "
                                f"only {vocab_size}; the tokenizer belongs to another checkpoint")
        model = build_model(spec, seed=None)
        check_weights_match(model, {name: {"shape": list(t.shape)} for name, t in state.items()},
                            f"{src} (as the {stack.type} {stack.kind})")
        model.load_state_dict(state, strict=True)
        # Where the weights came from, for an export's model card (base_model); every later save keeps it.
        model.provenance = {"imported_from": {"format": "transformers", "model_type": hf_config["model_type"],
                                              "name": hf_config.get("_name_or_path") or table["name"],
                                              "architectures": hf_config.get("architectures")}}
        save_model(stage, model, host, tokenizer)
    return describe_build(spec, host, tokenizer)


def _read_hf_config(src: str, host) -> dict:
    from ..artifacts import read_json
    from ..errors import ArtifactError, one_of

    if not os.path.isdir(src):
        raise ArtifactError(f"{src} is not a directory; give a Hugging Face model directory (what "
                            "save_pretrained writes)")
    path = os.path.join(src, "config.json")
    if not os.path.isfile(path):
        raise ArtifactError(f"{src} has no config.json: it is not a Hugging Face model directory (what "
                            "save_pretrained writes)")
    config = read_json(path, "restore it from the checkpoint")
    if not isinstance(config, dict):
        raise ArtifactError(f"{path} is not a JSON object; restore it from the checkpoint")
    if "lmkit_version" in config:
        raise ArtifactError(f"{src} is already an lmkit model directory; use it as it is")
    model_type = config.get("model_type")
    importers = host.components["importer"]
    if model_type not in importers:
        what = f"a '{model_type}' model" if model_type else "a model without a model_type"
        raise ArtifactError(f"{src} holds {what} (config.json model_type); lmkit imports "
                            f"{one_of(importers)}")
    return config


def _find_weights(src: str) -> list[str]:
    """The safetensors files of the checkpoint; a checkpoint with only pickles is refused, not read."""
    from ..artifacts import PICKLE_SUFFIXES, refuse_pickle
    from ..errors import ArtifactError

    single = os.path.join(src, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    index = os.path.join(src, SHARD_INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ArtifactError(f"{index} has no readable weight_map; restore it from the checkpoint") from None
        missing = [shard for shard in shards if not os.path.isfile(os.path.join(src, shard))]
        if missing:
            raise ArtifactError(f"{src} lacks {missing[0]}, a shard that {SHARD_INDEX} lists; download it too")
        return [os.path.join(src, shard) for shard in shards]
    pickles = sorted(name for name in os.listdir(src) if name.endswith(PICKLE_SUFFIXES))
    if pickles:
        refuse_pickle(os.path.join(src, pickles[0]))
    raise ArtifactError(f"{src} has no model.safetensors (nor {SHARD_INDEX}); save the model with "
                        "save_pretrained, which writes safetensors")


def _tokenizer_path(src: str) -> str:
    """src when it holds a tokenizer load_tokenizer reads, SPIECE when it holds only a SentencePiece model."""
    from ..errors import ArtifactError

    if os.path.isfile(os.path.join(src, "tokenizer.json")) or os.path.isfile(os.path.join(src, "vocab.txt")) or all(
            os.path.isfile(os.path.join(src, name)) for name in ("vocab.json", "merges.txt")):
        return src
    if os.path.isfile(os.path.join(src, SPIECE)):
        return SPIECE
    raise ArtifactError(f"{src} has no tokenizer (tokenizer.json, spiece.model, vocab.txt, or vocab.json with "
                        "merges.txt); save the checkpoint's tokenizer there too (tokenizer.save_pretrained)")


def _convert_spiece(src: str, importer):
    """The checkpoint's spiece.model as a tokenizers Tokenizer (lmkit.tokenizers.sentencepiece), converted here
    once so that nothing after the import needs sentencepiece. Its sentinel count is tokenizer_config.json's
    extra_ids, else the importer's `spiece` table's (T5: 100); its template the table's (T5: t5)."""
    from ..artifacts import read_json
    from ..errors import ArtifactError
    from ..tokenizers.sentencepiece import convert_spiece

    settings = dict(getattr(importer, "spiece", None) or {})
    config_path = os.path.join(src, "tokenizer_config.json")
    config = read_json(config_path, "restore it from the checkpoint") if os.path.isfile(config_path) else {}
    extra_ids = config.get("extra_ids", settings.get("extra_ids", 0)) if isinstance(config, dict) else 0
    if isinstance(extra_ids, bool) or not isinstance(extra_ids, int) or extra_ids < 0:
        raise ArtifactError(f"{config_path}: extra_ids is {extra_ids!r}, not a count of sentinels; fix it")
    return convert_spiece(os.path.join(src, SPIECE), extra_ids, settings.get("template", "none"))


@click.command("import-hf")
@click.argument("src", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def import_hf_command(src, out, force):
    """Convert the Hugging Face checkpoint directory SRC (safetensors) into an lmkit model directory.

    Reads config.json, model.safetensors and the tokenizer (tokenizer.json, or spiece.model with the
    spiece extra installed); pickled weights (pytorch_model.bin) are
    refused. Nothing is downloaded: SRC is a local directory.
    """
    built = import_hf(src, out, force=force)
    parts = ", ".join(f"{k}={v['type']}" for k, v in built["components"].items())
    click.echo(f"imported {src}: {parts}: {out}", err=True)
    click.echo(out)
