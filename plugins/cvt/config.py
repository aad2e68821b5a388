"""The options of CVT's tagger encoder, its auxiliary modules and its schedule (torch-free).

Defaults are the paper's sequence-tagging model (Clark et al. 2018 §3, §4; tensorflow/models
research/cvt_text configure.py): 300-d word embeddings, a char CNN of 50-d characters with 100
filters each of widths 2, 3 and 4, a first layer of 1024 cells per direction, a second BiLSTM of
512 per direction, prediction modules with a 512-unit hidden layer, dropout 0.5 on labelled data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

VIEWS = ("forward", "backward", "future", "past", "full")


@dataclass(frozen=True)
class CVTConfig:
    vocab_size: int = 50000
    d_word: int = 300
    # Char CNN (lmkit.nn.char_cnn without highways or projection) over bilm-tf's char ids.
    n_characters: int = 262
    max_characters_per_token: int = 30
    d_char: int = 50
    filters: tuple[tuple[int, int], ...] = ((2, 100), (3, 100), (4, 100))
    d_first: int = 1024  # layer 1: a left-to-right and a right-to-left LSTM of this many cells each
    d_second: int = 512  # layer 2: a BiLSTM over [fwd_1; bwd_1], this many cells per direction
    d_projection: int = 512  # the hidden layer of every prediction module (the primary's is the encoder's output)
    # On the word representation, each LSTM's input and the modules' inputs, in training on labelled batches
    # (cvt_text: labeled_keep_prob 0.5); unlabelled batches use the cvt objective's unlabeled_dropout.
    dropout: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "filters", tuple(tuple(int(x) for x in f) for f in self.filters))
        for name in ("vocab_size", "d_word", "n_characters", "d_char", "d_first", "d_second", "d_projection"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.filters or any(len(f) != 2 or f[0] < 1 or f[1] < 1 for f in self.filters):
            raise ValueError(f"filters must be (width, channels) pairs of positive integers, got {self.filters}")
        if max(w for w, _ in self.filters) > self.max_characters_per_token:
            raise ValueError(f"a filter is wider than max_characters_per_token ({self.max_characters_per_token})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class CVTObjectiveOptions:
    num_labels: int = 2
    views: tuple[str, ...] = VIEWS  # the auxiliary modules trained on unlabelled batches
    d_projection: int = 0  # 0: the encoder's d_projection
    # Evaluation reads an exponential moving average of the primary's weights (cvt_text: 0.998); 0: off.
    ema_decay: float = 0.998
    # The dropout of the students' pass on unlabelled batches, in place of the encoder's (labelled) rate
    # (cvt_text: unlabeled_keep_prob 0.8); the teacher runs without any.
    unlabeled_dropout: float = 0.2

    def __post_init__(self):
        object.__setattr__(self, "views", tuple(self.views))
        unknown = sorted(set(self.views) - set(VIEWS))
        if unknown:
            raise ValueError(f"unknown CVT views {unknown}; choose among {', '.join(VIEWS)}")
        if not self.views:
            raise ValueError("CVT needs at least one auxiliary view")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.num_labels < 2:
            raise ValueError(f"num_labels must be at least 2, got {self.num_labels}")
        if not 0.0 <= self.unlabeled_dropout < 1.0:
            raise ValueError(f"unlabeled_dropout must be in [0, 1), got {self.unlabeled_dropout}")


@dataclass(frozen=True)
class CVTMultitaskOptions:
    """Multi-task CVT: several taggers on one encoder, each with its primary and auxiliary modules."""

    tasks: tuple[str, ...] = ()  # the task names, in the order batches index them
    labels: tuple[tuple[str, ...], ...] = ()  # each task's tag names, index by index
    tag_schemes: tuple[str, ...] = ()  # how each task's tags form entities (lmkit.tasks.chunks)
    views: tuple[str, ...] = VIEWS
    d_projection: int = 0  # 0: the encoder's d_projection
    ema_decay: float = 0.998
    unlabeled_dropout: float = 0.2
    label_smoothing: float = 0.1  # of each task's labelled loss (cvt_text)

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "labels", tuple(tuple(names) for names in self.labels))
        object.__setattr__(self, "tag_schemes", tuple(self.tag_schemes))
        object.__setattr__(self, "views", tuple(self.views))
        if len(self.tasks) < 2 or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must name at least two different tasks, got {list(self.tasks)}")
        if len(self.labels) != len(self.tasks) or any(len(names) < 2 for names in self.labels):
            raise ValueError("labels must give each task its tag names, at least two per task")
        if self.tag_schemes and len(self.tag_schemes) != len(self.tasks):
            raise ValueError("tag_schemes must give one scheme per task")
        CVTObjectiveOptions(views=self.views, ema_decay=self.ema_decay, unlabeled_dropout=self.unlabeled_dropout)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass(frozen=True)
class CVTScheduleOptions:
    warmup_steps: int = field(default=5000, metadata={"help": "steps of the linear ramp min(step / w, 1)"})
    decay: float = field(default=0.005, metadata={"help": "c of lr / (1 + c sqrt(step))"})

    def __post_init__(self):
        if self.warmup_steps < 0 or self.decay < 0:
            raise ValueError("warmup_steps and decay must not be negative")


def cvt_rate(step: int, lr: float, warmup_steps: int = 5000, decay: float = 0.005) -> float:
    """cvt_text's rate: lr * min(step / warmup_steps, 1) / (1 + decay * sqrt(step)) (paper: lr 0.5, SGD
    with momentum 0.9). Step counts from 1 here, so the first step does not run at rate 0."""
    step = step + 1
    ramp = min(step / warmup_steps, 1.0) if warmup_steps else 1.0
    return lr * ramp / (1.0 + decay * step ** 0.5)


class CVTSchedule:
    """See cvt_rate; registered as the `cvt` schedule (lmkit.contract.Schedule)."""

    def __init__(self, options: CVTScheduleOptions | None = None):
        self.options = options or CVTScheduleOptions()

    def rate(self, step: int, args) -> float:
        return cvt_rate(step, args.lr, self.options.warmup_steps, self.options.decay)


TRANSLATION_VIEWS = ("attention-dropout", "next-word")


@dataclass(frozen=True)
class CVTTranslationOptions:
    """CVT for an attentional LSTM translation model (Clark et al. 2018 §3.3, "Machine Translation")."""

    # The auxiliary decoders (the paper's two): one whose attention weights are dropped at random, one that
    # predicts the word after the one the primary decoder predicts.
    views: tuple[str, ...] = TRANSLATION_VIEWS
    # The share of attention weights the attention-dropout decoder zeroes (the paper gives no figure; ours).
    attention_dropout: float = 0.5
    # What the auxiliary decoders learn on unlabelled sources: the primary's beam-search output (the paper),
    # or its greedy output (cheaper).
    teacher: str = "beam"
    num_beams: int = 4
    # The longest pseudo-target; 0: twice the longest source of the batch plus 10 tokens.
    max_new_tokens: int = 0

    def __post_init__(self):
        object.__setattr__(self, "views", tuple(self.views))
        unknown = sorted(set(self.views) - set(TRANSLATION_VIEWS))
        if unknown:
            raise ValueError(f"unknown CVT translation views {unknown}; choose among {', '.join(TRANSLATION_VIEWS)}")
        if not self.views or len(set(self.views)) != len(self.views):
            raise ValueError("views must name at least one auxiliary decoder, each once")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if self.teacher not in ("beam", "greedy"):
            raise ValueError(f"teacher must be beam or greedy, got {self.teacher!r}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be 0 (from the source's length) or positive, got {self.max_new_tokens}")
