"""Multi-task CVT (Clark et al. 2018 §3.3; cvt_text model/multitask_model.py, training/trainer.py).

Several tagging tasks share the encoder; each has its own primary module and its own auxiliary
modules (the `cvt-multitask` objective holds them all). Training alternates:

    labelled batch     one task, drawn with probability proportional to sqrt(its training sentences):
                       that task's primary module learns its gold tags (cross-entropy, label smoothing)
    unlabelled batch   every task's primary is a teacher (eval mode, no gradient) and every task's
                       auxiliary modules learn it: one loss, the sum over tasks of each task's L_CVT

Evaluation reads the moving average of the encoder and the primaries. A multi-task run's best step
(by the mean over tasks of each one's first dev metric) is written as one ordinary single-task
model per task, OUT/best/TASK: the shared encoder with that task's primary as its hidden layer and
token head, and its auxiliary modules as the `cvt` objective; `lmkit predict`, `lmkit export` and
single-task fine-tuning read it like any CVT tagger.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmkit.errors import DataError, LmkitError
from lmkit.objectives.base import ObjectiveModule

from .config import CVTMultitaskOptions
from .objective import MovingAverage, PredictionModule, auxiliary_logits, auxiliary_loss, dropout_rate

NAME = "cvt-multitask"
RESULTS = "finetune.json"
TASK = "task.json"  # the run's TaskOptions (lmkit.tasks.finetune), which --resume reads back


class CVTMultitaskObjective(MovingAverage, ObjectiveModule):
    """Each task's primary module and auxiliary modules over one CVT encoder, and their losses."""

    reads_unlabeled = True

    def __init__(self, options: CVTMultitaskOptions, d_first: int, d_views: int, d_projection: int, dropout: float):
        super().__init__(options)
        inputs = {"forward": d_first, "backward": d_first, "future": d_first, "past": d_first, "full": d_views}
        width = options.d_projection or d_projection
        self.ema_names: list[str] = []
        # The primary module of a task: the paper's module over [fwd_1; bwd_1; h_2] (the encoder's own `primary`
        # layer goes unused here: each task has its own, written back into it by single_task_model).
        self.primaries = nn.ModuleDict({task: PredictionModule(d_views, width, len(labels), dropout)
                                        for task, labels in zip(options.tasks, options.labels)})
        self.auxiliaries = nn.ModuleDict({
            task: nn.ModuleDict({f"{view}_module": PredictionModule(inputs[view], width, len(labels), dropout)
                                 for view in options.views})
            for task, labels in zip(options.tasks, options.labels)})

    @classmethod
    def for_model(cls, options, model) -> CVTMultitaskObjective:
        encoder = model.encoder
        config = encoder.config
        objective = cls(options, config.d_first, encoder.d_views, config.d_projection, config.dropout)
        if options.ema_decay:
            shapes = [(f"encoder.{name}", p.shape) for name, p in encoder.named_parameters()
                      if not name.startswith("primary.")]
            shapes += [(f"objectives.{NAME}.primaries.{name}", p.shape)
                       for name, p in objective.primaries.named_parameters()]
            objective.register_average(shapes)
        return objective

    def task_logits(self, model, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, L_task): the task's primary module, in the model's own mode."""
        return self.primaries[task](model.encoder.views(input_ids, attention_mask)["full"])

    def labeled_loss(self, model, batch: dict) -> torch.Tensor:
        task = self.options.tasks[int(batch["task"][0])]
        logits = self.task_logits(model, task, batch["input_ids"], batch["attention_mask"].bool())
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100,
                               label_smoothing=self.options.label_smoothing)

    @torch.no_grad()
    def teachers(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """{task: p_θ(y | x) (B, T, L_task)}: every primary, in eval mode (no dropout), without gradient."""
        training = model.training
        model.eval()
        try:
            full = model.encoder.views(input_ids, attention_mask)["full"]
            return {task: F.softmax(module(full).float(), dim=-1) for task, module in self.primaries.items()}
        finally:
            model.train(training)

    def unlabeled_loss(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sum over tasks of the soft cross-entropy of each auxiliary module to its task's teacher."""
        mask = attention_mask.bool()
        teachers = self.teachers(model, input_ids, mask)
        with dropout_rate([model.encoder, self.auxiliaries], self.options.unlabeled_dropout):
            views = model.encoder.views(input_ids, mask)
            students = {task: auxiliary_logits(modules, views) for task, modules in self.auxiliaries.items()}
        return sum(auxiliary_loss(students[task], teachers[task], mask) for task in self.options.tasks)

    def forward(self, model, batch: dict) -> torch.Tensor:
        if self.ema_names and self.training and torch.is_grad_enabled():
            self.update_average(model)
        if "unlabeled" in batch:
            return self.unlabeled_loss(model, batch["input_ids"], batch["attention_mask"])
        return self.labeled_loss(model, batch)


# -- which task each labelled batch trains ---------------------------------------------------------


def task_probabilities(sizes: list[int]) -> np.ndarray:
    """P(task k) = sqrt(n_k) / sum_j sqrt(n_j) (cvt_text training/trainer.py: task weights sqrt(size))."""
    weights = np.sqrt(np.asarray(sizes, dtype=np.float64))
    return weights / weights.sum()


class TaskDraws:
    """The task of the j-th labelled batch, drawn from task_probabilities with a seeded generator, and how many
    batches that task had before it. The draws come in fixed chunks of one stream, so the j-th is the same
    however far a run (or its resumed continuation) asks."""

    CHUNK = 4096

    def __init__(self, sizes: list[int], seed: int):
        self.probabilities = task_probabilities(sizes)
        self.rng = np.random.default_rng([seed, 17])
        self.tasks = np.zeros(0, dtype=np.int64)
        self.before = np.zeros(0, dtype=np.int64)  # draws of the same task before the j-th

    def __call__(self, j: int) -> tuple[int, int]:
        while j >= len(self.tasks):
            chunk = self.rng.choice(len(self.probabilities), size=self.CHUNK, p=self.probabilities)
            self.tasks = np.concatenate([self.tasks, chunk])
            self.before = np.empty(len(self.tasks), dtype=np.int64)
            for k in range(len(self.probabilities)):
                at = np.flatnonzero(self.tasks == k)
                self.before[at] = np.arange(len(at))
        return int(self.tasks[j]), int(self.before[j])


class MultitaskBatches:
    """Labelled batches of one drawn task (with a `task` index) and, with unlabelled text, an unlabelled batch
    after each; the dev sets of all tasks, in order, each batch with its task."""

    def __init__(self, encoded: dict, dev: dict, sentences, tokenizer, args):
        from lmkit.data import SeededOrder
        from lmkit.tasks.tokens import collate_sentences

        self.names = list(encoded)
        self.encoded, self.dev_encoded, self.batch_size = encoded, dev, args.batch_size
        self.collate = collate_sentences
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self.orders = [SeededOrder(len(encoded[name]), args.seed + 2 + k) for k, name in enumerate(self.names)]
        self.draws = TaskDraws([len(encoded[name]) for name in self.names], args.seed)
        self.unlabeled = None
        if sentences is not None:
            from .recipe import AlternatingBatches

            self.unlabeled = AlternatingBatches(_Labelled(self), sentences, tokenizer, args)

    def train(self, first: int, count: int) -> dict[str, np.ndarray]:
        if self.unlabeled is not None:
            return self.unlabeled.train(first, count)  # its even steps come back to labelled_batch()
        return self.labelled_batch(first, count)

    def labelled_batch(self, first: int, count: int) -> dict[str, np.ndarray]:
        j, offset = divmod(first, self.batch_size)
        k, before = self.draws(j)
        rows = [self.encoded[self.names[k]][i] for i in self.orders[k].indices(before * self.batch_size + offset,
                                                                                 count)]
        return {**self.collate(rows, self.pad_id), "task": np.full(len(rows), k, dtype=np.int64)}

    def validation(self) -> list[dict[str, np.ndarray]]:
        batches = []
        for k, name in enumerate(self.names):
            rows = self.dev_encoded.get(name) or []
            for i in range(0, len(rows), self.batch_size):
                chunk = rows[i:i + self.batch_size]
                batches.append({**self.collate(chunk, self.pad_id), "task": np.full(len(chunk), k, dtype=np.int64)})
        return batches

    def tokens(self, batch) -> int:
        return int(batch["attention_mask"].sum())

    def describe(self) -> dict:
        described = {f"train_examples_{name}": len(self.encoded[name]) for name in self.names}
        if self.unlabeled is not None:
            described["unlabeled_sentences"] = len(self.unlabeled.unlabeled)
        return described


class _Labelled:
    """What AlternatingBatches asks of its labelled side, for MultitaskBatches' labelled batches."""

    def __init__(self, batches: MultitaskBatches):
        self.batches = batches
        self.pad_id = batches.pad_id

    def train(self, first: int, count: int):
        return self.batches.labelled_batch(first, count)


# -- a task's own model ----------------------------------------------------------------------------


def single_task_model(model, task: str, head_dropout: float):
    """The single-task CVT tagger of `task` in a multi-task model: the shared encoder, the task's primary as the
    encoder's hidden layer and the token head's linear layer, its auxiliary modules as the `cvt` objective."""
    from lmkit.model import build_model
    from lmkit.registry import get_host
    from lmkit.spec import resolve

    objective = model.objectives[NAME]
    options = objective.options
    k = options.tasks.index(task)
    labels = list(options.labels[k])
    spec = {"encoder": model.spec.to_dict()["encoder"],
            "objectives": [{"type": "token-head", "weight": 1.0, "recipe": "cvt", "num_labels": len(labels),
                            "labels": labels, "dropout": head_dropout,
                            "tag_scheme": options.tag_schemes[k] if options.tag_schemes else "",
                            "label_smoothing": options.label_smoothing},
                           {"type": "cvt", "weight": 1.0, "num_labels": len(labels), "views": list(options.views),
                            "d_projection": options.d_projection, "ema_decay": options.ema_decay,
                            "unlabeled_dropout": options.unlabeled_dropout}]}
    single = build_model(resolve(spec, get_host()), seed=None)
    source = model.state_dict()
    state = single.state_dict()
    primary = f"objectives.{NAME}.primaries.{task}."
    for name in state:
        if name.startswith("encoder.primary."):
            value = source[primary + "projection." + name.removeprefix("encoder.primary.")]
        elif name.startswith("encoder."):
            value = source[name]
        elif name.startswith("objectives.token-head.score."):
            value = source[primary + "score." + name.removeprefix("objectives.token-head.score.")]
        elif name.startswith("objectives.cvt.modules_by_view."):
            value = source[f"objectives.{NAME}.auxiliaries.{task}." + name.removeprefix("objectives.cvt.modules_by_view.")]
        else:  # the single model's own moving average starts afresh (ema_updates 0: evaluation reads the weights)
            continue
        state[name] = value.detach().clone()
    single.load_state_dict(state)
    single.provenance = model.provenance
    return single


# -- the run ---------------------------------------------------------------------------------------


def _tuner_class():
    from lmkit.artifacts import atomic_write_json, staged_directory
    from lmkit.model import save_model
    from lmkit.registry import get_host
    from lmkit.training.trainer import Trainer

    class MultitaskTuner(Trainer):
        """The shared trainer; evaluation scores every task on its dev set, the best step is kept per task."""

        def __init__(self, *args, kinds: dict, dev: dict, head_dropout: float, stage=None, **kwargs):
            self.kinds, self.dev, self.head_dropout, self.stage, self.best = kinds, dev, head_dropout, stage, None
            super().__init__(*args, **kwargs)
            best = os.path.join(self.model_dir, "best", RESULTS)
            if kwargs.get("state") is not None and os.path.isfile(best):  # resumed: the score to beat
                from lmkit.artifacts import read_json

                self.best = read_json(best, "delete the best/ folder to let the resumed run choose again")

        RESUME = "lmkit finetune --resume --out {}"

        @torch.no_grad()
        def validation_metrics(self) -> dict[str, float]:
            objective = self.model.objectives[NAME]
            names = list(self.kinds)
            predicted = {name: [] for name in names}
            batches = {name: [] for name in names}
            self.model.eval()
            with objective.averaged_weights(self.model):
                for batch in self.eval_batches:
                    name = names[int(batch["task"][0])]
                    tensors = self._to_device(batch)
                    with self._autocast():
                        logits = objective.task_logits(self.model, name, tensors["input_ids"],
                                                       tensors["attention_mask"].bool())
                    predicted[name].append(logits.float().argmax(-1).cpu().numpy())
                    batches[name].append(batch)
            self.model.train()
            record, firsts = {}, []
            for name in names:
                if not batches[name]:
                    continue
                results = self.kinds[name].metrics(predicted[name], batches[name], None, self.dev[name])
                firsts.append(next(iter(results.values())))
                record.update({f"{name}/{metric}": value for metric, value in results.items()})
            record["score"] = sum(firsts) / len(firsts)  # the mean of each task's first metric picks the best step
            return record

        def after_evaluation(self, record: dict) -> None:
            if self.best is not None and record["score"] <= self.best["score"] or not self.procs.is_main:
                return
            self.best = dict(record)
            objective = self.model.objectives[NAME]
            with staged_directory(os.path.join(self.model_dir, "best"), force=True) as stage:
                with objective.averaged_weights(self.model):
                    for name in self.kinds:
                        single = single_task_model(self.model, name, self.head_dropout)
                        save_model(os.path.join(stage, name), single, get_host(), self.tokenizer)
                        task_record = {"metric": next((k.split("/", 1)[1] for k in record
                                                       if k.startswith(name + "/")), "score"), "step": record["step"],
                                       **{k.split("/", 1)[1]: v for k, v in record.items() if k.startswith(name + "/")}}
                        atomic_write_json(os.path.join(stage, name, RESULTS), task_record)
                atomic_write_json(os.path.join(stage, RESULTS), {"metric": "score", **self.best})

        def after_checkpoint(self) -> None:
            if self.stage is not None and not self.stage.committed:
                self.model_dir = self.stage.commit()

    return MultitaskTuner


def check_tasks(tasks: dict[str, str], dev: dict[str, str]) -> None:
    """One-line errors for a --multitask spec: two tasks, names that can be folder names, no file twice."""
    if len(tasks) < 2:
        raise LmkitError("--multitask trains several tasks at once; name at least two, e.g. "
                         "--multitask ner=ner.conll,pos=pos.conll")
    for name in tasks:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise LmkitError(f"--multitask: task name {name!r} must be letters, digits, - or _ (it names a folder)")
    seen: dict[str, str] = {}
    for flag, files in (("--multitask", tasks), ("--dev", dev)):
        for name, path in files.items():
            real = os.path.realpath(path)
            if real in seen:
                raise LmkitError(f"{flag}: {path} is named twice (also for {seen[real]}); give each task its own files")
            seen[real] = f"{flag} {name}"
    unknown = sorted(set(dev) - set(tasks))
    if unknown:
        raise LmkitError(f"--dev names tasks that --multitask does not train: {', '.join(unknown)}; "
                         f"known tasks: {', '.join(tasks)}")


def finetune_multitask(pretrained: str, out: str, tasks: dict[str, str], dev_paths: dict[str, str], options, *,
                       epochs: float = 3.0, steps: int | None = None, batch_size: int = 32,
                       max_length: int | None = None, lr: float | None = None, warmup_ratio: float | None = None,
                       seed: int = 0, eval_every: int | None = None, device: str = "auto", force: bool = False,
                       progress: bool = True, optimizer: dict | None = None) -> dict:
    """Train every task of `tasks` ({name: CoNLL file}) on one encoder (see the module docstring); returns the best
    record: {"score", "tasks": {name: its dev metrics}} (dev files: `dev_paths`, {name: CoNLL file})."""
    from lmkit.artifacts import atomic_write_json, find_weights, read_config, staged_run
    from lmkit.model import build_model, provenance, save_model
    from lmkit.registry import get_host
    from lmkit.spec import apply_overrides, resolve
    from lmkit.tasks.finetune import UNLIMITED_MAX_LENGTH, transfer_weights
    from lmkit.tasks.recipes import default_learning_rate
    from lmkit.tokenizers import load_tokenizer
    from lmkit.training.arguments import TrainingArguments
    from lmkit.training.checkpoint import STATE

    from .recipe import CVTRecipe

    if options.kind != "token-classification":
        raise LmkitError(f"--multitask trains tagging tasks (token-classification), not {options.kind}; "
                         "leave --task out or give token-classification")
    if os.path.abspath(pretrained) == os.path.abspath(out):
        raise LmkitError("--out must be a new directory: fine-tuning leaves the pretrained model as it is")
    if options.noisy_tune:
        raise LmkitError("--noisy-tune is not available with --multitask; leave it out")
    check_tasks(tasks, dev_paths)
    sentences, kinds, train, dev = read_tasks(tasks, dev_paths, options)
    config = read_config(pretrained)
    spec = {key: value for key, value in config["spec"].items() if key != "tokenizer"}
    if spec.get("encoder", {}).get("type") != "cvt-tagger":
        raise LmkitError(f"--multitask trains CVT taggers: {pretrained} has no cvt-tagger encoder; compose one "
                         "with lmkit compose cvt-tagger")
    spec.pop("decoder", None)
    spec.pop("decoding", None)
    recipe = CVTRecipe()
    smoothing = recipe.label_smoothing if options.label_smoothing is None else options.label_smoothing
    spec["objectives"] = [{"type": NAME, "weight": 1.0, "tasks": list(tasks),
                           "labels": [list(train[name].labels) for name in tasks],
                           "tag_schemes": [kinds[name].scheme for name in tasks], "label_smoothing": smoothing}]
    if any(a.partition("=")[0].strip().split(".")[0] == "tokenizer" for a in options.overrides):
        raise LmkitError("--set tokenizer: the fine-tuned model reads with the pretrained model's tokenizer; leave it out")
    apply_overrides(spec, list(options.overrides))
    tokenizer = load_tokenizer(pretrained)
    host = get_host()
    # a failure after the first checkpoint was written leaves a run to --resume, as lmkit finetune does
    inputs = (pretrained, *tasks.values(), *dev_paths.values())
    with staged_run(out, force=force, resumable=lambda path: os.path.isfile(os.path.join(path, STATE)),
                    inputs=inputs) as stage:
        model = build_model(resolve(spec, host), seed)
        transfer_weights(model, find_weights(pretrained))
        model.provenance = provenance(config)
        save_model(stage.path, model, host, tokenizer)
        width = model.feature_stack.d_model
        del model
        chosen_lr, lr = lr, default_learning_rate(recipe, width) if lr is None else lr
        warmup_ratio = recipe.default_warmup_ratio if warmup_ratio is None else warmup_ratio
        max_length = max_length or UNLIMITED_MAX_LENGTH
        labelled = sum(len(data.examples) for data in train.values())
        per_epoch = max(1, math.ceil(labelled / batch_size)) * (2 if sentences is not None else 1)
        if steps is None:  # --epochs counts passes over all tasks' sentences together
            steps = max(1, math.ceil(epochs * per_epoch))
        args = TrainingArguments.from_dict({
            "data": tuple(tasks.values()), "val_data": tuple(dev_paths.values()), "steps": steps,
            "batch_size": batch_size, "seq_len": max_length, "lr": lr, "warmup": int(warmup_ratio * steps),
            "min_lr_ratio": 0.0, "weight_decay": 0.01, "eval_every": eval_every or per_epoch,
            "save_every": eval_every or per_epoch, "log_every": min(10, per_epoch), "seed": seed, "device": device,
            **{key: value for key, value in (optimizer or {}).items() if value}})
        if chosen_lr is None and progress:
            print(f"lr {lr:.3g}: the cvt recipe's {recipe.default_lr:g} (--lr to choose)", file=sys.stderr)
        options = dataclasses.replace(options, multitask=",".join(f"{k}={v}" for k, v in tasks.items()),
                                      multitask_dev=",".join(f"{k}={v}" for k, v in dev_paths.items()) or None)
        atomic_write_json(os.path.join(stage.path, TASK), dataclasses.asdict(options))
        return _run(stage.path, args, tasks, dev_paths, options, (sentences, kinds, train, dev), state=None,
                    progress=progress, stage=stage)


def read_tasks(tasks: dict[str, str], dev_paths: dict[str, str], options):
    """(unlabelled sentences or None, {task: its TokenKind}, {task: training data}, {task: dev data})."""
    from lmkit.tasks.kinds import task_kind
    from lmkit.tasks.unlabeled import read_unlabeled

    sentences = read_unlabeled(options.unlabeled) if options.unlabeled is not None else None
    kinds, train, dev = {}, {}, {}
    for name, path in tasks.items():
        kinds[name] = task_kind("token-classification", options)
        train[name] = kinds[name].read(path)
        if name in dev_paths:
            dev[name] = kinds[name].read(dev_paths[name], labels=train[name].labels)
    return sentences, kinds, train, dev


def resume_multitask(out: str, options, args, state: dict, *, progress: bool = True) -> dict:
    """Go on with the multi-task run in `out` (its task.json, trainer state and arguments already read)."""
    from lmkit.tasks.finetune import parse_task_files

    tasks = parse_task_files(options.multitask, "--multitask")
    dev_paths = parse_task_files(options.multitask_dev, "--dev") if options.multitask_dev else {}
    return _run(out, args, tasks, dev_paths, options, read_tasks(tasks, dev_paths, options), state=state,
                progress=progress)


def _run(out: str, args, tasks: dict, dev_paths: dict, options, data, *, state, progress: bool, stage=None) -> dict:
    from lmkit.tasks.tokens import encode_sentences
    from lmkit.training.distributed import processes

    sentences, kinds, train, dev = data

    def batches(context):
        encoded = {}
        for name in tasks:
            for split, tagged in (("train", train.get(name)), ("dev", dev.get(name))):
                if tagged is None:
                    continue
                rows, cut = encode_sentences(tagged, context.tokenizer, args.seq_len, encoder=True)
                if cut and not options.truncate:
                    raise DataError(f"{cut} sentences of {tagged.path} are longer than --max-length {args.seq_len} "
                                    "tokens; raise --max-length")
                encoded[name, split] = rows
        return MultitaskBatches({name: encoded[name, "train"] for name in tasks},
                                {name: encoded[name, "dev"] for name in dev}, sentences, context.tokenizer, args)

    with processes() as procs:
        tuner = _tuner_class()(out, args, procs, state=state, progress=progress, kinds=kinds, dev=dev,
                               head_dropout=options.dropout, stage=stage, batches=batches)
        last = tuner.train()
    record = dict(tuner.best or last)
    return {"step": record.get("step"), "score": record.get("score"),
            "tasks": {name: {key.split("/", 1)[1]: value for key, value in record.items()
                             if key.startswith(name + "/")} for name in tasks},
            "train_examples": {name: len(train[name].examples) for name in tasks}}
