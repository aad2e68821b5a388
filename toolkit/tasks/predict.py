"""Apply a fine-tuned model to a task file: a prediction per example, and the metrics when it is labelled."""
from __future__ import annotations

import numpy as np

from ..errors import ArtifactError
from .finetune import TaskOptions
from .kinds import task_kind

HEADS = {"sequence-head": None, "token-head": "token-classification", "span-head": "question-answering"}


def predict(model_dir: str, path: str, *, batch_size: int = 32, max_length: int | None = None,
            text_fields: tuple[str, ...] = (), label_field: str = "label", tag_column: int = -1,
            device: str = "cpu", progress: bool = True) -> tuple[list[dict], dict | None]:
    """(one output per example, metrics or None) of the task head in model_dir."""
    import torch
    from tqdm import tqdm

    from ..model import load_model

    model, tokenizer, config = load_model(model_dir, device=device)
    head_name = next((o["type"] for o in config["spec"].get("objectives", []) if o["type"] in HEADS), None)
    if head_name is None:
        raise ArtifactError(f"{model_dir} has no task head (sequence-head, token-head or span-head); make one with "
                            "lmkit finetune")
    if tokenizer is None:
        raise ArtifactError(f"{model_dir} has no tokenizer.json to read the examples with")
    head = model.objectives[head_name]
    labels = tuple(getattr(head.options, "labels", ()))
    options = TaskOptions(kind=HEADS[head_name] or head.options.task, text_fields=text_fields,
                          label_field=label_field, labels=labels, tag_column=tag_column)
    kind = task_kind(options.kind, options)
    kind.allow_no_answer = getattr(head.options, "allow_no_answer", False)
    data = kind.read(path, labels=labels, require_labels=False)
    stack = model.encoder if model.encoder is not None else model.decoder
    limit = getattr(stack, "max_positions", None)
    max_length = min(max_length or limit or 512, limit or 1 << 30)
    encoded, _ = kind.encode(data, tokenizer, max_length, model.encoder is not None)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    batches = [kind.collate(encoded[i:i + batch_size], pad) for i in range(0, len(encoded), batch_size)]
    predictions = []
    with torch.no_grad():
        for batch in tqdm(batches, desc="predict", unit="batch", disable=not progress or None):
            tensors = {name: torch.from_numpy(np.ascontiguousarray(a)).to(device) for name, a in batch.items()}
            prediction = head.predict(model, tensors)
            predictions.append((prediction.float() if prediction.is_floating_point() else prediction).cpu().numpy())
    outputs = kind.outputs(predictions, batches, encoded, data)
    metrics = kind.metrics(predictions, batches, encoded, data) if kind.labelled(data) else None
    return outputs, metrics
