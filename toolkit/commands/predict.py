"""`lmkit predict`: run a fine-tuned model's task head over a task file (click only at import)."""
from __future__ import annotations

import json

import click

from ..tasks.chunks import SCHEMES


@click.command("predict")
@click.argument("model_dir", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--data", "path", required=True, type=click.Path(dir_okay=False),
              help="Examples in the format the model was fine-tuned on (.jsonl, .tsv, CoNLL or SQuAD .json); "
                   "labels are optional.")
@click.option("--task", "task", metavar="NAME",
              help="The task to predict of a multi-task run (lmkit finetune --multitask) given as MODEL_DIR: its "
                   "best model of that task (MODEL_DIR/best/NAME).")
@click.option("--text-fields", help="The fields (or TSV columns) holding the text(s), comma-separated.")
@click.option("--label-field", default="label", show_default=True, help="The field (or column) of the label.")
@click.option("--tag-column", default=-1, show_default=True, type=int, help="CoNLL: the column of the tags.")
@click.option("--tag-scheme", type=click.Choice(SCHEMES),
              help="CoNLL: how tags form entities for entity F1.  [default: the one the model was fine-tuned with]")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Examples per pass.")
@click.option("--max-length", type=click.IntRange(min=4), help="Tokens per sequence.  [default: the model's context]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def predict_command(model_dir, path, task, text_fields, label_field, tag_column, tag_scheme, batch_size, max_length,
                    device):
    """Print one JSON line per example of --data with MODEL_DIR's prediction; when every example is
    labelled, the metrics go to stderr.

    Each line names the example ("line": its line in the file, or "index" and "id" of a SQuAD
    question) and holds the prediction: "label" and "probabilities" of every label, "value" for
    regression, "choice" and the choices' "probabilities", "tags" per word with each tag's
    probability, or the "answer" text with its "score" (start and end logits added), or, from a
    text-to-text model (T5, lmkit finetune --task text-to-text), the "text" it generates, scored by
    exact match, F1 and BLEU.

    MODEL_DIR is a model directory made by lmkit finetune, or the export directory of a fine-tuned
    encoder (BERT, ELMo, ...) or encoder-decoder, which runs on onnxruntime without torch, or the
    folder of a multi-task run (lmkit finetune --multitask) with --task naming one of its tasks.

    Several MODEL_DIRs fine-tuned on the same labels (a forward and a backward ULMFiT classifier, say)
    each read the examples with their own tokenizer, and their probabilities are averaged; a mix of
    model and export directories is allowed.
    """
    from ..errors import require_torch
    from ..opening import is_export
    from ..tasks.predict import predict, task_model

    model_dir = [task_model(directory, task) for directory in model_dir]  # a multi-task run: its model of --task
    if not all(is_export(directory) for directory in model_dir):  # exports run without torch
        require_torch("lmkit predict on a model directory")
        from ..training.distributed import resolve_device

        device = str(resolve_device(device))
    fields = tuple(f.strip() for f in text_fields.split(",") if f.strip()) if text_fields else ()
    outputs, metrics = predict(list(model_dir), path, batch_size=batch_size, max_length=max_length, text_fields=fields,
                               label_field=label_field, tag_column=tag_column, tag_scheme=tag_scheme,
                               device=device)
    for output in outputs:
        click.echo(json.dumps(output))
    if metrics is not None:
        click.echo("  ".join(f"{name} {value:.4f}" for name, value in metrics.items()), err=True)
