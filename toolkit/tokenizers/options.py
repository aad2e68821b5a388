"""The options of each trainable tokenizer kind, as `lmkit tokenizer train --set` and specs give them.

Each is a frozen dataclass checked in __post_init__ (ValueError, shown by lmkit.options.build_options
with the kind's name). Every kind takes `template` / `template_pair`: what is added around one text
and around a pair (lmkit.tokenizers.templates); `auto` keeps the family's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .templates import AUTO, PRESETS, check_template, special_tokens_of

TEMPLATE_HELP = ("what encode(add_special_tokens=True) adds: auto (the family's), bert ([CLS] $A [SEP]), "
                 "roberta (<s> $A </s>), t5 ($A </s>), none, or a template such as '[CLS] $A [SEP]'")
TEMPLATE_PAIR_HELP = "with a custom template: the form for two texts, e.g. '[CLS] $A [SEP] $B:1 [SEP]:1'"


def _help(text: str) -> dict:
    return {"help": text}


def _check_special_tokens(options, unknown_token: str | None) -> None:
    """special_tokens as a tuple of distinct non-empty strings that includes `unknown_token`."""
    tokens = tuple(options.special_tokens)
    object.__setattr__(options, "special_tokens", tokens)  # frozen; a list passed in becomes a tuple
    if not all(isinstance(token, str) and token for token in tokens):
        raise ValueError("special_tokens must be non-empty strings")
    repeated = sorted({token for token in tokens if tokens.count(token) > 1})
    if repeated:
        raise ValueError(f"special_tokens lists {repeated[0]!r} twice; list each token once")
    if unknown_token is not None and unknown_token not in tokens:
        raise ValueError(f"special_tokens must include {unknown_token!r}, the token for text the "
                         "vocabulary cannot spell")
    check_template(options.template, options.template_pair)
    if options.template not in (AUTO, "none"):
        single, pair = PRESETS.get(options.template, (options.template, options.template_pair))
        missing = [token for token in special_tokens_of(single, pair) if token not in tokens]
        if missing:
            raise ValueError(f"template {options.template!r} adds {', '.join(missing)}; list them in special_tokens "
                             "or choose another template")


def _check_at_least(name: str, value: int, minimum: int, why: str = "") -> None:
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}{f' ({why})' if why else ''}, got {value}")


@dataclass(frozen=True)
class ByteLevelBPEOptions:
    vocab_size: int = field(default=8192, metadata=_help("tokens in all: 256 bytes, specials and merges"))
    min_frequency: int = field(default=2, metadata=_help("fewest occurrences for a pair to be merged"))
    lowercase: bool = field(default=False, metadata=_help("lowercase text before tokenizing"))
    special_tokens: tuple[str, ...] = field(default=("<|endoftext|>",),
                                            metadata=_help("added first, at ids 0, 1, ..."))
    template: str = field(default="auto", metadata=_help(TEMPLATE_HELP + "; auto: roberta when <s> and </s> "
                                                                         "are special tokens"))
    template_pair: str = field(default="", metadata=_help(TEMPLATE_PAIR_HELP))

    def __post_init__(self):
        _check_special_tokens(self, unknown_token=None)
        _check_at_least("vocab_size", self.vocab_size, 256 + len(self.special_tokens) + 1,
                        f"256 bytes + {len(self.special_tokens)} special + 1 merge")
        _check_at_least("min_frequency", self.min_frequency, 1)


@dataclass(frozen=True)
class WordBPEOptions:
    vocab_size: int = field(default=8192, metadata=_help("tokens in all: specials, characters and merges"))
    min_frequency: int = field(default=2, metadata=_help("fewest occurrences for a pair to be merged"))
    lowercase: bool = field(default=True, metadata=_help("lowercase text before tokenizing (GPT did)"))
    special_tokens: tuple[str, ...] = field(
        default=("<unk>", "<|endoftext|>", "_start_", "_delimiter_", "_classify_"),
        metadata=_help("added first, at ids 0, 1, ...; GPT's fine-tuning markers are among them"))
    template: str = field(default="auto", metadata=_help(TEMPLATE_HELP + "; auto: none"))
    template_pair: str = field(default="", metadata=_help(TEMPLATE_PAIR_HELP))

    def __post_init__(self):
        _check_special_tokens(self, unknown_token="<unk>")
        _check_at_least("vocab_size", self.vocab_size, len(self.special_tokens) + 1,
                        f"{len(self.special_tokens)} special + 1 more")
        _check_at_least("min_frequency", self.min_frequency, 1)


@dataclass(frozen=True)
class WordPieceOptions:
    vocab_size: int = field(default=8192, metadata=_help("tokens in all: specials, characters and pieces"))
    min_frequency: int = field(default=2, metadata=_help("fewest occurrences for a pair to be merged"))
    lowercase: bool = field(default=True, metadata=_help("lowercase and strip accents (bert-base-uncased)"))
    special_tokens: tuple[str, ...] = field(default=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
                                            metadata=_help("added first, at ids 0, 1, ..."))
    template: str = field(default="auto", metadata=_help(TEMPLATE_HELP + "; auto: bert when [CLS] and [SEP] "
                                                                         "are special tokens"))
    template_pair: str = field(default="", metadata=_help(TEMPLATE_PAIR_HELP))

    def __post_init__(self):
        _check_special_tokens(self, unknown_token="[UNK]")
        _check_at_least("vocab_size", self.vocab_size, len(self.special_tokens) + 1,
                        f"{len(self.special_tokens)} special + 1 more")
        _check_at_least("min_frequency", self.min_frequency, 1)


@dataclass(frozen=True)
class UnigramOptions:
    vocab_size: int = field(default=8192, metadata=_help("tokens in all: specials and pieces"))
    lowercase: bool = field(default=False, metadata=_help("lowercase text before tokenizing (ALBERT does)"))
    special_tokens: tuple[str, ...] = field(default=("<pad>", "</s>", "<unk>"),
                                            metadata=_help("added first, at ids 0, 1, ... (T5's order)"))
    template: str = field(default="auto", metadata=_help(TEMPLATE_HELP + "; auto: bert when [CLS] and [SEP] "
                                                                         "are special tokens (ALBERT)"))
    template_pair: str = field(default="", metadata=_help(TEMPLATE_PAIR_HELP))

    def __post_init__(self):
        _check_special_tokens(self, unknown_token="<unk>")
        _check_at_least("vocab_size", self.vocab_size, len(self.special_tokens) + 1,
                        f"{len(self.special_tokens)} special + 1 more")


@dataclass(frozen=True)
class CharacterOptions:
    vocab_size: int = field(default=1024, metadata=_help(
        "special tokens plus the most frequent characters, up to this many tokens in all"))
    min_frequency: int = field(default=1, metadata=_help("fewest occurrences for a character to be kept"))
    special_tokens: tuple[str, ...] = field(default=("<pad>", "<unk>", "<|endoftext|>"),
                                            metadata=_help("added first, at ids 0, 1, ..."))
    template: str = field(default="auto", metadata=_help(TEMPLATE_HELP + "; auto: none"))
    template_pair: str = field(default="", metadata=_help(TEMPLATE_PAIR_HELP))

    def __post_init__(self):
        _check_special_tokens(self, unknown_token="<unk>")
        _check_at_least("vocab_size", self.vocab_size, len(self.special_tokens) + 1)
        _check_at_least("min_frequency", self.min_frequency, 1)


@dataclass(frozen=True)
class WordOptions:
    vocab_size: int = field(default=32768, metadata=_help(
        "special tokens plus the most frequent whole words, up to this many tokens in all"))
    min_frequency: int = field(default=1, metadata=_help("fewest occurrences for a word to be kept"))
    lowercase: bool = field(default=False, metadata=_help("lowercase text before splitting it into words"))
    special_tokens: tuple[str, ...] = field(default=("<pad>", "<unk>", "<s>", "</s>"),
                                            metadata=_help("added first, at ids 0, 1, ..."))
    template: str = field(default="auto", metadata=_help(TEMPLATE_HELP + "; auto: roberta (<s> $A </s>, "
                                                                         "bilm-tf's sentence boundaries) when "
                                                                         "<s> and </s> are special tokens"))
    template_pair: str = field(default="", metadata=_help(TEMPLATE_PAIR_HELP))

    def __post_init__(self):
        _check_special_tokens(self, unknown_token="<unk>")
        _check_at_least("vocab_size", self.vocab_size, len(self.special_tokens) + 1)
        _check_at_least("min_frequency", self.min_frequency, 1)
