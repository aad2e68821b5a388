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


SCHEDULES = ("cosine", "halving")


def halving_rate(step: int, *, lr: float, warmup: int, steps: int, halve_from: int = 0,
                 halve_every: int = 0) -> float:
    """Sutskever et al. 2014 §3.4: a constant rate, halved every half epoch after 5 of 7.5 epochs.

    After the linear warmup the rate stays at `lr` until step `halve_from`, then halves every
    `halve_every` steps. 0 takes the paper's proportions of the run: halve_from = 2/3 of the steps
    (epoch 5 of 7.5), halve_every = 1/15 of them (half an epoch), so the last steps run at lr / 32.
    """
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    halve_from = halve_from or round(steps * 2 / 3)
    halve_every = halve_every or max(1, round(steps / 15))
    if step < halve_from:
        return lr
    return lr * 0.5 ** ((step - halve_from) // halve_every + 1)


def rate_at(step: int, args) -> float:
    """The rate of optimizer step `step` under the schedule TrainingArguments `args` asks for."""
    if args.schedule == "halving":
        return halving_rate(step, lr=args.lr, warmup=args.warmup, steps=args.steps, halve_from=args.halve_from,
                            halve_every=args.halve_every)
    return learning_rate(step, lr=args.lr, warmup=args.warmup, steps=args.steps, min_lr_ratio=args.min_lr_ratio)
