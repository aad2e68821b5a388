"""What a training run is asked to do: checked once, saved with every checkpoint, reused on resume."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from ..errors import LmkitError, did_you_mean, one_of


class TrainingError(LmkitError):
    """A training run cannot start or resume as asked."""


class MissingArguments(TrainingError):
    """A training run started without the flags it needs: a usage error."""

    exit_code = 2


def flag(name: str) -> str:
    """The command-line spelling of an argument, which is how messages name it."""
    return "--" + name.replace("_", "-")


MAX_DEFAULT_WARMUP = 100


def default_warmup(steps: int) -> int:
    """The warmup a run gets unless told: a tenth of its steps, at most 100 (nanoGPT-sized runs warm up
    over 100 steps; a 40-step run would spend them all below its peak rate)."""
    return min(MAX_DEFAULT_WARMUP, steps // 10)


@dataclass(frozen=True)
class TrainingArguments:
    data: tuple[str, ...]  # text/.jsonl files or directories, as absolute paths
    steps: int  # optimizer steps in all, counting those of a resumed run
    batch_size: int  # windows per forward pass, at most
    seq_len: int  # tokens each window predicts; it reads seq_len + 1
    val_data: tuple[str, ...] = ()  # held-out files; when empty, the data's last val_fraction is held out
    # Unlabelled text (one sentence per line) for an objective that learns from it (Objective.with_unlabeled:
    # CVT for translation reads source sentences); empty: none.
    unlabeled: tuple[str, ...] = ()
    lr: float = 3e-4  # peak learning rate, reached at the end of warmup
    warmup: int | None = None  # steps of linear warmup; None: default_warmup(steps), fixed when the run starts
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step (Chinchilla: 0.1)
    weight_decay: float = 0.1  # AdamW's decoupled decay, on matrices and embeddings only
    beta1: float = 0.9
    beta2: float = 0.95  # GPT-3's choice: steadier than 0.999 for large batches of text
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    # A step reads batch_size * grad_accum windows, whatever the number of processes: each of N
    # processes takes 1/N of them, in passes of at most batch_size.
    grad_accum: int = 1
    eval_every: int = 200  # steps between validation losses; 0: only at the end of training
    eval_batches: int = 20  # the validation loss averages batch_size * eval_batches fixed windows
    save_every: int = 500  # steps between checkpoints; 0: only at the end
    log_every: int = 10  # steps between metrics.jsonl records (each costs a host/device sync)
    bf16: bool = False  # bfloat16 autocast for the forward pass; weights and optimizer stay float32
    seed: int = 0  # the data order and any randomness in the model (dropout)
    val_fraction: float = 0.05
    text_field: str = "text"  # the field of a .jsonl record that holds the document
    device: str = "auto"  # auto: cuda when there is one, else cpu
    shard: bool = False  # FSDP2 under torchrun: each process keeps 1/N of the weights and optimizer state
    compile: bool = False  # torch.compile the forward and backward passes (lmkit.training.compiling)
    # A registered optimizer and schedule (lmkit components --kind optimizer / schedule), with their options.
    optimizer: str = "adamw"
    schedule: str = "cosine"
    optimizer_options: dict = field(default_factory=dict)
    schedule_options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("data", "val_data", "unlabeled"):
            value = getattr(self, name)
            paths = (value,) if isinstance(value, (str, os.PathLike)) else tuple(value or ())
            object.__setattr__(self, name, tuple(os.path.abspath(os.fspath(p)) for p in paths))
        if not self.data:
            raise TrainingError("no training data given; pass --data with text or .jsonl files or directories")
        if self.warmup is None and isinstance(self.steps, int) and not isinstance(self.steps, bool):
            # Resolved once: a resumed run reads it back as a number, so raising --steps leaves it as it was.
            object.__setattr__(self, "warmup", default_warmup(self.steps))
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches", "log_every",
                     "warmup", "eval_every", "save_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TrainingError(f"{flag(name)} must be an integer, got {value!r}")
        for name in ("lr", "min_lr_ratio", "weight_decay", "beta1", "beta2", "grad_clip", "val_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TrainingError(f"{flag(name)} must be a number, got {value!r}")
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup", "eval_every", "save_every", "seed", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise TrainingError(f"{flag(name)} must not be negative, got {getattr(self, name)}")
        if not self.lr > 0:
            raise TrainingError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise TrainingError(f"--min-lr-ratio must be between 0 and 1, got {self.min_lr_ratio}")
        for name in ("beta1", "beta2", "val_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise TrainingError(f"{flag(name)} must be at least 0 and below 1, got {getattr(self, name)}")
        self.build_optimizer(), self.build_schedule()  # unknown names and bad options fail here, in one line
        if not self.text_field:
            raise TrainingError("--text-field must name a field of the .jsonl records, e.g. text")

    def build_optimizer(self):
        """The registered optimizer --optimizer names, built from --optimizer-set (lmkit.contract.Optimizer)."""
        return self._build("optimizer", self.optimizer, self.optimizer_options)

    def build_schedule(self):
        """The registered schedule --schedule names, built from --schedule-set (lmkit.contract.Schedule)."""
        return self._build("schedule", self.schedule, self.schedule_options)

    @staticmethod
    def _build(kind: str, name: str, options: dict):
        from ..registry import get_host

        try:
            return get_host().instantiate(kind, name, options, f"--{kind} {name}")
        except LmkitError as error:
            raise TrainingError(str(error)) from None

    @property
    def global_batch(self) -> int:
        """Windows per optimizer step, over all processes."""
        return self.batch_size * self.grad_accum

    def to_dict(self) -> dict:
        return {name: list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value
                for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> TrainingArguments:
        """Arguments from keyword values, with a one-line error for a name that is not one."""
        names = [field.name for field in dataclasses.fields(cls)]
        for name in values:
            if name not in names:
                raise TrainingError(f"unknown training argument '{name}'{did_you_mean(name, names)}; "
                                    f"allowed: {one_of(names, limit=len(names))}")
        missing = [flag(name) for name in ("data", "steps", "batch_size", "seq_len") if values.get(name) is None]
        if missing:
            raise MissingArguments(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} needed to start "
                                "a training run")
        return cls(**values)

    def resumed_with(self, changes: dict, step: int) -> TrainingArguments:
        """These arguments for a run resumed at `step`: only steps (and the device, sharding and compiling) may change."""
        current = self.to_dict()
        asked = TrainingArguments.from_dict({**current, **changes}).to_dict()
        for name, value in asked.items():
            if value != current[name] and name not in ("steps", "device", "shard", "compile"):
                raise TrainingError(f"{flag(name)} {value} differs from the run being resumed ({current[name]}); "
                                    "a resumed run keeps its arguments: only --steps may be raised")
        if asked["steps"] < self.steps:
            raise TrainingError(f"--steps {asked['steps']} is below the {self.steps} the run was started with; "
                                "--steps may only be raised on resume")
        if asked["steps"] <= step:
            raise TrainingError(f"the run is already at step {step} of {self.steps}; pass a larger --steps "
                                "to train further")
        return TrainingArguments.from_dict(asked)
