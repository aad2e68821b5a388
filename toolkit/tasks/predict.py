"""Apply a fine-tuned model to a task file: a prediction per example, and the metrics when it is labelled.

The model is a model directory (run with PyTorch) or an encoder's export directory (run on
onnxruntime without torch, the head applied in numpy: lmkit.exports.heads).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ArtifactError, LmkitError
from ..seq2seq import target_text
from .finetune import TaskOptions
from .kinds import task_kind

HEADS = {"sequence-head": None, "token-head": "token-classification", "span-head": "question-answering"}


@dataclass
class Runner:
    """What prediction needs of a model, whichever backend runs it."""

    spec: dict
    tokenizer: object
    max_length: int | None
    scores: Callable[[dict], np.ndarray]  # a collated batch -> the head's scores (logits), float32
    token_inputs: dict | None = None  # what the stack reads beside the ids (lmkit.token_inputs)


def torch_runner(model_dir: str, device: str) -> Runner:
    import torch

    from ..model import load_model

    model, tokenizer, config = load_model(model_dir, device=device)
    head = next((model.objectives[o["type"]] for o in config["spec"].get("objectives", []) if o["type"] in HEADS),
                None)

    model.eval()

    @torch.no_grad()
    def run(batch: dict) -> np.ndarray:
        tensors = {name: torch.from_numpy(np.ascontiguousarray(a)).to(device) for name, a in batch.items()}
        return head.scores(model, tensors).float().cpu().numpy()

    return Runner(config["spec"], tokenizer, model.feature_stack.max_positions, run,
                  None if tokenizer is None else model.feature_stack.token_inputs(tokenizer))


def export_runner(export_dir: str, device: str) -> Runner:
    from lmkit.exports.heads import ExportedHead
    from lmkit.opening import open_model

    exported = open_model(export_dir, device=device)
    head = ExportedHead(exported)
    limit = exported.max_positions
    return Runner(exported.manifest["source"]["spec"], exported.tokenizer, limit,
                  lambda batch: head.scores(exported, batch), exported.token_inputs)


def predict(model_dir: str | list[str], path: str, *, batch_size: int = 32, max_length: int | None = None,
            text_fields: tuple[str, ...] = (), label_field: str = "label", tag_column: int = -1,
            tag_scheme: str | None = None, device: str = "cpu",
            progress: bool = True) -> tuple[list[dict], dict | None]:
    """(one output per example, metrics or None) of the task head in model_dir.

    tag_scheme: how token tags form entities (lmkit.tasks.chunks); None: the one the model was
    fine-tuned with. Several model directories (or exports) fine-tuned on the same labels: each reads
    the examples with its own tokenizer (a backward model's reversed), and their probabilities are
    averaged (ULMFiT §3.4's forward and backward classifiers); LmkitError for models of different
    tasks or labels, or a task whose predictions cannot be averaged (tags, answer spans).
    """
    from lmkit.opening import model_kind_of

    dirs = [model_dir] if isinstance(model_dir, str) else list(model_dir)
    if not dirs:
        raise LmkitError("no model to predict with; give a fine-tuned model directory or export")
    from .text_to_text import answers_in_text, is_text_to_text_file

    # Text to text (T5; a GLM without a head on a file of {"input", "target"} records): text, no head.
    if any(model_kind_of(directory) == "encoder-decoder" or answers_in_text(directory) and is_text_to_text_file(path)
           for directory in dirs):
        if len(dirs) > 1:
            raise LmkitError("a text-to-text model answers in text, which cannot be averaged with another "
                             "model's; predict with one model directory")
        return predict_text_to_text(dirs[0], path, batch_size=batch_size, device=device)
    if len(dirs) > 1:  # checked before any model runs
        first = _head_part(dirs[0])
        for other in dirs[1:]:
            part = _head_part(other)
            if first is not None and part is not None and _task_of(part) != _task_of(first):
                raise LmkitError(f"{other} was fine-tuned for another task or labels than {dirs[0]} "
                                 f"({_describe(part)} against {_describe(first)}); average models of one task")
    runs = []
    for directory in dirs:
        runs.append(_scores(directory, path, batch_size=batch_size, max_length=max_length, text_fields=text_fields,
                            label_field=label_field, tag_column=tag_column, tag_scheme=tag_scheme, device=device,
                            progress=progress))
        if len(dirs) > 1 and not runs[0][1].averages:
            runs[0][1].average([])  # says, in one line, why this task's predictions cannot be averaged
    part, kind, data, encoded, batches, scores = runs[0]
    if len(runs) > 1:
        averaged = kind.average([np.concatenate(run[5]) for run in runs])
        scores = np.split(averaged, np.cumsum([len(s) for s in scores])[:-1])
    predictions = [kind.decide(s) for s in scores]
    outputs = kind.outputs(scores, batches, encoded, data)
    metrics = kind.metrics(predictions, batches, encoded, data) if kind.labelled(data) else None
    return outputs, metrics


def multitask_names(directory: str) -> list[str] | None:
    """The task names of a multi-task fine-tuning run in `directory` (lmkit finetune --multitask, whose task.json
    names them), in training order; None when the directory is not one."""
    import os

    from ..artifacts import read_json
    from .finetune import TASK

    path = os.path.join(directory, TASK)
    if not os.path.isfile(path):
        return None
    tasks = read_json(path, "restore it from the run, or point at the run's best/TASK model").get("multitask")
    if not tasks:
        return None
    return [entry.partition("=")[0].strip() for entry in tasks.split(",") if entry.strip()]


def task_model(directory: str, task: str | None) -> str:
    """The model directory that predicts for `task` (lmkit predict --task): DIR/best/TASK of a multi-task run,
    else `directory` itself. LmkitError, listing the run's tasks, when a multi-task run is given without a
    task or with one it did not train; when --task is given for a directory that is not a multi-task run;
    and when the task has no best model yet (none is saved before the run's first evaluation)."""
    import os

    from ..artifacts import CONFIG
    from .finetune import BEST

    names = multitask_names(directory)
    if names is None:
        if task is not None:
            raise LmkitError(f"--task {task}: {directory} is not a multi-task run (lmkit finetune --multitask); "
                             "leave --task out")
        return directory
    if task is None:
        raise LmkitError(f"{directory} is a multi-task run of {', '.join(names)}: choose one with --task, "
                         f"e.g. --task {names[0]}")
    if task not in names:
        raise LmkitError(f"--task {task}: {directory} trained no such task; its tasks: {', '.join(names)}")
    best = os.path.join(directory, BEST, task)
    if not os.path.isfile(os.path.join(best, CONFIG)):
        raise LmkitError(f"{directory} has no model of task {task} yet: a run saves one at its first evaluation "
                         f"with a --dev file; go on with it (lmkit finetune --out {directory} --resume)")
    return best


def _head_part(model_dir: str) -> dict | None:
    """The task head's part of the spec of a model or export directory, None when it has none."""
    from lmkit.opening import is_export

    if is_export(model_dir):
        from lmkit.exports.manifest import read_manifest

        spec = read_manifest(model_dir)["source"]["spec"]
    else:
        from ..artifacts import read_config

        spec = read_config(model_dir)["spec"]
    return next((o for o in spec.get("objectives", []) if o["type"] in HEADS), None)


# The task a head without a "task" entry does: a sequence head records its own (classification, regression, ...).
HEAD_TASKS = {"token-head": "token-classification", "span-head": "question-answering"}


def _task_of(part: dict) -> tuple:
    task = part.get("task") or HEAD_TASKS.get(part["type"], "classification")
    return part["type"], task, list(part.get("labels", ()))


def _describe(part: dict) -> str:
    _, task, labels = _task_of(part)
    return f"{task} with labels {', '.join(map(str, labels))}" if labels else task


def _scores(model_dir: str, path: str, *, batch_size: int, max_length: int | None, text_fields: tuple[str, ...],
            label_field: str, tag_column: int, tag_scheme: str | None, device: str, progress: bool):
    """(head part, task kind, data, encoded, batches, the head's scores per batch) of one model over path."""
    from tqdm import tqdm

    from lmkit.opening import is_export

    runner = export_runner(model_dir, device) if is_export(model_dir) else torch_runner(model_dir, device)
    part = next((o for o in runner.spec.get("objectives", []) if o["type"] in HEADS), None)
    if part is None:
        raise ArtifactError(f"{model_dir} has no task head (sequence-head, token-head or span-head); make one with "
                            "lmkit finetune")
    if runner.tokenizer is None:
        raise ArtifactError(f"{model_dir} has no tokenizer.json to read the examples with")
    labels = tuple(part.get("labels", ()))
    recipe_options = part.get("recipe_options")
    if not text_fields and (recipe_options or {}).get("pattern"):  # a cloze pattern names the fields it reads
        from .cloze import pattern_fields

        text_fields = pattern_fields(recipe_options["pattern"])
    options = TaskOptions(kind=HEADS[part["type"]] or part.get("task", "classification"), text_fields=text_fields,
                          label_field=label_field, labels=labels, tag_column=tag_column,
                          tag_scheme=tag_scheme or part.get("tag_scheme") or "auto")
    kind = task_kind(options.kind, options)
    kind.allow_no_answer = part.get("allow_no_answer", False)
    data = kind.read(path, labels=labels, require_labels=False)
    limit = runner.max_length
    max_length = min(max_length or limit or 512, limit or 1 << 30)
    from ..registry import get_host

    recipe = get_host().instantiate("task-recipe", part.get("recipe", "encoder"), recipe_options)
    encoded, _ = kind.encode(data, runner.tokenizer, max_length, recipe)
    pad = runner.tokenizer.pad_id if runner.tokenizer.pad_id is not None else 0
    extra = {} if runner.token_inputs is None else {"token_inputs": runner.token_inputs}
    batches = [kind.collate(encoded[i:i + batch_size], pad, **extra) for i in range(0, len(encoded), batch_size)]
    # disable=None: the bar is drawn only on a terminal, never into a log.
    scores = [runner.scores(batch)
              for batch in tqdm(batches, desc="predict", unit="batch", disable=None if progress else True)]
    return part, kind, data, encoded, batches, scores


def predict_text_to_text(model_dir: str, path: str, *, batch_size: int = 32,
                         device: str = "cpu") -> tuple[list[dict], dict | None]:
    """(one {"line", "text"} per example, exact match/F1/BLEU when every example has a target) of an
    encoder-decoder, or of a decoder that writes targets (GLM: lmkit.opening.OpenedModel.encode_sources), a model
    directory or its export, on any text-to-text task file
    (lmkit.tasks.text_to_text.read_task), generated with the model's decoding settings; a classification
    file is read with the prefix the model was fine-tuned with."""
    from lmkit.opening import open_model

    from .text_to_text import read_task, stored_prefix, text_metrics

    data = read_task(path, require_labels=False, prefix=stored_prefix(model_dir))
    model = open_model(model_dir, device=device)
    if model.tokenizer is None:
        raise ArtifactError(f"{model_dir} has no tokenizer.json to read the examples with")
    results = model.generate_ids(model.encode_sources([e.source for e in data.examples]), model.decoding(),
                                 batch_size=batch_size)
    texts = [target_text(model.output_tokenizer, r.tokens) for r in results]
    lines = data.lines or range(1, len(texts) + 1)
    outputs = [{"line": line, "text": text} for line, text in zip(lines, texts)]
    labelled = all(e.target is not None for e in data.examples)
    return outputs, text_metrics(texts, [e.target for e in data.examples]) if labelled else None
