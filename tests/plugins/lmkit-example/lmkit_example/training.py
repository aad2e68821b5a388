"""An optimizer, a schedule and a task recipe, registered as a third party adds its own."""
from dataclasses import dataclass, field

from lmkit.tasks.recipes import DecoderRecipe


@dataclass(frozen=True)
class AdagradOptions:
    lr_decay: float = field(default=0.0, metadata={"help": "torch.optim.Adagrad's lr_decay"})


class Adagrad:
    def __init__(self, options: AdagradOptions):
        self.options = options

    def build(self, model, args, device):
        import torch

        return torch.optim.Adagrad([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                   lr_decay=self.options.lr_decay)


@dataclass(frozen=True)
class ConstantOptions:
    pass


class Constant:
    """Linear warmup, then --lr to the end."""

    def __init__(self, options: ConstantOptions):
        self.options = options

    def rate(self, step: int, args) -> float:
        return args.lr * min(1.0, (step + 1) / (args.warmup + 1))


class MeanPoolRecipe(DecoderRecipe):
    """GPT's markers, but features averaged over every real token instead of read at the extract token."""

    name = "mean-pool"
    aux_lm_weight = 0.0

    def features(self, output, extract_index):
        mask = output.attention_mask.to(output.last_hidden_state.dtype)[..., None]
        return (output.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
