"""Sutskever et al. 2014 §3.4's training recipe: plain SGD and a rate halved late in training.

Registered as the `sgd` optimizer and the `halving` schedule (lmkit.contract.Optimizer, Schedule);
any model can use them: `lmkit train --optimizer sgd --schedule halving --schedule-set halve_every=100`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lmkit.training.schedule import fused_if_possible, warmup_rate


@dataclass(frozen=True)
class SGDOptions:
    momentum: float = field(default=0.0, metadata={"help": "0: the paper's plain SGD"})

    def __post_init__(self):
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")


class SGD:
    """SGD without weight decay (the paper: lr 0.7, no momentum); --weight-decay is not applied."""

    def __init__(self, options: SGDOptions | None = None):
        self.options = options or SGDOptions()

    def build(self, model, args, device):
        import torch

        parameters = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(parameters, lr=args.lr, momentum=self.options.momentum,
                               **fused_if_possible(device, on_cpu=False))


def halving_rate(step: int, *, lr: float, warmup: int, steps: int, halve_from: int = 0,
                 halve_every: int = 0) -> float:
    """Sutskever et al. 2014 §3.4: a constant rate, halved every half epoch after 5 of 7.5 epochs.

    After the linear warmup the rate stays at `lr` until step `halve_from`, then halves every
    `halve_every` steps. 0 takes the paper's proportions of the run: halve_from = 2/3 of the steps
    (epoch 5 of 7.5), halve_every = 1/15 of them (half an epoch), so the last steps run at lr / 32.
    """
    if step < warmup:
        return warmup_rate(step, lr, warmup)
    halve_from = halve_from or round(steps * 2 / 3)
    halve_every = halve_every or max(1, round(steps / 15))
    if step < halve_from:
        return lr
    return lr * 0.5 ** ((step - halve_from) // halve_every + 1)


@dataclass(frozen=True)
class HalvingOptions:
    halve_from: int = field(default=0, metadata={"help": "the first halved step; 0: 2/3 of --steps (epoch 5 of 7.5)"})
    halve_every: int = field(default=0, metadata={"help": "steps between halvings; 0: 1/15 of --steps (half an epoch)"})

    def __post_init__(self):
        for name in ("halve_from", "halve_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")


class Halving:
    """See halving_rate."""

    def __init__(self, options: HalvingOptions | None = None):
        self.options = options or HalvingOptions()

    def rate(self, step: int, args) -> float:
        return halving_rate(step, lr=args.lr, warmup=args.warmup, steps=args.steps,
                            halve_from=self.options.halve_from, halve_every=self.options.halve_every)
