"""Training: `train(model_dir, data, steps=..., batch_size=..., seq_len=...)`, or `lmkit train`.

    arguments.py    TrainingArguments, checked once and saved with every checkpoint
    schedule.py     linear warmup, then cosine decay
    trainer.py      the loop: Trainer and train()
    checkpoint.py   checkpoints written atomically into the model directory, and read back exactly
    distributed.py  torchrun processes, the process group and its collectives
"""
from .arguments import TrainingArguments, TrainingError
from .schedule import learning_rate
from .trainer import METRICS, Trainer, build_optimizer, train

__all__ = ["METRICS", "Trainer", "TrainingArguments", "TrainingError", "build_optimizer", "learning_rate", "train"]
