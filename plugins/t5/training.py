"""T5's optimizer and schedule (Raffel et al. 2020 §3.1.2): Adafactor (Shazeer and Stern 2018) and the
inverse square-root rate 1/sqrt(max(n, k)), k = 10^4, registered beside the core's AdamW and cosine.

Adafactor is torch.optim.Adafactor: factored second moments for matrices, the relative step
min(lr, 1/sqrt(t)) scaled by the parameter's RMS, update clipping at 1, beta2 decay t^-0.8 — the
defaults of Mesh TensorFlow's optimizer that T5 trained with. --lr caps the relative step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AdafactorOptions:
    beta2_decay: float = field(default=-0.8, metadata={"help": "second-moment decay 1 - t^beta2_decay (-0.8)"})
    clip_threshold: float = field(default=1.0, metadata={"help": "largest RMS of an update (d in the paper)"})
    eps_scale: float = field(default=1e-3, metadata={"help": "smallest parameter scale of the relative step"})

    def __post_init__(self):
        if not -1.0 <= self.beta2_decay < 0.0:
            raise ValueError(f"beta2_decay must be in [-1, 0), got {self.beta2_decay}")
        if not self.clip_threshold > 0 or not self.eps_scale > 0:
            raise ValueError("clip_threshold and eps_scale must be positive")


class Adafactor:
    """lmkit.contract.Optimizer: torch.optim.Adafactor over the trainable parameters; --weight-decay applies
    to matrices and embeddings only, as AdamW's does."""

    def __init__(self, options: AdafactorOptions | None = None):
        self.options = options or AdafactorOptions()

    def build(self, model, args, device):
        import torch

        o = self.options
        parameters = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": args.weight_decay},
                  {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.Adafactor(groups, lr=args.lr, beta2_decay=o.beta2_decay, d=o.clip_threshold,
                                     eps=(None, o.eps_scale))


@dataclass(frozen=True)
class InverseSqrtOptions:
    constant_steps: int = field(default=10000, metadata={
        "help": "k: --lr for the first k steps, then --lr * sqrt(k / n) (T5: 10^4 steps at lr 0.01)"})

    def __post_init__(self):
        if isinstance(self.constant_steps, bool) or not isinstance(self.constant_steps, int) or self.constant_steps < 1:
            raise ValueError(f"constant_steps must be a positive integer, got {self.constant_steps!r}")


def inverse_sqrt_rate(step: int, *, lr: float, warmup: int, constant_steps: int) -> float:
    """--lr * sqrt(k / max(n, k)) for step n = step + 1 (1-based, as T5 counts): with --lr 0.01 and k 10^4 it
    is T5's 1/sqrt(max(n, 10^4)). A --warmup, if given, rises linearly to it first."""
    from lmkit.training.schedule import warmup_rate

    target = lr * math.sqrt(constant_steps / max(step + 1, constant_steps))
    return warmup_rate(step, target, warmup) if step < warmup else target


class InverseSqrt:
    """lmkit.contract.Schedule: see inverse_sqrt_rate."""

    def __init__(self, options: InverseSqrtOptions | None = None):
        self.options = options or InverseSqrtOptions()

    def rate(self, step: int, args) -> float:
        return inverse_sqrt_rate(step, lr=args.lr, warmup=args.warmup, constant_steps=self.options.constant_steps)
