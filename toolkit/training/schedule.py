"""The learning-rate schedule: linear warmup, then cosine decay (as nanoGPT, after GPT-3 §B)."""
from __future__ import annotations

import math


def learning_rate(step: int, *, lr: float, warmup: int, steps: int, min_lr_ratio: float) -> float:
    """The rate for optimizer step `step` (0-based) of `steps`.

    It rises linearly to `lr` over `warmup` steps, then follows half a cosine down to
    lr * min_lr_ratio at the last step. It depends on the step alone, which is what lets a resumed
    run continue exactly.
    """
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    progress = min((step - warmup) / max(steps - warmup, 1), 1.0)
    min_lr = lr * min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
