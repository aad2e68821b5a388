"""The training loop: AdamW, warmup and cosine decay, gradient accumulation and clipping, bf16
autocast, periodic evaluation, metrics.jsonl, atomic checkpoints, exact resume, DDP and FSDP2 (--shard).

Each optimizer step reads one global batch of batch_size * grad_accum windows, the same windows
however many processes share it: under torchrun each process takes a contiguous slice of it, in
forward passes of at most batch_size windows. The loop never waits on the device except to log,
evaluate or save, every `log_every`, `eval_every` and `save_every` steps.

Randomness in the model (dropout) is drawn from a seed per forward pass, made of --seed and the index
of the pass's first window: a pass over the same windows draws the same masks on whichever process
reads it, so a run's numbers do not depend on how many processes share it (when --batch-size divides
each process's share), and a run resumed on another number of processes goes on as it would have.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import __version__
from ..artifacts import WEIGHTS, atomic_write, read_config
from ..data import tokenizer_fingerprint
from ..errors import LmkitError
from ..model import ComposedModel, load_model, load_target_tokenizer, save_weights
from ..nn.onednn import training_layout
from . import compiling, sharding
from .arguments import TrainingArguments, TrainingError
from .batches import Batch, DataContext, batches_for
from .checkpoint import (
    OPTIMIZER,
    OPTIMIZER_DCP,
    PARTIAL,
    STATE,
    STATE_FORMAT,
    begin_checkpoint,
    commit_checkpoint,
    fingerprint,
    finish_interrupted_save,
    first_difference,
    load_carried,
    load_optimizer_state,
    read_trainer_state,
    rng_state,
    save_carried,
    save_checkpoint,
    set_rng_state,
)
from .distributed import Processes, processes, resolve_device

METRICS = "metrics.jsonl"


class _Loss(nn.Module):
    """The model's training loss as forward(): DDP synchronises gradients only through forward()."""

    def __init__(self, model: ComposedModel):
        super().__init__()
        self.model = model
        self.parts: dict[str, torch.Tensor] = {}  # each objective's loss of the last batch, detached

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        total, self.parts = self.model.loss(batch)
        return total


def build_optimizer(model: nn.Module, args: TrainingArguments, device: torch.device) -> torch.optim.Optimizer:
    """The torch optimizer of the registered optimizer that args.optimizer names."""
    return args.build_optimizer().build(model, args, device)


class InterruptedRun(KeyboardInterrupt):
    """Ctrl-C during a run that has a checkpoint to go on from; `hint` says how (the CLI prints it)."""

    def __init__(self, hint: str):
        super().__init__(hint)
        self.hint = hint


class Trainer:
    """One training run of the model in a model directory: a fresh one, or one resumed from its checkpoint."""

    def __init__(self, model_dir: str, args: TrainingArguments, procs: Processes, *,
                 state: dict | None = None, progress: bool = True, batches=None):
        """`batches(DataContext) -> Batches` makes the data; by default the model's objectives say what it is."""
        self.model_dir, self.args, self.procs = model_dir, args, procs
        self.progress = progress and procs.is_main
        self.device = resolve_device(args.device, procs.local_rank)
        if args.compile:  # before the data is read: a missing compiler is an error now, not at the first step
            compiling.check_compilable(self.device)
        config = read_config(model_dir)
        if state is not None:
            _check_unchanged_spec(state, config["spec"], model_dir)
        self.spec = config["spec"]
        self.model, tokenizer, _ = load_model(model_dir, device=str(self.device))
        if self.device.type == "cpu":
            training_layout(self.model)  # its products in oneDNN, faster than MKL's (lmkit.nn.onednn)
        self.tokenizer = tokenizer
        if tokenizer is None:
            raise TrainingError(f"{model_dir} has no tokenizer.json to tokenize the data with; compose the model "
                                "with --set tokenizer=DIR")
        self.tokenizer_hash = tokenizer_fingerprint(tokenizer)
        target_tokenizer = load_target_tokenizer(model_dir)
        if target_tokenizer is not None:  # an encoder-decoder's own target side: a change to it counts too
            self.tokenizer_hash += ":" + tokenizer_fingerprint(target_tokenizer)
        if state is not None and state.get("tokenizer_sha256") != self.tokenizer_hash:
            which = "tokenizer.json" + (" or target_tokenizer/" if target_tokenizer is not None else "")
            raise TrainingError(f"{model_dir}/{which} changed since step {state['step']} was saved; "
                                "restore it to resume, or train a new model directory")

        context = DataContext(self.model, tokenizer, args, [o["type"] for o in self.spec.get("objectives", [])],
                              progress=self.progress, say=self._say, target_tokenizer=target_tokenizer)
        with procs.main_first():  # rank 0 tokenizes; the others then read its cache
            self.data = (batches or batches_for)(context)
        self.eval_batches = self.data.validation()
        self.local_batch = self._share_of_batch()
        # (offset in this process's slice, windows) of each forward pass of a step
        self.micro_batches = [(start, min(args.batch_size, self.local_batch - start))
                              for start in range(0, self.local_batch, args.batch_size)]

        self.objective_loss = _Loss(self.model)
        self.batch_loss: nn.Module = self.objective_loss
        if args.shard:
            if not procs.distributed:
                raise TrainingError("--shard splits the model over the processes of torchrun; run it as torchrun "
                                    "--nproc-per-node N -m lmkit train ... with N of 2 or more, or drop --shard")
            sharding.shard(self.objective_loss, self.model)  # before the optimizer: it holds the shards
        self.parameter_names = {p: name for name, p in self.model.named_parameters()}
        self.optimizer = build_optimizer(self.model, args, self.device)
        self.schedule = args.build_schedule()
        self.step, self.samples_seen, self.elapsed_before = 0, 0, 0.0
        if state is None:
            torch.manual_seed(args.seed + procs.rank)
        else:
            self._restore(state)
        if procs.distributed and not args.shard:
            # gradient_as_bucket_view: gradients live in DDP's all-reduce buffers, not copies
            self.batch_loss = DistributedDataParallel(
                self.batch_loss, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True)
        if args.compile:  # around DDP, so its hooks see the compiled graph's gradients as they come
            self.batch_loss = torch.compile(self.batch_loss)
        self.loss_sum = torch.zeros((), device=self.device)  # since the last log, summed without syncing
        # Each objective's loss, unweighted, summed the same way: reported beside the total when there are several.
        self.objective_types = [o.type for o in self.model.spec.objectives]
        self.parts_sum = torch.zeros(len(self.objective_types), device=self.device)
        self.language_objectives = [o.type for o in self.model.spec.objectives
                                    if self.model.objectives[o.type].models_language]
        self.tokens_seen = 0  # by this process since the last log
        # Training FLOPs per token: 6 per weight (forward 2, backward 4; Kaplan et al. 2020, §2.1), the
        # attention scores left out (a few percent at these context lengths).
        self.flops_per_token = 6 * sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.peak_flops = peak_flops(self.device, args.bf16)
        self.last_record: dict = {}

    # -- setting up ----------------------------------------------------------------------------------

    def _share_of_batch(self) -> int:
        world = self.procs.world_size
        if self.args.global_batch % world:
            raise TrainingError(f"the global batch (--batch-size x --grad-accum = {self.args.global_batch} windows) "
                                f"does not split evenly over {world} processes; make it a multiple of {world}")
        return self.args.global_batch // world

    def _restore(self, state: dict) -> None:
        self.step = state["step"]
        self.samples_seen = state["data"]["samples_seen"]
        self.elapsed_before = state["elapsed"]
        sharded_checkpoint = state.get("optimizer_format") == "dcp"
        name = OPTIMIZER_DCP if sharded_checkpoint else OPTIMIZER
        optimizer_path = os.path.join(self.model_dir, name)
        if not os.path.exists(optimizer_path):
            raise TrainingError(f"{self.model_dir} has {STATE} but no {name}; the checkpoint is incomplete "
                                f"and cannot be resumed exactly")
        if sharded_checkpoint:  # saved by any number of processes, read into as many as there are now
            sharding.load_optimizer_dcp(self.optimizer, self.parameter_names, optimizer_path)
        elif self.args.shard:
            sharding.load_full_optimizer_into_shards(self.optimizer, self.parameter_names, optimizer_path)
        else:
            load_optimizer_state(self.optimizer, self.parameter_names, optimizer_path)
        carried = state.get("carried") or []
        if self.procs.rank < len(carried) and carried[self.procs.rank]:  # resumed on more processes: from zeros
            tensors = load_carried(carried[self.procs.rank], self.device)
            for name, objective in self.model.objectives.items():
                objective.load_carried_state({key[len(name) + 1:]: value for key, value in tensors.items()
                                              if key.startswith(name + ".")})
        rng = state["rng"]
        if self.procs.rank < len(rng):
            set_rng_state(rng[self.procs.rank], self.device)
        else:  # resumed on more processes than saved: the new ones start their own streams
            torch.manual_seed(self.args.seed + self.procs.rank)

    # -- one step ------------------------------------------------------------------------------------

    def _to_device(self, batch: Batch) -> dict[str, torch.Tensor]:
        tensors = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in batch.items()}
        if self.device.type == "cuda":
            return {name: t.pin_memory().to(self.device, non_blocking=True) for name, t in tensors.items()}
        return {name: t.to(self.device) for name, t in tensors.items()}

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16)

    def _train_step(self) -> float:
        """One optimizer step on the next global batch; returns its learning rate."""
        args = self.args
        lr = self.schedule.rate(self.step, args)
        for group in self.optimizer.param_groups:  # lr_scale: discriminative rates (lmkit.contract.Optimizer)
            group["lr"] = lr * group.get("lr_scale", 1.0)
        first = self.samples_seen + self.procs.rank * self.local_batch
        for index, (offset, count) in enumerate(self.micro_batches):
            samples = self.data.train(first + offset, count)
            self.tokens_seen += self.data.tokens(samples)
            batch = self._to_device(samples)
            torch.manual_seed(pass_seed(args.seed, first + offset))
            # DDP and FSDP average gradients over processes in the backward pass; only the last pass
            # of the step needs it, the others accumulate locally.
            last = index == len(self.micro_batches) - 1
            if args.shard:
                self.batch_loss.set_requires_gradient_sync(last)
            with contextlib.nullcontext() if last or not self.procs.distributed or args.shard \
                    else self.batch_loss.no_sync():
                with self._autocast():
                    loss = self.batch_loss(batch)
                # Weighed by its share of this process's windows, each pass adds its part of the
                # gradient of the mean loss over all of them.
                weighted = loss * (count / self.local_batch)
                weighted.backward()
            self.loss_sum += weighted.detach()
            if len(self.objective_types) > 1:
                parts = self.objective_loss.parts
                self.parts_sum += torch.stack([parts[t].float() for t in self.objective_types]) * (
                    count / self.local_batch)
        for group in self.optimizer.param_groups:  # still frozen (gradual unfreezing): no gradient, no update
            if group.get("train_from_step", 0) > self.step:
                for parameter in group["params"]:
                    parameter.grad = None
        if args.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), args.grad_clip)
        self.optimizer.step()
        if args.shard and self.step == 0:  # its state exists now: refuse one --shard cannot save, before any work is lost
            sharding.check_elementwise(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.samples_seen += args.global_batch
        return lr

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The validation record: mean loss over the fixed validation batches, weighed by their rows (each
        process scores a share), each objective's loss when there are several, and the perplexity of the
        language-modelling objective(s) alone (never of a sum with NSP or a task head's loss)."""
        types = self.objective_types
        total = torch.zeros(2 + len(types), device=self.device)  # loss summed over rows, rows, each objective's
        world = self.procs.world_size
        share = [(batch, 1) for batch in self.eval_batches[self.procs.rank::world]]
        if self.args.shard and self.eval_batches:
            # A sharded model gathers its weights in every forward pass, all processes together: one process with a
            # pass more than another would wait for it forever (a trial's hang: 1 validation batch on 2
            # processes). The short ones run their first batch again, counted for nothing.
            share += [(self.eval_batches[0], 0)] * (math.ceil(len(self.eval_batches) / world) - len(share))
        self.model.eval()
        for batch, counted in share:
            rows = len(next(iter(batch.values()))) * counted
            with self._autocast():  # through the loss module: a sharded model gathers its weights in its forward
                loss = self.objective_loss(self._to_device(batch))
                parts = self.objective_loss.parts
            total[0] += loss.float() * rows
            total[1] += rows
            total[2:] += torch.stack([parts[t].float() for t in types]) * rows
        self.model.train()
        self.procs.sum(total)
        means = (total / total[1]).tolist()
        record = {"val_loss": means[0]}
        by_type = dict(zip(types, means[2:]))
        if len(types) > 1:
            record.update({f"val_loss_{t}": value for t, value in by_type.items()})
        for t in self.language_objectives:
            key = "val_ppl" if len(self.language_objectives) == 1 else f"val_ppl_{t}"
            record[key] = math.exp(min(by_type[t], 700.0))  # no overflow early on
        return record

    def validation_metrics(self) -> dict[str, float]:
        """Metrics beyond the loss, added to each evaluation's record (fine-tuning: accuracy, F1, ...)."""
        return {}

    def after_evaluation(self, record: dict) -> None:
        """Called with each evaluation's record (fine-tuning keeps its best checkpoint here)."""

    # -- the loop ------------------------------------------------------------------------------------

    def train(self) -> dict:
        """Train up to `args.steps`; returns the last metrics record."""
        from tqdm import tqdm

        args = self.args
        has_validation = len(self.eval_batches) > 0
        metrics_before = self._read_metrics()
        checkpoint_before = self._checkpoint_signature()
        metrics = self._open_metrics()
        # disable=None: the bar is drawn only on a terminal; elsewhere each record is printed as a line.
        bar = tqdm(total=args.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   file=sys.stderr, disable=None if self.progress else True)
        print_lines = self.progress and bar.disable
        self.model.train()
        started = interval_start = time.perf_counter()
        self._run_start = (started, self.step)  # the ETA of printed lines: this invocation's pace
        steps_in_interval = 0
        try:
            while self.step < args.steps:
                lr = self._train_step()
                steps_in_interval += 1
                bar.update(1)
                finished = self.step == args.steps
                evaluate = has_validation and (finished or (args.eval_every and self.step % args.eval_every == 0))
                if self.step % args.log_every == 0 or evaluate or finished:
                    # The first read of a device value since the last record: it waits for the steps.
                    share = steps_in_interval * self.procs.world_size
                    loss = self.procs.sum(self.loss_sum.clone()).item() / share
                    if not math.isfinite(loss):
                        self._diverged(f"the training loss is {loss} at step {self.step}")
                    now = time.perf_counter()
                    record = {"step": self.step, "loss": loss, "lr": lr,
                              "tokens_per_s": self.tokens_seen * self.procs.world_size
                              / max(now - interval_start, 1e-9),
                              "elapsed": self.elapsed_before + now - started}
                    record["tflops"] = record["tokens_per_s"] * self.flops_per_token / 1e12
                    if self.peak_flops:  # model FLOPs utilisation, where the device's peak is known
                        record["mfu"] = record["tflops"] * 1e12 / (self.peak_flops * self.procs.world_size)
                    if len(self.objective_types) > 1:  # the unweighted loss of each objective (MLM, NSP, ...)
                        parts = (self.procs.sum(self.parts_sum.clone()) / share).tolist()
                        record.update({f"loss_{t}": value for t, value in zip(self.objective_types, parts)})
                    if evaluate:
                        record.update(self.evaluate())
                        record.update(self.validation_metrics())
                        self.after_evaluation(record)
                    self._log(record, metrics, bar, print_lines)
                    self.loss_sum.zero_()
                    self.parts_sum.zero_()
                    steps_in_interval = self.tokens_seen = 0
                    interval_start = time.perf_counter()  # tokens/s leaves evaluation out
                if finished or (args.save_every and self.step % args.save_every == 0):
                    self._check_finite()  # a checkpoint never holds weights that went to inf or nan
                    paused = time.perf_counter()
                    self.save(self.elapsed_before + paused - started)
                    interval_start += time.perf_counter() - paused  # and saving
        except BaseException as error:
            if metrics is not None and self._checkpoint_signature() == checkpoint_before:
                # No checkpoint of this invocation: put metrics.jsonl back as it was, so that a failed run
                # leaves the model directory as it found it (its records name steps no checkpoint holds).
                metrics.close()
                self._restore_metrics(metrics_before)
            if isinstance(error, KeyboardInterrupt) and self._checkpoint_signature() is not None:
                raise InterruptedRun(f"{self.resume_command()} goes on from the last checkpoint") from error
            raise
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
        return self.last_record

    def _check_finite(self) -> None:
        """TrainingError when a loss since the last record, or a weight (this process's shard of it), is not finite.

        Every process decides alike (the flags are summed over them): one that stopped alone would leave the
        others waiting in the checkpoint's collectives.
        """
        bad = [name for name, parameter in self.model.named_parameters() if not bool(torch.isfinite(parameter).all())]
        flags = torch.stack([(~torch.isfinite(self.loss_sum)).any(), torch.tensor(bool(bad), device=self.device)])
        loss_bad, weight_bad = self.procs.sum(flags.float()).tolist()
        if loss_bad:
            self._diverged(f"the training loss is not finite by step {self.step}")
        if weight_bad:
            self._diverged(f"the weight {bad[0] if bad else 'that another process holds'} is not finite at step "
                           f"{self.step}")

    def _diverged(self, what: str) -> None:
        lr = self.args.lr
        raise TrainingError(f"training diverged: {what} (peak learning rate {lr:g}); train again with a lower --lr "
                            f"(say {lr / 10:g}) or a longer warmup; no checkpoint holds the diverged weights")

    def save(self, elapsed: float) -> None:
        """A checkpoint of this step; every process takes part (their RNG states), rank 0 writes."""
        rng = self.procs.gather(rng_state(self.device))
        carried = self.procs.gather(save_carried({f"{name}.{key}": value for name, objective in
                                                  self.model.objectives.items()
                                                  for key, value in objective.carried_state().items()}))
        weights = sharding.full_state_dict(self.model) if self.args.shard else None  # every process sends its part
        if self.args.shard:
            stage = begin_checkpoint(self.model_dir) if self.procs.is_main else None
            self.procs.barrier()
            sharding.save_optimizer_dcp(self.optimizer, self.parameter_names,
                                        os.path.join(self.model_dir, PARTIAL, OPTIMIZER_DCP))
        if not self.procs.is_main:
            return
        state = {
            "format": STATE_FORMAT,
            "lmkit_version": __version__,
            "step": self.step,
            "arguments": self.args.to_dict(),
            "data": {"samples_seen": self.samples_seen, **self.data.describe()},
            "rng": rng,  # one entry per process, by rank
            "carried": carried,  # each process's carried training state (a stateful LM's), or None
            "world_size": self.procs.world_size,
            "optimizer_format": "dcp" if self.args.shard else "safetensors",
            "elapsed": elapsed,
            "spec": self.spec,
            "spec_sha256": fingerprint(self.spec),
            "tokenizer_sha256": self.tokenizer_hash,
            "metrics": self.last_record,
        }
        if self.args.shard:
            save_weights(weights, os.path.join(stage, WEIGHTS))
            commit_checkpoint(self.model_dir, state)
        else:
            save_checkpoint(self.model_dir, self.model, self.optimizer, self.parameter_names, state)
        self.after_checkpoint()

    def after_checkpoint(self) -> None:
        """Called on the main process after each checkpoint (fine-tuning moves its run to --out at the first)."""

    # The command that goes on with a run from its last checkpoint (told after a Ctrl-C); {} is its directory.
    RESUME = "lmkit train {} --resume"

    def resume_command(self) -> str:
        """RESUME for this run's directory: its --out where the run is staged (StagedRun), else model_dir."""
        stage = getattr(self, "stage", None)
        return self.RESUME.format(stage.out if stage is not None else self.model_dir)

    # -- output --------------------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        if self.progress:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def _checkpoint_signature(self) -> tuple[int, int] | None:
        """Which trainer_state.json the directory holds: each checkpoint writes a new file."""
        try:
            found = os.stat(os.path.join(self.model_dir, STATE))
        except FileNotFoundError:
            return None
        return found.st_ino, found.st_mtime_ns

    def _read_metrics(self) -> bytes | None:
        path = os.path.join(self.model_dir, METRICS)
        if not self.procs.is_main or not os.path.isfile(path):
            return None
        with open(path, "rb") as handle:
            return handle.read()

    def _restore_metrics(self, before: bytes | None) -> None:
        path = os.path.join(self.model_dir, METRICS)
        if before is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            with atomic_write(path, "wb") as out:
                out.write(before)

    def _open_metrics(self):
        """metrics.jsonl for appending, holding only the records up to the step training starts from."""
        if not self.procs.is_main:
            return None
        path = os.path.join(self.model_dir, METRICS)
        kept = []
        if self.step and os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a crash
                        if json.loads(line)["step"] <= self.step:
                            kept.append(line if line.endswith("\n") else line + "\n")
        with atomic_write(path) as out:  # records after the checkpoint belong to steps that are redone
            out.writelines(kept)
        return open(path, "a", encoding="utf-8")

    def _log(self, record: dict, metrics, bar, print_lines: bool) -> None:
        self.last_record = record
        if metrics is None:
            return
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        shown = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}",
                 "tok/s": f"{record['tokens_per_s']:,.0f}", "TFLOP/s": _tflops(record["tflops"])}
        if "mfu" in record:
            shown["MFU"] = f"{record['mfu']:.1%}"
        if "val_loss" in record:
            shown["val"] = f"{record['val_loss']:.4f}"
        bar.set_postfix(shown, refresh=False)
        if print_lines:  # the bar's ETA, for a log file or a pipe, where there is no bar
            since, first_step = self._run_start
            done = record["step"] - first_step
            eta = (time.perf_counter() - since) / done * (self.args.steps - record["step"]) if done > 0 else None
            shown["eta"] = "?" if eta is None else bar.format_interval(eta)
            self._say(f"step {record['step']}/{self.args.steps}  " + "  ".join(f"{k} {v}" for k, v in shown.items()))


# Dense peak FLOP/s of common accelerators (vendors' data sheets), by a fragment of torch's device
def _tflops(value: float) -> str:
    """TFLOP/s at a steady width from line to line (.3g wrote 0.0926, then 0.092, then 0.09)."""
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


# name: (bf16 tensor cores, fp32 without TF32). Other devices report TFLOP/s without MFU.
PEAK_FLOPS = {"H200": (989e12, 67e12), "H100": (989e12, 67e12), "A100": (312e12, 19.5e12),
              "L40S": (362e12, 91.6e12), "A10G": (70e12, 31.2e12), "L4": (121e12, 30.3e12),
              "V100": (125e12, 15.7e12), "T4": (65e12, 8.1e12)}


def peak_flops(device: torch.device, bf16: bool) -> float | None:
    """The device's peak FLOP/s in the precision training runs at, when known (CUDA devices above)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, (half, single) in PEAK_FLOPS.items():
        if fragment in name:
            return half if bf16 else single
    return None


def pass_seed(seed: int, first_window: int) -> int:
    """The seed of the forward pass whose first window is `first_window` (see the module docstring)."""
    return int(np.random.SeedSequence([seed, first_window]).generate_state(1, np.uint64)[0] >> 1)


def _check_unchanged_spec(state: dict, spec: dict, model_dir: str) -> None:
    if state.get("spec_sha256") == fingerprint(spec):
        return
    where, then, now = first_difference(state.get("spec"), spec) or ("spec", "?", "?")
    raise TrainingError(f"{model_dir}/config.json changed since step {state['step']} was saved: {where} was "
                        f"{json.dumps(then)}, now {json.dumps(now)}; restore it to resume, or train the new spec "
                        "without --resume in a fresh model directory")


def train(model_dir: str, data=None, *, resume: bool = False, progress: bool = True, recipe: str | None = None,
          out: str | None = None, force: bool = False, **arguments) -> dict:
    """Train the model in `model_dir` and return the last metrics record.

    `data` (paths) and `arguments` are TrainingArguments fields: steps, batch_size, seq_len, lr, ...
    With resume=True the run saved in model_dir goes on from its last checkpoint, with the arguments
    it was started with; only `steps` may be raised (and `device` changed). Under torchrun every
    process calls this, and they train together. recipe: a registered training recipe whose arguments
    the run starts from (lmkit.contract.TrainingRecipe); `arguments` given here win over its own.
    out: a new model directory that starts as model_dir's model (its spec, weights and tokenizers,
    none of its run) and holds the new run, model_dir left as it is (ULMFiT's stage 2 from stage 1,
    further pre-training of any model); it appears at the run's first checkpoint, so a run that fails
    before one leaves no `out` (force: replace an existing one then).
    """
    model_dir = os.fspath(model_dir)
    if out is not None:
        if resume:
            raise TrainingError("--out starts a new run from MODEL_DIR's model; --resume goes on with the run in "
                                "MODEL_DIR: leave one of them out")
        if os.path.abspath(out) == os.path.abspath(model_dir):
            raise TrainingError("--out must be a new directory: the run starts from a copy of MODEL_DIR's model and "
                                "leaves MODEL_DIR as it is")
    if data is not None:
        arguments["data"] = data
    if recipe is not None:
        if resume:
            raise TrainingError("--recipe starts a run; a resumed run keeps the arguments it was started with")
        from ..registry import get_host

        try:
            defaults = get_host().instantiate("training-recipe", recipe, None, f"--recipe {recipe}").arguments()
        except LmkitError as error:
            raise TrainingError(str(error)) from None
        for kind in ("optimizer", "schedule"):  # --optimizer-set on the recipe's own optimizer adds to its options
            key = f"{kind}_options"
            if key in arguments and arguments.get(kind, defaults.get(kind)) == defaults.get(kind):
                arguments[key] = {**defaults.get(key, {}), **arguments[key]}
        arguments = {**defaults, **arguments}
    with processes() as procs:
        read_config(model_dir)  # a clear error for a directory that is not a model
        if out is not None:
            return _train_into(model_dir, os.fspath(out), force, procs, TrainingArguments.from_dict(arguments),
                               progress)
        with procs.main_first():  # one process finishes a save a crash interrupted
            if procs.is_main:
                finish_interrupted_save(model_dir)
        if resume:
            state = read_trainer_state(model_dir)
            # Sharding is how this invocation runs, not part of the run: each resume says it again (or not).
            arguments.setdefault("shard", False)
            args = TrainingArguments.from_dict(state["arguments"]).resumed_with(arguments, state["step"])
        else:
            if os.path.isfile(os.path.join(model_dir, STATE)):
                raise TrainingError(f"{model_dir} already holds a training run; pass --resume to continue it, "
                                    "or --out NEW_DIR to start a new run from its weights in a new directory")
            state, args = None, TrainingArguments.from_dict(arguments)
        return Trainer(model_dir, args, procs, state=state, progress=progress).train()


def copy_model(model_dir: str, out: str) -> None:
    """Write into `out` (a staged directory) the model of `model_dir`: spec, weights and tokenizers, rebuilt and
    saved as `lmkit compose` writes them, so none of model_dir's run (trainer state, optimizer, metrics) comes."""
    from ..model import save_model
    from ..registry import get_host

    model, tokenizer, _ = load_model(model_dir)
    save_model(out, model, get_host(), tokenizer, load_target_tokenizer(model_dir))


def _train_into(model_dir: str, out: str, force: bool, procs, args: TrainingArguments, progress: bool) -> dict:
    """train(out=...): the arguments are checked before anything is written."""
    from ..artifacts import StagedRun, staged_directory, staged_run

    inputs = (model_dir, *args.data, *args.val_data, *args.unlabeled)
    if procs.distributed:  # the processes must agree on one directory: the copy is made first, at `out`
        with procs.main_first():
            if procs.is_main:
                with staged_directory(out, force=force, inputs=inputs) as stage:
                    copy_model(model_dir, stage)
        return Trainer(out, args, procs, progress=progress).train()

    class StagedTrainer(Trainer):
        def __init__(self, *args, stage: StagedRun, **kwargs):
            self.stage = stage
            super().__init__(*args, **kwargs)

        def after_checkpoint(self) -> None:
            # The first checkpoint makes the run resumable: the stage becomes `out` (as lmkit finetune's does).
            if not self.stage.committed:
                self.model_dir = self.stage.commit()

    with staged_run(out, force=force, resumable=lambda path: os.path.isfile(os.path.join(path, STATE)),
                    inputs=inputs) as stage:
        copy_model(model_dir, stage.path)
        return StagedTrainer(stage.path, args, procs, progress=progress, stage=stage).train()


__all__ = ["Trainer", "TrainingArguments", "build_optimizer", "copy_model", "train"]
