"""ULMFiT's fine-tuning schedule (Howard and Ruder 2018 §3.2, §3.3), registered through the hooks:

    stlr            slanted triangular learning rates (eq. 3), a schedule
    ulmfit          Adam over layer groups with discriminative rates (eta^{l-1} = eta^l / 2.6, §3.2)
                    and gradual unfreezing (the top group first, one more every stage, §3.3), an optimizer
    ulmfit-lm       the training recipe of stage 2, target-task LM fine-tuning: both of the above,
                    Adam beta1 0.7, beta2 0.99, lr 0.004 (§4)

The groups (`layer_groups`) are the paper's: the embedding, each LSTM layer, and the head (the
LM's output bias, or a classifier's head). The trainer applies a group's `lr_scale` and
`train_from_step` (lmkit.contract.Optimizer), both functions of the step, so resume stays exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from lmkit.errors import SpecError


def stlr_rate(step: int, *, steps: int, lr: float, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """Slanted triangular learning rate, ULMFiT eq. 3, for iteration t = step of T = steps:

        cut = floor(T * cut_frac)
        p   = t / cut                                  if t < cut
              1 - (t - cut) / (cut * (1 / cut_frac - 1)) otherwise
        eta = eta_max * (1 + p * (ratio - 1)) / ratio

    A short rise to lr over cut_frac of the run, then a long linear decay to lr / ratio. Where
    T * cut_frac is not a whole number, floor makes the decay slightly steeper than T - cut and p would
    go below 0 in the last steps: it is held at 0 (lr / ratio). cut is at least 1.
    """
    cut = max(1, math.floor(steps * cut_frac))
    if step < cut:
        p = step / cut
    else:
        p = max(0.0, 1 - (step - cut) / (cut * (1 / cut_frac - 1)))
    return lr * (1 + p * (ratio - 1)) / ratio


@dataclass(frozen=True)
class STLROptions:
    cut_frac: float = field(default=0.1, metadata={"help": "the share of the steps the rate rises over"})
    ratio: float = field(default=32.0, metadata={"help": "how much smaller the lowest rate is than --lr"})

    def __post_init__(self):
        if not 0 < self.cut_frac < 1:
            raise ValueError(f"cut_frac must be in (0, 1), got {self.cut_frac}")
        if not self.ratio >= 1:
            raise ValueError(f"ratio must be at least 1, got {self.ratio}")


class STLR:
    """See stlr_rate; --lr is eta_max, --warmup is not used (the rise is the schedule's own)."""

    def __init__(self, options: STLROptions | None = None):
        self.options = options or STLROptions()

    def rate(self, step: int, args) -> float:
        return stlr_rate(step, steps=args.steps, lr=args.lr, cut_frac=self.options.cut_frac, ratio=self.options.ratio)


def layer_groups(model) -> list[tuple[str, list]]:
    """ULMFiT's parameter groups of a model on an awd-lstm decoder, bottom to top: the embedding, each
    LSTM layer, then the head (every other parameter: the LM's output bias or layer, a task head).
    SpecError for another decoder."""
    from .model import AWDLSTMDecoder

    decoder = model.decoder
    if not isinstance(decoder, AWDLSTMDecoder):
        raise SpecError("ULMFiT's discriminative rates and gradual unfreezing need an AWD-LSTM language model "
                        "(composed from awd-lstm or awd-lstm-tiny), whose groups are the embedding, each LSTM layer "
                        f"and the head; this model's stack is {type(model.feature_stack).__name__}")
    groups = [("embedding", [decoder.embedding.weight])]
    groups += [(f"lstm {i}", list(layer.parameters())) for i, layer in enumerate(decoder.layers)]
    seen = {id(p) for _, params in groups for p in params}
    groups.append(("head", [p for p in model.parameters() if id(p) not in seen]))
    return groups


@dataclass(frozen=True)
class ULMFiTOptimizerOptions:
    factor: float = field(default=2.6, metadata={"help": "each group's rate is the one above it / factor (§3.2)"})
    unfreeze_every: int = field(default=0, metadata={
        "help": "steps between unfreezing one more group, top first (§3.3: an epoch); 0: all train from the start"})
    unfreeze_stages: int = field(default=0, metadata={
        "help": "groups unfrozen one at a time before the rest follow together; 0: every group"})

    def __post_init__(self):
        if not self.factor >= 1:
            raise ValueError(f"factor must be at least 1, got {self.factor}")
        for name in ("unfreeze_every", "unfreeze_stages"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")


class ULMFiTOptimizer:
    """AdamW (--beta1, --beta2, --weight-decay, decoupled as fastai's) over layer_groups, the top group at
    --lr and each one below at 1/factor of the one above; with unfreeze_every, group k from the top
    (0: the head) trains from step k * unfreeze_every (capped at unfreeze_stages stages)."""

    def __init__(self, options: ULMFiTOptimizerOptions | None = None):
        self.options = options or ULMFiTOptimizerOptions()

    def param_groups(self, model) -> list[dict]:
        options = self.options
        groups = [(name, [p for p in params if p.requires_grad]) for name, params in layer_groups(model)]
        groups = [(name, params) for name, params in groups if params]
        if options.unfreeze_stages > len(groups):
            names = ", ".join(name for name, _ in groups)
            raise SpecError(f"unfreeze_stages {options.unfreeze_stages} is more than the model's {len(groups)} "
                            f"parameter groups ({names}); give at most {len(groups)}")
        stages = options.unfreeze_stages or len(groups)
        built = []
        for depth, (name, params) in enumerate(reversed(groups)):  # depth 0: the head
            built.append({"params": params, "name": name, "lr_scale": options.factor ** -depth,
                          "train_from_step": min(depth, stages - 1) * options.unfreeze_every})
        return built[::-1]

    def build(self, model, args, device):
        import torch

        from lmkit.training.schedule import fused_if_possible

        return torch.optim.AdamW(self.param_groups(model), lr=args.lr, betas=(args.beta1, args.beta2),
                                 weight_decay=args.weight_decay, **fused_if_possible(device))


class ULMFiTLanguageModelRecipe:
    """Stage 2, target-task LM fine-tuning (§3.2, §4): discriminative rates and STLR, Adam (0.7, 0.99),
    lr 0.004 at the top group, weight decay 0.01 (fastai's), gradients clipped at 0.4 (fastai's LM)."""

    def arguments(self) -> dict:
        return {"optimizer": "ulmfit", "schedule": "stlr", "lr": 4e-3, "beta1": 0.7, "beta2": 0.99,
                "weight_decay": 0.01, "grad_clip": 0.4, "warmup": 0}
