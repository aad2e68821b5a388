"""`lmkit finetune`: a pretrained model, a task head on its features, and the shared trainer.

The fine-tuned model is a composition like any other: the pretrained stack that gives features
(the encoder when there is one, an encoder-decoder's included; else the decoder), a task head
objective, and what the stack's task recipe adds (lmkit.tasks.recipes: for a decoder, GPT's
auxiliary language-model loss as a `causal-lm` objective with weight λ, Radford et al. 2018, eq. 5:
L3 = L2 + λ L1). Evaluation on the dev file reports the task's metrics, and the best checkpoint by
the first of them is kept in OUT/best.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from ..artifacts import (
    StagedRun,
    atomic_write_json,
    find_weights,
    read_config,
    read_json,
    staged_directory,
    staged_run,
)
from ..errors import ArtifactError, DataError, LmkitError
from ..registry import get_host
from .kinds import task_kind
from .noisy_tune import check_noise_level, perturb

BEST = "best"
UNLIMITED_MAX_LENGTH = 512  # tokens per sequence for a stack without a position limit (recurrent), unless told
RESULTS = "finetune.json"
TASK = "task.json"  # the task options of a run, which --resume reads back


@dataclass(frozen=True)
class TaskOptions:
    kind: str = "classification"
    text_fields: tuple[str, ...] = ()
    label_field: str = "label"
    labels: tuple[str, ...] = ()
    aux_lm_weight: float | None = None  # λ; None: the recipe's (GPT's 0.5 for a decoder, none for an encoder)
    dropout: float = 0.1
    truncate: bool = True  # cut examples longer than --max-length (with a warning) rather than fail
    tag_column: int = -1  # token classification: the CoNLL column of the tags
    tag_scheme: str = "auto"  # token classification: how tags become entities (lmkit.tasks.chunks.SCHEMES)
    recipe: str | None = None  # a registered task recipe in place of the one the stack names
    noisy_tune: float = 0.0  # NoisyTune's λ: the pretrained weights shaken once before the first step (0: off)
    unlabeled: str | None = None  # unlabelled text, for a recipe that reads it (`reads_unlabeled`: CVT's)
    label_smoothing: float | None = None  # of a classifying head's loss; None: the recipe's (CVT's 0.1, else 0)
    overrides: tuple[str, ...] = ()  # `--set key=value` on the fine-tuned model's spec (lmkit.spec.apply_overrides)
    multitask: str | None = None  # --multitask NAME=FILE,... (a recipe that trains several tasks: CVT's)
    multitask_dev: str | None = None  # --dev NAME=FILE,... beside it
    # Fine-tuning as cloze (lmkit.tasks.cloze): a pattern with one [MASK] and a verbalizer "label=word,...",
    # read by the stack's cloze recipe (GLM's); multi_token: "sum" or "mean" to score words of several tokens.
    pattern: str | None = None
    verbalizer: str | None = None
    multi_token: str | None = None


# -- the model -------------------------------------------------------------------------------------


def prepare(pretrained: str, out: str, kind, train, options: TaskOptions, *, seed: int = 0):
    """Write into `out` (an empty directory, the run's stage): the pretrained stack with a fresh task head
    (and the recipe's changes to the tokenizer).

    Returns (the stack's task recipe, the positions the model reads or None when it has no limit, the
    width of the features the head reads).
    """
    from ..model import build_model, provenance, save_model
    from ..spec import resolve
    from ..tokenizers import load_tokenizer
    from .recipes import task_stack_key

    host = get_host()
    config = read_config(pretrained)
    spec = {key: value for key, value in config["spec"].items() if key != "tokenizer"}
    if not os.path.isfile(os.path.join(pretrained, "tokenizer.json")):
        raise ArtifactError(f"{pretrained} has no tokenizer.json to read the task with")
    tokenizer = load_tokenizer(pretrained)
    key = task_stack_key(spec)
    # An encoder-decoder is fine-tuned through its encoder (CoVe's use of an NMT model): the decoder stays behind,
    # unless the task is text to text (T5), which trains the whole model to generate its answers.
    if key == "encoder" and not kind.keeps_decoder:
        spec.pop("decoder", None)
        spec.pop("decoding", None)
    stack = dict(spec[key])
    stack_class = host.component(key, stack["type"]).load()
    recipe_options = None
    if options.pattern is not None:  # cloze: the stack's cloze recipe scores each label's word in the blank
        from .cloze import recipe_options as cloze_options

        if options.recipe is None and getattr(stack_class, "cloze_recipe", None) is None:
            raise LmkitError(f"--pattern and --verbalizer fine-tune as cloze, which needs a model that fills a blank "
                             f"with a word of its vocabulary (GLM); this {key} ({stack['type']}) has no cloze recipe: "
                             "leave them out to train a classifier head")
        recipe_options = cloze_options(options, train.labels)
    name = options.recipe or (stack_class.cloze_recipe if recipe_options else stack_class.task_recipe)
    if recipe_options is not None and host.component("task-recipe", name).options_class() is None:
        raise LmkitError(f"--pattern and --verbalizer are read by a cloze recipe; the {name} recipe is not one: "
                         "leave --recipe out")
    recipe = host.instantiate("task-recipe", name, recipe_options)
    reads = getattr(recipe, "stacks", None)  # lmkit.contract.TaskRecipe: None reads any stack (or checks it itself)
    if reads is not None and stack["type"] not in reads:
        presets = [name for name, preset in host.presets.items()
                   if any(preset.spec.get(part, {}).get("type") in reads for part in ("encoder", "decoder"))]
        raise LmkitError(f"the {recipe.name} recipe fine-tunes {' or '.join(reads)} stacks, and this model's {key} is "
                         f"{stack['type']}: leave --recipe out, or fine-tune a model composed from "
                         f"{' or '.join(presets) or 'one'}")
    served = getattr(recipe, "task_kinds", None)  # lmkit.contract.TaskRecipe: None serves every --task
    if served is not None and kind.name not in served:
        raise LmkitError(f"the {recipe.name} recipe fine-tunes {' and '.join(served)}, not {kind.name}: give "
                         f"--task {served[0]}, or leave --recipe out")
    # Text to text trains the model's own way of writing (no head, so no recipe's markers in the vocabulary).
    if kind.keeps_decoder and key == "encoder" and not spec.get("decoder"):  # a BERT: reads text, writes none
        raise LmkitError(f"--task {kind.name} trains a model to write its targets, and this model's {stack['type']} "
                         "encoder has no decoder to write with: fine-tune an encoder-decoder (T5) or a GLM, or use "
                         "another --task")
    objective = kind.objective_for(key, stack["type"], stack_class) if kind.keeps_decoder else None
    grew = objective is None and recipe.prepare(tokenizer)
    if grew and stack.get("vocab_size", tokenizer.vocab_size) < tokenizer.vocab_size:
        stack["vocab_size"] = tokenizer.vocab_size
    if options.aux_lm_weight is not None and options.aux_lm_weight < 0:
        raise LmkitError(f"--aux-lm-weight must not be negative, got {options.aux_lm_weight}")
    # The head sizes itself to the stack's d_model (its for_model); the recipe names how it reads features.
    head = {"type": kind.head, "weight": 1.0, "recipe": recipe.name, "dropout": options.dropout,
            **kind.head_options(train)}
    if recipe_options is not None:  # as the recipe's prepare() resolved them against the tokenizer (token ids)
        from ..options import options_to_dict

        head["recipe_options"] = options_to_dict(recipe.options)
    spec[key] = stack
    if options.unlabeled is not None and not getattr(recipe, "reads_unlabeled", False):
        raise LmkitError(f"--unlabeled is read by recipes that learn from unlabelled text (cvt); the {recipe.name} "
                         "recipe does not: leave it out, or give --recipe cvt")
    # A recipe may train objectives of its own beside the head (CVT's auxiliary modules).
    beside = recipe.objectives_beside(head, options) if hasattr(recipe, "objectives_beside") else []
    smoothing = head_label_smoothing(recipe, kind, options)
    if smoothing:
        head["label_smoothing"] = smoothing
    spec["objectives"] = [head, *recipe.auxiliary_objectives(options.aux_lm_weight), *beside]
    if kind.keeps_decoder:  # the model's own loss, no head on its features
        spec["objectives"] = [{"type": objective, "weight": 1.0, **kind.head_options(train)}]
    if options.overrides:
        from ..spec import apply_overrides

        if any(a.partition("=")[0].strip().split(".")[0] == "tokenizer" for a in options.overrides):
            raise LmkitError("--set tokenizer: the fine-tuned model reads with the pretrained model's tokenizer; "
                             "leave it out")
        apply_overrides(spec, list(options.overrides))
    resolved = resolve(spec, host)
    model = build_model(resolved, seed)
    transfer_weights(model, find_weights(pretrained))
    model.provenance = provenance(config)  # the fine-tuned model names the base model the pretrained one named
    perturb(model, options.noisy_tune, seed)  # before the first save: a resumed run starts from the shaken weights
    save_model(out, model, host, tokenizer)
    return recipe, model.feature_stack.max_positions, model.feature_stack.d_model


def head_label_smoothing(recipe, kind, options: TaskOptions) -> float:
    """The label smoothing of the head's cross-entropy: --label-smoothing, else the recipe's (`label_smoothing`,
    CVT's 0.1; 0 for a recipe without one). Only heads that pick a class take it."""
    smooths = kind.head in ("token-head", "sequence-head") and options.kind != "regression" and not kind.keeps_decoder
    if options.label_smoothing is not None:
        if not 0.0 <= options.label_smoothing < 1.0:
            raise LmkitError(f"--label-smoothing must be in [0, 1), got {options.label_smoothing}")
        if options.label_smoothing and not smooths:
            raise LmkitError(f"--label-smoothing smooths a head that picks a class or tag; a {options.kind} task has "
                             "none: leave it out")
        return options.label_smoothing
    return getattr(recipe, "label_smoothing", 0.0) if smooths else 0.0


def transfer_weights(model, path: str) -> None:
    """The pretrained tensors into the new model; embeddings that grew keep their new rows' init."""
    import torch
    from safetensors.torch import load_file

    pretrained = load_file(path)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith("objectives."):
                continue  # the task head starts fresh; a pretraining head (MLM, NSP) is left behind
            # (an encoder-decoder's decoder is left behind too: the fine-tuned model has none)
            source = pretrained.get(name)
            if source is None:
                raise ArtifactError(f"{path} has no tensor '{name}' that the fine-tuned model needs")
            if source.shape == tensor.shape:
                tensor.copy_(source)
            elif source.dim() == tensor.dim() and all(s <= t for s, t in zip(source.shape, tensor.shape)):
                # The vocabulary grew by the markers: along the first axis of an embedding, along every axis
                # of a vocabulary-by-vocabulary table (a bigram model's); the new rows keep their init.
                tensor[tuple(slice(0, s) for s in source.shape)] = source
            else:
                raise ArtifactError(f"{path}: tensor '{name}' has shape {list(source.shape)}, the fine-tuned model "
                                    f"needs {list(tensor.shape)}")


# -- the data --------------------------------------------------------------------------------------


class TaskBatches:
    """Labelled examples for the trainer: shuffled each epoch, padded per batch; the dev set in order."""

    def __init__(self, train: list, dev: list, collate, *, pad_id: int, batch_size: int, seed: int):
        from ..data import SeededOrder

        self.examples, self.dev, self.collate = train, dev, collate
        self.pad_id, self.batch_size = pad_id, batch_size
        self.order = SeededOrder(len(train), seed)

    def train(self, first: int, count: int) -> dict[str, np.ndarray]:
        return self.collate([self.examples[i] for i in self.order.indices(first, count)], self.pad_id)

    def validation(self) -> list[dict[str, np.ndarray]]:
        return [self.collate(self.dev[i:i + self.batch_size], self.pad_id)
                for i in range(0, len(self.dev), self.batch_size)]

    def tokens(self, batch: dict[str, np.ndarray]) -> int:
        return int(batch["attention_mask"].sum())

    def describe(self) -> dict:
        return {"train_examples": len(self.examples), "val_examples": len(self.dev)}


def task_batches(kind, train, dev, options: TaskOptions):
    """The Trainer's `batches` factory: encodes the task with the fine-tuned model's tokenizer."""

    def make(context) -> TaskBatches:
        args, tokenizer = context.args, context.tokenizer
        encoded = {}
        for name, data in (("training", train), ("dev", dev)):
            if data is None:
                encoded[name] = []
                continue
            encoded[name], cut = kind.encode(data, tokenizer, args.seq_len, kind.reader(context.model, tokenizer))
            if cut and not options.truncate:
                raise DataError(f"{cut} examples of {data.path} are longer than --max-length {args.seq_len} tokens; "
                                "raise --max-length, or leave out --no-truncate to cut the longest text first")
            if cut:
                context.say(f"warning: {cut} of {len(data.examples)} {name} examples were cut to --max-length "
                            f"{args.seq_len} tokens")
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        token_inputs = context.model.feature_stack.token_inputs(tokenizer)  # lmkit.token_inputs; None for most
        collate = kind.collate if token_inputs is None else functools.partial(kind.collate, token_inputs=token_inputs)
        batches = TaskBatches(encoded["training"], encoded["dev"], collate, pad_id=pad,
                              batch_size=args.batch_size, seed=args.seed)
        if options.unlabeled is not None:  # the recipe mixes in batches of unlabelled text (checked in prepare)
            from .unlabeled import read_unlabeled

            recipe = context.model.objectives[kind.head].recipe
            return recipe.unlabeled_batches(batches, read_unlabeled(options.unlabeled), tokenizer, args)
        return batches

    return make


# -- training --------------------------------------------------------------------------------------


def _fine_tuner_class():
    import torch

    from ..training.trainer import Trainer

    class FineTuner(Trainer):
        """The shared trainer, reporting the task's metrics on the dev set and keeping the best step."""

        def __init__(self, *args, kind, dev, train, stage: StagedRun | None = None, **kwargs):
            self.kind, self.dev, self.best, self.metric, self.stage = kind, dev, None, None, stage
            self.train_data, self.baseline = train, None
            super().__init__(*args, **kwargs)
            best = os.path.join(self.model_dir, BEST, RESULTS)
            if kwargs.get("state") is not None and os.path.isfile(best):  # resumed: the step to beat
                self.best = read_json(best, "delete the best/ folder to let the resumed run choose again")
                self.metric = self.best.pop("metric")

        def evaluation_weights(self):
            """The weights evaluation reads: an objective may hold averaged ones (CVT's moving average)."""
            stack = contextlib.ExitStack()
            for objective in self.model.objectives.values():
                if hasattr(objective, "averaged_weights"):
                    stack.enter_context(objective.averaged_weights(self.model))
            return stack

        @torch.no_grad()
        def validation_metrics(self) -> dict[str, float]:
            with self.evaluation_weights():
                return self._validation_metrics()

        def _validation_metrics(self) -> dict[str, float]:
            self.model.eval()
            predicted = []
            for batch in self.eval_batches:
                with self._autocast():
                    predicted.append(self.kind.predict(self.model, self._to_device(batch)))
            self.model.train()
            results = self.kind.metrics(predicted, self.eval_batches, self.data.dev, self.dev)
            self.metric = next(iter(results))  # the first metric picks the best step
            if self.baseline is None:  # what one answer for every example scores: the figure to beat
                self.baseline = self.kind.baseline(self.eval_batches, self.data.dev, self.dev, self.train_data)
            return {**results, "baseline": self.baseline}

        def after_evaluation(self, record: dict) -> None:
            metric = self.metric
            if self.best is not None and record[metric] <= self.best[metric] or not self.procs.is_main:
                return
            from ..model import save_model

            self.best = dict(record)
            with staged_directory(os.path.join(self.model_dir, BEST), force=True) as stage, self.evaluation_weights():
                save_model(stage, self.model, get_host(), self.tokenizer)
                atomic_write_json(os.path.join(stage, RESULTS), {"metric": metric, **self.best})

        RESUME = "lmkit finetune --resume --out {}"

        def after_checkpoint(self) -> None:
            # The first checkpoint makes the run resumable: the stage becomes --out (replacing what
            # --force replaces). A failure before it leaves no --out; one after it, a run to --resume.
            if self.stage is not None and not self.stage.committed:
                self.model_dir = self.stage.commit()

    return FineTuner


def finetune(pretrained: str, out: str, train_path: str, dev_path: str | None, options: TaskOptions, *,
             epochs: float = 3.0, steps: int | None = None, batch_size: int = 32, max_length: int | None = None,
             lr: float | None = None, warmup_ratio: float | None = None, seed: int = 0, eval_every: int | None = None,
             device: str = "auto", force: bool = False, progress: bool = True, optimizer: dict | None = None) -> dict:
    """Fine-tune `pretrained` on a task file into `out`; returns the best dev record (or the last one).

    optimizer: {"optimizer", "schedule", "optimizer_options", "schedule_options"} of TrainingArguments, each
    left out or None for the default (AdamW, cosine)."""
    from ..training.arguments import TrainingArguments

    if os.path.abspath(pretrained) == os.path.abspath(out):
        raise LmkitError("--out must be a new directory: fine-tuning leaves the pretrained model as it is")
    if steps is None and not epochs > 0 or steps is not None and steps < 1:
        raise LmkitError(f"{'--steps' if steps is not None else '--epochs'} must be positive, got "
                         f"{steps if steps is not None else epochs}; give how long to fine-tune")
    check_noise_level(options.noisy_tune)
    if options.unlabeled is not None:  # read now: a bad file fails before anything is written
        from .unlabeled import read_unlabeled

        read_unlabeled(options.unlabeled)
    if options.pattern is not None or options.verbalizer is not None:
        from .cloze import cloze_task_options

        options = cloze_task_options(options)
    kind = task_kind(options.kind, options)
    train = kind.read(train_path)
    dev = kind.read(dev_path, labels=train.labels) if dev_path is not None else None
    if options.kind == "multiple-choice" and dev is not None and len(dev.examples[0].choices) != len(
            train.examples[0].choices):
        raise DataError(f"{dev_path} has {len(dev.examples[0].choices)} choices per example, {train_path} has "
                        f"{len(train.examples[0].choices)}; give both files the same number")
    # The run is written under a temporary name beside `out` until its first checkpoint (see
    # FineTuner.after_checkpoint): a failure before then, bad arguments included, leaves no `out`.
    inputs = tuple(path for path in (pretrained, train_path, dev_path) if path is not None)
    with staged_run(out, force=force, resumable=_has_checkpoint, inputs=inputs) as stage:
        from .recipes import default_learning_rate

        recipe, context, width = prepare(pretrained, stage.path, kind, train, options, seed=seed)
        chosen_lr, lr = lr, default_learning_rate(recipe, width) if lr is None else lr
        warmup_ratio = recipe.default_warmup_ratio if warmup_ratio is None else warmup_ratio
        max_length = max_length or context or UNLIMITED_MAX_LENGTH
        if context is not None and max_length > context:
            raise LmkitError(f"--max-length {max_length} is beyond the model's {context} positions; give at most "
                             f"{context}")
        if steps is None:
            steps = max(1, math.ceil(epochs * len(train.examples) / batch_size))
            if options.unlabeled is not None:  # an unlabelled batch after each labelled one: --epochs counts labelled
                steps *= 2
        per_epoch = max(1, math.ceil(len(train.examples) / batch_size)) * (2 if options.unlabeled is not None else 1)
        args = TrainingArguments.from_dict({
            "data": (train_path,), "val_data": (dev_path,) if dev_path else (), "steps": steps,
            "batch_size": batch_size, "seq_len": max_length, "lr": lr, "warmup": int(warmup_ratio * steps),
            "min_lr_ratio": 0.0, "weight_decay": 0.01, "eval_every": eval_every or per_epoch,
            "save_every": eval_every or per_epoch, "log_every": min(10, per_epoch), "seed": seed, "device": device,
            **recipe.training_arguments(steps, per_epoch),  # the recipe's settings, then the flags given
            **{key: value for key, value in (optimizer or {}).items() if value}})
        if chosen_lr is None and progress:  # once the arguments have been checked
            scaled = "" if lr == recipe.default_lr else f", scaled by {recipe.reference_width}/{width} to this model's width"
            # A recipe whose rate does not scale with the width (reference_width 1: CVT's) has no width to name.
            at = f" at width {recipe.reference_width}" if recipe.reference_width > 1 else ""
            print(f"lr {lr:.3g}: the {recipe.name} recipe's {recipe.default_lr:g}{at}{scaled} (--lr to choose)",
                  file=sys.stderr)
        atomic_write_json(os.path.join(stage.path, TASK), dataclasses.asdict(options))
        return _run(stage.path, args, kind, train, dev, options, state=None, progress=progress, stage=stage)


def parse_task_files(value: str, flag: str) -> dict[str, str]:
    """`NAME=FILE,NAME=FILE` (--multitask, and --dev beside it) as {name: file}, in order."""
    files: dict[str, str] = {}
    for entry in (part.strip() for part in value.split(",")):
        name, sep, path = entry.partition("=")
        name, path = name.strip(), path.strip()
        if not entry:
            continue
        if not sep or not name or not path:
            raise LmkitError(f"{flag}: {entry!r} is not NAME=FILE; give e.g. {flag} ner=ner.conll,pos=pos.conll")
        if name in files:
            raise LmkitError(f"{flag}: task {name!r} is named twice; name each task once")
        if not os.path.isfile(path):
            raise DataError(f"{flag}: task file {path} (task {name}) does not exist")
        files[name] = path
    if not files:
        raise LmkitError(f"{flag} names no task; give e.g. {flag} ner=ner.conll,pos=pos.conll")
    return files


def finetune_multitask(pretrained: str, out: str, tasks: dict[str, str], dev: dict[str, str], options: TaskOptions,
                       **training) -> dict:
    """Several tasks at once on one model (--multitask), by a task recipe that can (`finetune_multitask`: CVT's);
    `training` as finetune() takes it. Returns the best record, with each task's dev metrics under "tasks"."""
    from .recipes import task_stack_key

    host = get_host()
    name = options.recipe
    if name is None:
        spec = read_config(pretrained)["spec"]
        key = task_stack_key(spec)
        name = host.component(key, spec[key]["type"]).load().task_recipe
    recipe = host.instantiate("task-recipe", name)
    if not hasattr(recipe, "finetune_multitask"):
        raise LmkitError(f"--multitask: the {recipe.name} recipe trains one task at a time; give a recipe that trains "
                         "several (--recipe cvt), or fine-tune each task on its own with --train")
    return recipe.finetune_multitask(pretrained, out, tasks, dev, options, **training)


def _has_checkpoint(directory: str) -> bool:
    from ..training.checkpoint import STATE

    return os.path.isfile(os.path.join(directory, STATE))


def resume(out: str, *, steps: int | None = None, device: str | None = None, progress: bool = True) -> dict:
    """Go on with the fine-tuning run saved in `out` from its last checkpoint (every evaluation saves one)."""
    from ..training.arguments import TrainingArguments
    from ..training.checkpoint import read_trainer_state

    if not os.path.isdir(out):
        raise LmkitError(f"{out} does not exist; give the --out of the fine-tuning run to go on with")
    if not os.path.isfile(os.path.join(out, TASK)):
        raise LmkitError(f"{out} is not a fine-tuning run (no {TASK}); resume a plain training run with lmkit train "
                         "--resume")
    options = TaskOptions(**{key: tuple(value) if isinstance(value, list) else value
                             for key, value in read_json(os.path.join(out, TASK), "restore it from the run's start, "
                                                         "or fine-tune anew").items()})
    state = read_trainer_state(out)
    changes = {name: value for name, value in (("steps", steps), ("device", device)) if value is not None}
    args = TrainingArguments.from_dict(state["arguments"]).resumed_with(changes, state["step"])
    if options.multitask is not None:  # the recipe that trained the tasks goes on with them
        recipe = get_host().instantiate("task-recipe", options.recipe or "cvt")
        return recipe.resume_multitask(out, options, args, state, progress=progress)
    kind = task_kind(options.kind, options)
    train = kind.read(args.data[0])
    dev = kind.read(args.val_data[0], labels=train.labels) if args.val_data else None
    return _run(out, args, kind, train, dev, options, state=state, progress=progress)


def _run(out: str, args, kind, train, dev, options: TaskOptions, *, state: dict | None, progress: bool,
         stage: StagedRun | None = None) -> dict:
    from ..training.distributed import processes

    with processes() as procs:
        tuner = _fine_tuner_class()(out, args, procs, state=state, progress=progress, kind=kind, dev=dev,
                                    train=train, stage=stage, batches=task_batches(kind, train, dev, options))
        last = tuner.train()
    record = {**(tuner.best or last), "train_examples": len(train.examples),
              "dev_examples": len(dev.examples) if dev else 0, "labels": list(train.labels)}
    warning = baseline_warning(record, tuner.metric)
    if warning and progress and procs.is_main:
        print(warning, file=sys.stderr)
    return record


def baseline_warning(record: dict, metric: str | None) -> str | None:
    """A one-line warning when the best dev score does not beat the baseline of one answer for every example."""
    baseline = record.get("baseline")
    if not baseline or metric is None or metric not in baseline or record[metric] > baseline[metric] + 1e-9:
        return None
    return (f"warning: the best dev {metric} {record[metric]:.4f} (step {record['step']}) does not beat "
            f"{baseline[metric]:.4f}, what predicting {baseline['predicts']} scores: the model has learnt nothing "
            "the dev set rewards; train longer (--epochs), try another --lr, or check the labels")


def read_results(model_dir: str) -> dict:
    with open(os.path.join(model_dir, BEST, RESULTS), encoding="utf-8") as handle:
        return json.load(handle)
