"""Training: `train(model_dir, data, steps=..., batch_size=..., seq_len=...)`, or `lmkit train`.

    arguments.py    TrainingArguments, checked once and saved with every checkpoint
    schedule.py     linear warmup, then cosine decay
    trainer.py      the loop: Trainer and train()
    checkpoint.py   checkpoints written atomically into the model directory, and read back exactly
    distributed.py  torchrun processes, the process group and its collectives
"""
from .arguments import TrainingArguments, TrainingError
from .schedule import learning_rate

_TRAINER = ("METRICS", "Trainer", "build_optimizer", "train")


def __getattr__(name: str):
    # The trainer imports torch: only on first use, so that listing the registered schedules and
    # optimizers (lmkit components), whose classes live in schedule.py, stays torch-free.
    if name in _TRAINER:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["METRICS", "Trainer", "TrainingArguments", "TrainingError", "build_optimizer", "learning_rate", "train"]
