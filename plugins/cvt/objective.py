"""CVT's auxiliary prediction modules and their loss on unlabelled text (Clark et al. 2018 §3.1-3.2;
cvt_text model/tagging_module.py, multitask_model.py).

On an unlabelled batch (one with an `unlabeled` entry, lmkit.plugins.cvt.recipe) the primary
module is the teacher: the whole model run in eval mode (no dropout) and without gradient, its
label probabilities p_θ(y_t | x) held constant. Each auxiliary module is a 512-unit ReLU layer and
a linear layer to the labels over a restricted view of the same sentence, run with dropout:

    forward   fwd_1 at t                  predicts y_t      (has read x_1 .. x_t)
    backward  bwd_1 at t                  predicts y_t      (has read x_t .. x_n)
    future    fwd_1 at t                  predicts y_{t+1}  (has read x_1 .. x_t)
    past      bwd_1 at t                  predicts y_{t-1}  (has read x_t .. x_n)
    full      [fwd_1; bwd_1; h_2]         predicts y_t      (the primary's inputs, through dropout)

    L_CVT = sum over modules j of mean over real positions t of  -sum_y p_θ(y | x)_t log p_j(y | view_j)_t

(soft cross-entropy, equal to KL(p_θ || p_j) up to the teacher's entropy, a constant). Labelled
batches train the primary only (the token head): this objective gives 0 on them.

The objective also keeps an exponential moving average of the primary module's weights (the encoder
and the token head's linear layer) as buffers, so a checkpoint holds it and a resumed run goes on
exactly; `averaged_weights()` swaps it in for evaluation (lmkit.tasks.finetune), as cvt_text tests
with its EMA (decay 0.998). The decay of update n is min(decay, (1 + n) / (10 + n)), the num_updates
form of TF's ExponentialMovingAverage, so a short run is not dominated by its initial weights.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.objectives.base import ObjectiveModule

from .config import CVTObjectiveOptions

TOKEN_HEAD = "token-head"


def soft_cross_entropy(teacher: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where mask is true of -sum_y teacher * log_softmax(logits): (..., L) -> ()."""
    losses = -(teacher * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    mask = mask.to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp(min=1)


@contextlib.contextmanager
def dropout_rate(parts, rate: float):
    """Every nn.Dropout inside `parts` (modules) at `rate` inside the block, then back to its own rate."""
    layers = [m for part in parts for m in part.modules() if isinstance(m, nn.Dropout)]
    rates = [layer.p for layer in layers]
    for layer in layers:
        layer.p = rate
    try:
        yield
    finally:
        for layer, old in zip(layers, rates):
            layer.p = old


def auxiliary_logits(modules: nn.ModuleDict, views: dict) -> dict:
    """{view: (logits (B, T', L), the slice of positions t' whose teacher it learns)} of each "<view>_module":
    future reads fwd_1 at t for y_{t+1}, past bwd_1 at t for y_{t-1}, the others their view at t for y_t."""
    out = {}
    for key, module in modules.items():
        view = key.removesuffix("_module")
        if view == "future":  # fwd_1 at t predicts y_{t+1}
            out[view] = (module(views["forward"][:, :-1]), slice(1, None))
        elif view == "past":  # bwd_1 at t predicts y_{t-1}
            out[view] = (module(views["backward"][:, 1:]), slice(None, -1))
        else:
            out[view] = (module(views[view]), slice(None))
    return out


def auxiliary_loss(students: dict, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_CVT: the sum over views of the soft cross-entropy to the teacher (B, T, L), each a mean over the
    positions where both the read state and the predicted word are real."""
    total = 0.0
    for view, (logits, targets) in students.items():
        if view in ("future", "past"):
            valid = mask[:, 1:] & mask[:, :-1]
        else:
            valid = mask
        total = total + soft_cross_entropy(teacher[:, targets], logits, valid)
    return total


class PredictionModule(nn.Module):
    """drop(state) -> ReLU(W .) -> U .: the paper's module, (..., d_in) -> (..., num_labels)."""

    def __init__(self, d_in: int, d_projection: int, num_labels: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.projection = nn.Linear(d_in, d_projection)
        self.score = nn.Linear(d_projection, num_labels)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.score(torch.relu(self.projection(self.drop(states))))


class MovingAverage:
    """An objective's exponential moving average of some of the model's weights, kept as its buffers
    (ema_0, ema_1, ... and ema_updates) so that checkpoints hold it; options.ema_decay is the decay."""

    ema_names: list[str]

    def register_average(self, shapes: list[tuple[str, tuple]]) -> None:
        """Average the model's parameters of these (name, shape)s."""
        self.ema_names = [name for name, _ in shapes]
        for i, (_, shape) in enumerate(shapes):
            self.register_buffer(f"ema_{i}", torch.zeros(shape))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    def _primary_parameters(self, model) -> list[torch.Tensor]:
        parameters = dict(model.named_parameters())
        return [parameters[name] for name in self.ema_names]

    @torch.no_grad()
    def update_average(self, model) -> None:
        """One EMA update toward the model's current primary weights (the first copies them)."""
        n = int(self.ema_updates)
        decay = 0.0 if n == 0 else min(self.options.ema_decay, (1 + n) / (10 + n))
        for i, parameter in enumerate(self._primary_parameters(model)):
            getattr(self, f"ema_{i}").mul_(decay).add_(parameter.detach().float(), alpha=1 - decay)
        self.ema_updates += 1

    @contextlib.contextmanager
    def averaged_weights(self, model):
        """The primary's weights replaced by their moving average inside the block, then put back."""
        if not self.ema_names or int(self.ema_updates) == 0:
            yield
            return
        parameters = self._primary_parameters(model)
        saved = [p.detach().clone() for p in parameters]
        with torch.no_grad():
            for i, parameter in enumerate(parameters):
                parameter.copy_(getattr(self, f"ema_{i}"))
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, value in zip(parameters, saved):
                    parameter.copy_(value)


class CVTObjective(MovingAverage, ObjectiveModule):
    """The auxiliary modules (one per view) and the unlabelled loss L_CVT."""

    reads_unlabeled = True  # lmkit.model.ComposedModel.loss: the only objective an unlabelled batch trains

    def __init__(self, options: CVTObjectiveOptions, d_first: int, d_views: int, d_projection: int,
                 dropout: float):
        super().__init__(options)
        inputs = {"forward": d_first, "backward": d_first, "future": d_first, "past": d_first, "full": d_views}
        self.ema_names: list[str] = []
        # "<view>_module": nn.ModuleDict refuses a key named "forward"
        self.modules_by_view = nn.ModuleDict({
            f"{view}_module": PredictionModule(inputs[view], options.d_projection or d_projection, options.num_labels, dropout)
            for view in options.views})

    @classmethod
    def for_model(cls, options, model) -> CVTObjective:
        encoder = model.encoder
        config = encoder.config
        options = options or CVTObjectiveOptions()
        objective = cls(options, config.d_first, encoder.d_views, config.d_projection, config.dropout)
        if options.ema_decay:
            # The token head is built before this objective but not yet reachable: its linear layer's shapes.
            shapes = [(f"encoder.{name}", p.shape) for name, p in encoder.named_parameters()]
            shapes += [(f"objectives.{TOKEN_HEAD}.score.weight", (options.num_labels, config.d_projection)),
                       (f"objectives.{TOKEN_HEAD}.score.bias", (options.num_labels,))]
            objective.register_average(shapes)
        return objective

    @torch.no_grad()
    def teacher(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """p_θ(y | x) (B, T, L): the primary module (encoder and token head) in eval mode, without gradient."""
        training = model.training
        model.eval()
        try:
            head = model.objectives[TOKEN_HEAD]
            hidden = model.encoder(input_ids, attention_mask).last_hidden_state
            return F.softmax(head.score(hidden).float(), dim=-1)
        finally:
            model.train(training)

    def student_logits(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        """{view: (logits, targets' slice of the teacher's positions)} with the model's own mode (dropout)."""
        return auxiliary_logits(self.modules_by_view, model.encoder.views(input_ids, attention_mask))

    @contextlib.contextmanager
    def unlabeled_dropout(self, model):
        """Every dropout of the encoder and the auxiliary modules at options.unlabeled_dropout inside the block
        (cvt_text's unlabeled_keep_prob), then back to what it was (the labelled rate)."""
        with dropout_rate([model.encoder, self], self.options.unlabeled_dropout):
            yield

    def unlabeled_loss(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       teacher: torch.Tensor | None = None) -> torch.Tensor:
        mask = attention_mask.bool()
        if teacher is None:
            teacher = self.teacher(model, input_ids, mask)
        with self.unlabeled_dropout(model):
            students = self.student_logits(model, input_ids, mask)
        return auxiliary_loss(students, teacher, mask)

    def forward(self, model, batch: dict) -> torch.Tensor:
        if self.ema_names and self.training and torch.is_grad_enabled():
            # The weights as the last optimizer step left them: averaging here, once per training batch, puts
            # the average in the model's own state (checkpointed) without a hook after the optimizer.
            self.update_average(model)
        if "unlabeled" not in batch:  # a labelled batch trains the primary module alone
            return batch["input_ids"].new_zeros((), dtype=torch.float32)
        return self.unlabeled_loss(model, batch["input_ids"], batch["attention_mask"])
