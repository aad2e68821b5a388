from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CausalLMOptions:
    label_smoothing: float = 0.0  # 0 gives the plain next-token cross-entropy that perplexity measures

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass(frozen=True)
class Seq2SeqOptions:
    label_smoothing: float = 0.0  # Sutskever et al. and Bahdanau et al. train with none; T5 too
    # Text-to-text fine-tuning on a classification file: the task name its examples were prefixed with ("rte:
    # sentence1: ..."), kept so that lmkit eval --task and lmkit predict read other files of the task alike.
    task_prefix: str = ""

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not isinstance(self.task_prefix, str):
            raise ValueError(f"task_prefix must be a string, got {self.task_prefix!r}")


@dataclass(frozen=True)
class SequenceHeadOptions:
    """A task head: `lmkit finetune` fills these in from the pretrained model and the task file."""

    recipe: str = "encoder"  # the task recipe that reads examples and features (lmkit components --kind task-recipe)
    task: str = "classification"  # classification, similarity, regression or multiple-choice
    num_labels: int = 2  # classes of a classification; 1 for regression and multiple choice
    labels: tuple[str, ...] = ()  # the class names, index by index, so predictions can be named
    dropout: float = 0.1  # on the features, before the linear layer (GPT: 0.1)
    label_smoothing: float = 0.0  # of the cross-entropy to the gold class (not for regression)
    # The recipe's own options, for a recipe that takes some (a cloze recipe's pattern and words: lmkit.tasks.cloze).
    recipe_options: Any = None

    def __post_init__(self):
        tasks = ("classification", "similarity", "regression", "multiple-choice")
        if self.task not in tasks:
            raise ValueError(f"task must be one of {', '.join(tasks)}, got {self.task!r}")
        single = self.task in ("regression", "multiple-choice")
        if single and self.num_labels != 1:
            raise ValueError(f"a {self.task} head scores with one output; set num_labels = 1")
        if not single and self.num_labels < 2:
            raise ValueError(f"a {self.task} head needs num_labels >= 2, got {self.num_labels}")
        if self.labels and len(self.labels) != self.num_labels:
            raise ValueError(f"labels names {len(self.labels)} classes but num_labels is {self.num_labels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        _check_smoothing(self.label_smoothing)
        if self.label_smoothing and self.task == "regression":
            raise ValueError("a regression head has no classes to smooth; set label_smoothing = 0")


@dataclass(frozen=True)
class TokenHeadOptions:
    """A tag per token (NER, POS, chunking)."""

    recipe: str = "encoder"
    num_labels: int = 2
    labels: tuple[str, ...] = ()  # the tag names, index by index
    dropout: float = 0.1
    tag_scheme: str = ""  # how the tags form entities for entity F1 (lmkit.tasks.chunks); "": detect
    label_smoothing: float = 0.0  # of the cross-entropy to the gold tag (CVT: 0.1)

    def __post_init__(self):
        if self.num_labels < 2:
            raise ValueError(f"a token head needs num_labels >= 2, got {self.num_labels}")
        if self.labels and len(self.labels) != self.num_labels:
            raise ValueError(f"labels names {len(self.labels)} tags but num_labels is {self.num_labels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        _check_smoothing(self.label_smoothing)


@dataclass(frozen=True)
class SpanHeadOptions:
    """Answer start and end scores per token (extractive QA, SQuAD)."""

    recipe: str = "encoder"
    allow_no_answer: bool = False  # SQuAD v2.0: [CLS] stands for "no answer"
    dropout: float = 0.1

    def __post_init__(self):
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _check_smoothing(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {value}")
