"""`lmkit embed`: token states and sentence vectors of texts, as JSON or safetensors (click only at import)."""
from __future__ import annotations

import json

import click

POOLINGS = ("mean", "cls", "last", "none")


@click.command("embed")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--text", "texts", multiple=True, metavar="TEXT", help="A text to embed; repeat for more.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False),
              help="A file of texts: one per line, or .jsonl records with --text-field.  [default: stdin]")
@click.option("--text-field", default="text", show_default=True, help="The field of .jsonl records to read.")
@click.option("--pool", "pooling", type=click.Choice(POOLINGS), default="mean", show_default=True,
              help="Sentence vector: mean of the token states, the stack's pooled output (cls), the last "
                   "token's state, or none.")
@click.option("--tokens", "with_tokens", is_flag=True, help="Also write each token's state.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write to this .json, .safetensors or .npz file (atomically).  [default: JSON on stdout]")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Texts per forward pass.")
@click.option("--truncate", is_flag=True, help="Cut texts longer than the model's context instead of failing.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--vectors", type=click.Path(dir_okay=False),
              help="CoVe (an NMT model): GloVe-format word vectors to put before each encoder state, "
                   "[GloVe(w); CoVe(w)], in place of the model's own embeddings.")
@click.option("--layers", metavar="mix|all|INDEX",
              help="A stack that keeps its layers (ELMo): their learned scalar mix (mix, the default), every layer "
                   "concatenated on the feature axis (all), or one layer by index (0: the token layer).")
def embed_command(model_dir, texts, input_path, text_field, pooling, with_tokens, out, batch_size, truncate,
                  device, vectors, layers):
    """Embed texts with MODEL_DIR: each text's sentence vector and, with --tokens, its token states.

    Encoders (BERT, CoVe) give their top-layer states, decoders (GPT) their final hidden states.
    MODEL_DIR may also be an encoder's export directory (lmkit export), run on onnxruntime without torch.
    The safetensors (or numpy .npz) output holds `pooled` (N, D) and, with --tokens, `token_states` (N, T, D) padded to
    the longest text with `attention_mask` (N, T) and `input_ids` (N, T).
    """
    from ..errors import DataError, require_torch

    if out is not None and not out.endswith((".json", ".safetensors", ".npz")):
        raise click.UsageError(f"--out {out}: the file name must end in .json, .safetensors or .npz (numpy), which "
                               "picks the format")
    if pooling == "none" and not with_tokens:
        raise click.UsageError("--pool none with no --tokens leaves nothing to write; add --tokens or pick a pooling")
    texts = list(texts) or _read_texts(input_path, text_field)
    from ..errors import ArtifactError
    from ..opening import is_export, open_model

    exported = is_export(model_dir)
    if exported and vectors is not None:
        raise click.UsageError("--vectors works on a model directory (CoVe), not on an export directory")
    if not exported:
        require_torch("lmkit embed")
    model = open_model(model_dir, device=device)  # an export runs on onnxruntime, without torch
    tokenizer, limit = model.tokenizer, model.max_positions
    options = {}  # for the stack's features()
    if vectors is not None:
        options["word_vectors"] = _word_vectors(model.model, tokenizer, vectors, model_dir)
    if layers is not None:
        if not _keeps_layers(model, exported):
            raise click.UsageError(f"--layers picks among a stack's layers (ELMo's); {model_dir} does not give them")
        options["layers"] = layers
    if tokenizer is None:
        raise ArtifactError(f"{model_dir} has no tokenizer.json to read the texts with")
    if limit is not None:
        for number, text in enumerate(texts, 1):
            length = len(tokenizer.encode(text, add_special_tokens=True))
            if length > limit and not truncate:
                raise DataError(f"text {number} is {length} tokens long, beyond the model's {limit} positions; "
                                "shorten it or pass --truncate to keep its first tokens")
            if length > limit:
                click.echo(f"warning: text {number} is {length} tokens long; cut to the model's {limit} positions",
                           err=True)
    pooled, token_states, ids = model.embed(texts, pooling=pooling, batch_size=batch_size, max_length=limit,
                                            progress=not exported, **options)
    if out is not None and out.endswith((".safetensors", ".npz")):
        _write_safetensors(out, pooled, token_states if with_tokens else None, ids)
    else:
        records = []
        for i, text in enumerate(texts):
            record = {"text": text, "tokens": len(ids[i])}
            if pooled is not None:
                record["embedding"] = [round(float(x), 6) for x in pooled[i]]
            if with_tokens:
                record["input_ids"] = ids[i]
                record["token_states"] = [[round(float(x), 6) for x in row] for row in token_states[i]]
            records.append(record)
        payload = json.dumps(records)
        if out is None:
            click.echo(payload)
        else:
            from ..artifacts import atomic_write

            with atomic_write(out) as handle:
                handle.write(payload + "\n")
    if out is not None:
        click.echo(f"embedded {len(texts)} texts: {out}", err=True)


def _read_texts(path: str | None, text_field: str) -> list[str]:
    from ..errors import DataError
    from .inputs import input_lines

    lines, source = input_lines(path, "--text TEXT", "texts")
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if source.endswith(".jsonl"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{source} line {number} is not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise DataError(f"{source} line {number} has no string field '{text_field}'; "
                                "name the field with --text-field")
            texts.append(record[text_field])
        else:
            texts.append(line)
    if not texts:
        raise DataError(f"{source} holds no texts; give one per line")
    return texts


def _write_safetensors(path: str, pooled, token_states, ids) -> None:
    import numpy as np
    from safetensors.numpy import save

    from ..artifacts import atomic_write

    tensors = {}
    if pooled is not None:
        tensors["pooled"] = np.ascontiguousarray(pooled, dtype=np.float32)
    if token_states is not None:
        width, dim = max(len(row) for row in ids), token_states[0].shape[-1]
        states = np.zeros((len(ids), width, dim), dtype=np.float32)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            states[i, :len(row)] = token_states[i]
            mask[i, :len(row)] = 1
            input_ids[i, :len(row)] = row
        tensors.update(token_states=states, attention_mask=mask, input_ids=input_ids)
    with atomic_write(path, "wb") as handle:
        if path.endswith(".npz"):
            np.savez(handle, **tensors)
        else:
            handle.write(save(tensors))



def _keeps_layers(model, exported: bool) -> bool:
    """Whether --layers applies: the stack takes a `layers` option, or the export's graph gives a `layers` output."""
    if not exported:
        return "layers" in model.model.feature_stack.embed_options
    return any(t["name"] == "layers" for graph in model.manifest["graphs"].values() for t in graph["outputs"])


def _word_vectors(model, tokenizer, path: str, model_dir: str):
    """The GloVe-format vectors at `path` as a table over the tokenizer's ids, for an encoder that takes one."""
    import torch

    from ..word_vectors import load_word_vectors

    stack = model.feature_stack
    if "word_vectors" not in stack.embed_options:
        raise click.UsageError(f"--vectors needs a model whose encoder puts word vectors before its states (an NMT "
                               f"model for CoVe); {model_dir} has none")
    return torch.from_numpy(load_word_vectors(path, tokenizer)).to(next(stack.parameters()).device)
