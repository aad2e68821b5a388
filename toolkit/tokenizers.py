"""Training, saving and loading tokenizers, on top of Hugging Face `tokenizers`.

Five kinds, each set up the way the model family that made it famous did:

    bytelevel-bpe  GPT-2 / RoBERTa   byte-level BPE over all 256 bytes: no unknown tokens
    bpe            GPT               BPE with `</w>` end-of-word markers, lowercased text
    wordpiece      BERT              WordPiece with `##` continuations, [CLS] ... [SEP] templates
    unigram        T5 / ALBERT       SentencePiece-style Unigram LM with `▁` for spaces
    char           (char-level LMs)  one token per character

A trained tokenizer is a directory with `tokenizer.json` (exactly what `tokenizers` writes, so
any Hugging Face reader opens it) and `tokenizer_config.json`, which records the lmkit kind and
which special token plays which role (bos, eos, pad, unk, cls, sep, mask). `load_tokenizer` also
opens tokenizers made elsewhere: a bare tokenizer.json, a GPT-2 style vocab.json + merges.txt,
or a BERT vocab.txt. Nothing here imports torch, and nothing reads or writes pickles.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from .artifacts import TOKENIZER, atomic_write, atomic_write_json
from .errors import ArtifactError, DataError, SpecError, did_you_mean, one_of

TOKENIZER_CONFIG = "tokenizer_config.json"
ROLES = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")

# The special-token names of the families lmkit covers, by the role each plays; when a tokenizer
# does not say which token plays which role, the first of these that it has gets the role.
KNOWN_ROLE_TOKENS = {
    "bos": ("<s>",),
    "eos": ("</s>", "<|endoftext|>"),
    "pad": ("<pad>", "[PAD]"),
    "unk": ("<unk>", "[UNK]"),
    "cls": ("[CLS]",),
    "sep": ("[SEP]",),
    "mask": ("<mask>", "[MASK]"),
}

# Characters are split out one by one, newlines included; a plain "." would skip "\n".
EACH_CHARACTER = r"[\s\S]"

TEXTS_PER_BATCH = 64  # documents or file segments handed to the trainer at a time


# --- options ---------------------------------------------------------------------------------

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

    def __post_init__(self):
        _check_special_tokens(self, unknown_token="<unk>")
        _check_at_least("vocab_size", self.vocab_size, len(self.special_tokens) + 1)
        _check_at_least("min_frequency", self.min_frequency, 1)


# --- the tokenizer -------------------------------------------------------------------------

class Tokenizer:
    """A Hugging Face `tokenizers.Tokenizer`, with its lmkit kind and its special tokens' roles."""

    def __init__(self, hf_tokenizer: HFTokenizer, kind: str, special_tokens: dict[str, str]):
        for role, token in special_tokens.items():
            if role not in ROLES:
                raise ValueError(f"unknown special-token role '{role}'{did_you_mean(role, ROLES)}; "
                                 f"roles: {', '.join(ROLES)}")
            if not isinstance(token, str) or hf_tokenizer.token_to_id(token) is None:
                raise ValueError(f"the {role} token {token!r} is not in the vocabulary")
        self.hf_tokenizer = hf_tokenizer
        self.kind = kind
        self._special_tokens = {role: special_tokens[role] for role in ROLES if role in special_tokens}

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.hf_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Iterable[str], add_special_tokens: bool = False) -> list[list[int]]:
        encodings = self.hf_tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        # `tokenizers` skips special tokens unless told otherwise; lmkit shows them unless told.
        return self.hf_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.hf_tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.hf_tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.hf_tokenizer.id_to_token(token_id)

    @property
    def special_tokens(self) -> dict[str, str]:
        """role -> token string, for the roles this tokenizer has."""
        return dict(self._special_tokens)

    def _role_id(self, role: str) -> int | None:
        token = self._special_tokens.get(role)
        return None if token is None else self.hf_tokenizer.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._role_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self._role_id("eos")

    @property
    def pad_id(self) -> int | None:
        return self._role_id("pad")

    @property
    def unk_id(self) -> int | None:
        return self._role_id("unk")

    @property
    def cls_id(self) -> int | None:
        return self._role_id("cls")

    @property
    def sep_id(self) -> int | None:
        return self._role_id("sep")

    @property
    def mask_id(self) -> int | None:
        return self._role_id("mask")

    def to_config(self) -> dict:
        """What a model spec records about its tokenizer."""
        return {"type": self.kind, "vocab_size": self.vocab_size, "special_tokens": self.special_tokens}

    def save(self, directory: str) -> None:
        """Write tokenizer.json and tokenizer_config.json into `directory`, each atomically."""
        directory = os.fspath(directory)
        if os.path.isfile(directory):
            raise ArtifactError(f"{directory} is a file; give a directory to save the tokenizer in")
        os.makedirs(directory, exist_ok=True)
        with atomic_write(os.path.join(directory, TOKENIZER)) as out:
            out.write(self.hf_tokenizer.to_str(pretty=True))
        # The lmkit keys come first; the `*_token` keys and `tokenizer_class` are what Hugging Face
        # readers (AutoTokenizer) look for, so they open the directory too.
        config = {"lmkit_type": self.kind, "special_tokens": self.special_tokens,
                  "tokenizer_class": "PreTrainedTokenizerFast"}
        config.update({f"{role}_token": token for role, token in self._special_tokens.items()})
        atomic_write_json(os.path.join(directory, TOKENIZER_CONFIG), config)


def infer_roles(hf_tokenizer: HFTokenizer, kind: str) -> dict[str, str]:
    """role -> token for the special tokens whose names say what they are for."""
    # Only tokens registered as special count: a learned merge can spell "</s>" in HTML-heavy text.
    special = {token.content for token in hf_tokenizer.get_added_tokens_decoder().values() if token.special}
    roles = {}
    for role, names in KNOWN_ROLE_TOKENS.items():
        found = next((name for name in names if name in special), None)
        if found is not None:
            roles[role] = found
    if "cls" not in roles and roles.get("bos") == "<s>" and roles.get("eos") == "</s>":
        roles["cls"], roles["sep"] = "<s>", "</s>"  # RoBERTa and BART: <s> A </s></s> B </s>
    if kind == "bytelevel-bpe" and roles.get("eos") == "<|endoftext|>":
        # GPT-2 has this one special token: it starts, ends and pads every sequence.
        roles.setdefault("bos", "<|endoftext|>")
        roles.setdefault("pad", "<|endoftext|>")
    return roles


# --- training ------------------------------------------------------------------------------

def _training_texts(paths, text_field: str) -> tuple[list, int]:
    """The data files and how many pieces of text they hold, after one checking read of them all.

    The same reader as training data (lmkit.data): text files, directories, .jsonl records, with
    the same one-line errors for text that is not UTF-8, missing fields and empty data.
    """
    from .data import find_data_files, read_texts

    files = find_data_files(paths)
    pieces = sum(1 for _ in read_texts(files, text_field))
    if not pieces:
        which = f"{files[0].path} has" if len(files) == 1 else f"all {len(files)} files have"
        raise DataError(f"the training text is empty ({which} only whitespace); give files that contain text")
    return files, pieces


def _batches(files: list, text_field: str) -> Iterator[list[str]]:
    from .data import read_texts

    batch = []
    for text, _ in read_texts(files, text_field):
        batch.append(text)
        if len(batch) == TEXTS_PER_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


class _TokenizerKind:
    """A registered tokenizer kind: how to set up a blank tokenizer and its trainer."""

    name: ClassVar[str]
    options_class: ClassVar[type]

    @classmethod
    def _blank(cls, options, progress: bool) -> tuple[HFTokenizer, trainers.Trainer]:
        raise NotImplementedError

    @classmethod
    def _after_training(cls, hf_tokenizer: HFTokenizer) -> None:
        """Parts that need the trained ids, such as templates naming [CLS] and [SEP]."""

    @classmethod
    def train(cls, files: list[str], options=None, progress: bool = True, text_field: str = "text") -> Tokenizer:
        """Train on text or .jsonl files (or directories of them); the options default to the family's."""
        if options is None:
            options = cls.options_class()
        if not isinstance(options, cls.options_class):
            raise TypeError(f"{cls.name} tokenizers take {cls.options_class.__name__}, "
                            f"not {type(options).__name__}")
        data_files, pieces = _training_texts(files, text_field)
        # The trainer's bars go to stderr, but it ends each with a blank line on stdout, which would
        # corrupt output piped from there: it draws them only when both are terminals.
        hf_tokenizer, trainer = cls._blank(options, progress and sys.stdout.isatty() and sys.stderr.isatty())
        try:
            hf_tokenizer.train_from_iterator(_batches(data_files, text_field), trainer, length=pieces)
        except Exception as error:
            # The Unigram trainer refuses a vocabulary smaller than the text's alphabet; the message
            # is the only way to tell this error from others.
            if "not large enough to contain all chars" not in str(error):
                raise
            raise SpecError(f"vocab_size={trainer.vocab_size} is too small for this training text: it "
                            "cannot hold every character; raise vocab_size") from None
        # BPE and WordPiece keep every character however small the vocabulary asked for.
        if hf_tokenizer.get_vocab_size() > trainer.vocab_size:
            raise SpecError(f"vocab_size={trainer.vocab_size} is too small for this training text: its "
                            f"characters alone need {hf_tokenizer.get_vocab_size()} tokens; raise vocab_size")
        cls._after_training(hf_tokenizer)
        return Tokenizer(hf_tokenizer, cls.name, infer_roles(hf_tokenizer, cls.name))


class ByteLevelBPE(_TokenizerKind):
    """GPT-2 / RoBERTa: BPE over bytes, so any text encodes without unknown tokens."""

    name = "bytelevel-bpe"
    options_class = ByteLevelBPEOptions

    @classmethod
    def _blank(cls, options: ByteLevelBPEOptions, progress: bool):
        hf_tokenizer = HFTokenizer(models.BPE())
        if options.lowercase:
            hf_tokenizer.normalizer = normalizers.Lowercase()
        _set_byte_level_parts(hf_tokenizer)
        trainer = trainers.BpeTrainer(
            vocab_size=options.vocab_size, min_frequency=options.min_frequency,
            special_tokens=list(options.special_tokens), show_progress=progress,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        return hf_tokenizer, trainer

    @classmethod
    def _after_training(cls, hf_tokenizer: HFTokenizer) -> None:
        _set_roberta_template(hf_tokenizer)


class WordBPE(_TokenizerKind):
    """GPT: BPE inside words, whose last piece ends in `</w>`; decoding turns that back into a space."""

    name = "bpe"
    options_class = WordBPEOptions

    @classmethod
    def _blank(cls, options: WordBPEOptions, progress: bool):
        # Set up as transformers sets up OpenAIGPTTokenizerFast.
        hf_tokenizer = HFTokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
        _set_word_bpe_parts(hf_tokenizer, options.lowercase)
        # The trainer builds the model anew, so it needs the suffix too.
        trainer = trainers.BpeTrainer(
            vocab_size=options.vocab_size, min_frequency=options.min_frequency,
            special_tokens=list(options.special_tokens), show_progress=progress, end_of_word_suffix="</w>")
        return hf_tokenizer, trainer


class WordPiece(_TokenizerKind):
    """BERT: WordPiece with `##` continuations; `encode(..., add_special_tokens=True)` adds [CLS]/[SEP]."""

    name = "wordpiece"
    options_class = WordPieceOptions

    @classmethod
    def _blank(cls, options: WordPieceOptions, progress: bool):
        hf_tokenizer = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
        _set_bert_parts(hf_tokenizer, lowercase=options.lowercase)
        trainer = trainers.WordPieceTrainer(
            vocab_size=options.vocab_size, min_frequency=options.min_frequency,
            special_tokens=list(options.special_tokens), show_progress=progress)
        return hf_tokenizer, trainer

    @classmethod
    def _after_training(cls, hf_tokenizer: HFTokenizer) -> None:
        _set_bert_template(hf_tokenizer)


class Unigram(_TokenizerKind):
    """T5 / ALBERT: a SentencePiece-style Unigram LM; spaces become `▁` and belong to the next piece."""

    name = "unigram"
    options_class = UnigramOptions

    @classmethod
    def _blank(cls, options: UnigramOptions, progress: bool):
        hf_tokenizer = HFTokenizer(models.Unigram())
        steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if options.lowercase else [])
        hf_tokenizer.normalizer = normalizers.Sequence(steps)
        hf_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        hf_tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=options.vocab_size, special_tokens=list(options.special_tokens),
            unk_token="<unk>", show_progress=progress)
        return hf_tokenizer, trainer

    @classmethod
    def _after_training(cls, hf_tokenizer: HFTokenizer) -> None:
        _set_bert_template(hf_tokenizer)  # ALBERT: [CLS] A [SEP], when the specials include them


class Character(_TokenizerKind):
    """One token per character (whitespace and newlines included); rarer characters become <unk>."""

    name = "char"
    options_class = CharacterOptions

    @classmethod
    def _blank(cls, options: CharacterOptions, progress: bool):
        # A word-level model over single characters: its trainer keeps the most frequent ones.
        hf_tokenizer = HFTokenizer(models.WordLevel(unk_token="<unk>"))
        hf_tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(EACH_CHARACTER), behavior="isolated")
        hf_tokenizer.decoder = decoders.Fuse()  # without a decoder, tokens are joined with spaces
        trainer = trainers.WordLevelTrainer(
            vocab_size=options.vocab_size, min_frequency=options.min_frequency,
            special_tokens=list(options.special_tokens), show_progress=progress)
        return hf_tokenizer, trainer


TOKENIZER_KINDS = {kind.name: kind for kind in (ByteLevelBPE, WordBPE, WordPiece, Unigram, Character)}


def train_tokenizer(kind: str, files: list[str], options=None, progress: bool = True,
                    text_field: str = "text") -> Tokenizer:
    """Train a tokenizer of the named kind ('bytelevel-bpe', 'bpe', 'wordpiece', 'unigram', 'char')."""
    if kind not in TOKENIZER_KINDS:
        raise SpecError(f"unknown tokenizer kind '{kind}'{did_you_mean(kind, TOKENIZER_KINDS)}; "
                        f"one of: {one_of(TOKENIZER_KINDS)}")
    return TOKENIZER_KINDS[kind].train(files, options, progress, text_field)


def _set_byte_level_parts(hf_tokenizer: HFTokenizer) -> None:
    hf_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tokenizer.decoder = decoders.ByteLevel()
    # As GPT-2's tokenizer.json has it: offsets then cover the spaces inside tokens.
    hf_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)


def _set_word_bpe_parts(hf_tokenizer: HFTokenizer, lowercase: bool) -> None:
    hf_tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    hf_tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf_tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")


def _set_bert_parts(hf_tokenizer: HFTokenizer, lowercase: bool) -> None:
    hf_tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    hf_tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf_tokenizer.decoder = decoders.WordPiece()


def _set_bert_template(hf_tokenizer: HFTokenizer) -> None:
    cls_id, sep_id = hf_tokenizer.token_to_id("[CLS]"), hf_tokenizer.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        return
    hf_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])


def _set_roberta_template(hf_tokenizer: HFTokenizer) -> None:
    """RoBERTa's `<s> A </s>` and `<s> A </s></s> B </s>`, for a byte-level BPE with <s> and </s>."""
    cls_id, sep_id = hf_tokenizer.token_to_id("<s>"), hf_tokenizer.token_to_id("</s>")
    if cls_id is None or sep_id is None:
        return
    hf_tokenizer.post_processor = processors.RobertaProcessing(("</s>", sep_id), ("<s>", cls_id),
                                                               trim_offsets=False, add_prefix_space=False)


# --- loading -------------------------------------------------------------------------------

def load_tokenizer(path: str) -> Tokenizer:
    """Open a tokenizer directory (ours or Hugging Face's) or a tokenizer.json file.

    A directory may hold tokenizer.json, a GPT-2 style vocab.json + merges.txt, or a BERT vocab.txt,
    looked for in that order, with an optional tokenizer_config.json beside them.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ArtifactError(f"{path} does not exist; give a tokenizer directory or a tokenizer.json file "
                            "(make one with lmkit tokenizer train)")
    if os.path.isfile(path):
        beside = os.path.join(os.path.dirname(path), TOKENIZER_CONFIG)
        # A config beside some other .json file need not describe it; beside tokenizer.json it does.
        config_path = beside if os.path.basename(path) == TOKENIZER and os.path.isfile(beside) else None
        return _load_tokenizer_json(path, config_path)
    config_path = os.path.join(path, TOKENIZER_CONFIG)
    config_path = config_path if os.path.isfile(config_path) else None
    tokenizer_json = os.path.join(path, TOKENIZER)
    vocab_json, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
    vocab_txt = os.path.join(path, "vocab.txt")
    if os.path.isfile(tokenizer_json):
        return _load_tokenizer_json(tokenizer_json, config_path)
    if os.path.isfile(vocab_json) and os.path.isfile(merges):
        return _load_gpt2_files(vocab_json, merges, config_path)
    if os.path.isfile(vocab_txt):
        return _load_bert_vocab(vocab_txt, config_path)
    raise ArtifactError(f"{path} has no tokenizer files (looked for tokenizer.json, vocab.json with "
                        "merges.txt, and vocab.txt); train one with lmkit tokenizer train or point at "
                        "another directory")


def _read_config(config_path: str | None) -> dict:
    if config_path is None:
        return {}
    try:
        with open(config_path, encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{config_path} cannot be read as JSON ({_short(error)}); fix it or delete "
                            "it to use the tokenizer's own settings") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{config_path} is not a JSON object; fix it or delete it to use the "
                            "tokenizer's own settings")
    return config


def _load_tokenizer_json(path: str, config_path: str | None) -> Tokenizer:
    config = _read_config(config_path)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
        description = json.loads(text)
        hf_tokenizer = HFTokenizer.from_str(text)
    except Exception as error:  # `tokenizers` raises plain Exception for a file it cannot parse
        raise ArtifactError(f"{path} is not a valid tokenizer file: {_short(error)}; retrain it with "
                            "lmkit tokenizer train or point at another file") from None
    if "lmkit_type" in config:
        return _with_recorded_roles(hf_tokenizer, config, config_path)
    kind = _infer_kind(hf_tokenizer, description, path)
    return Tokenizer(hf_tokenizer, kind, _roles(hf_tokenizer, kind, config))


def _load_gpt2_files(vocab_json: str, merges: str, config_path: str | None) -> Tokenizer:
    """vocab.json + merges.txt: GPT-2's byte-level BPE, or GPT's BPE when its merges end words in `</w>`."""
    config = _read_config(config_path)
    word_level = _merges_mark_word_ends(merges)
    try:
        if word_level:
            model = models.BPE.from_file(vocab_json, merges, unk_token="<unk>", end_of_word_suffix="</w>")
        else:
            model = models.BPE.from_file(vocab_json, merges)
        hf_tokenizer = HFTokenizer(model)
    except Exception as error:
        raise ArtifactError(f"{vocab_json} and {merges} are not a valid BPE vocabulary: {_short(error)}; "
                            "point at another tokenizer") from None
    if word_level:
        _set_word_bpe_parts(hf_tokenizer, lowercase=config.get("do_lower_case", True))
        kind = "bpe"
    else:
        _set_byte_level_parts(hf_tokenizer)
        kind = "bytelevel-bpe"
    _mark_special(hf_tokenizer, config)
    if not word_level:
        _set_roberta_template(hf_tokenizer)  # RoBERTa's vocab.json has <s> and </s>; GPT-2's has neither
    return Tokenizer(hf_tokenizer, kind, _roles(hf_tokenizer, kind, config))


def _merges_mark_word_ends(merges: str, lines: int = 2000) -> bool:
    """Whether a merges.txt is GPT's (pieces that end a word carry `</w>`) rather than GPT-2's."""
    try:
        with open(merges, encoding="utf-8") as handle:
            return any("</w>" in line for _, line in zip(range(lines), handle))
    except (OSError, UnicodeDecodeError):
        return False  # reported by from_file, with the file's name


def _load_bert_vocab(vocab_txt: str, config_path: str | None) -> Tokenizer:
    config = _read_config(config_path)
    try:
        hf_tokenizer = HFTokenizer(models.WordPiece.from_file(vocab_txt, unk_token="[UNK]"))
    except Exception as error:
        raise ArtifactError(f"{vocab_txt} is not a valid WordPiece vocabulary: {_short(error)}; "
                            "point at another tokenizer") from None
    if hf_tokenizer.token_to_id("[UNK]") is None:
        raise ArtifactError(f"{vocab_txt} has no [UNK] token, which a BERT vocabulary needs; add it as "
                            "a line or point at another tokenizer")
    _set_bert_parts(hf_tokenizer, lowercase=bool(config.get("do_lower_case", True)))
    _mark_special(hf_tokenizer, config)
    _set_bert_template(hf_tokenizer)
    return Tokenizer(hf_tokenizer, "wordpiece", _roles(hf_tokenizer, "wordpiece", config))


def _mark_special(hf_tokenizer: HFTokenizer, config: dict) -> None:
    """Make the vocabulary's special tokens whole tokens, as Hugging Face does when it loads these files."""
    names = {name for names in KNOWN_ROLE_TOKENS.values() for name in names}
    names |= set(_configured_roles(config).values())
    present = [name for name in names if hf_tokenizer.token_to_id(name) is not None]
    hf_tokenizer.add_special_tokens(sorted(present, key=hf_tokenizer.token_to_id))


def _with_recorded_roles(hf_tokenizer: HFTokenizer, config: dict, config_path: str) -> Tokenizer:
    kind, roles = config["lmkit_type"], config.get("special_tokens", {})
    if not isinstance(kind, str) or not kind:
        raise ArtifactError(f"{config_path}: lmkit_type {kind!r} is not a tokenizer kind; fix it or delete "
                            "the file")
    if not isinstance(roles, dict):
        raise ArtifactError(f"{config_path}: special_tokens is not a table of role to token; fix it or "
                            "delete the file")
    try:
        return Tokenizer(hf_tokenizer, kind, roles)
    except ValueError as error:
        raise ArtifactError(f"{config_path}: {error}; fix it or delete the file") from None


def _configured_roles(config: dict) -> dict[str, str]:
    """role -> token from Hugging Face's `bos_token`, `eos_token`, ... keys."""
    roles = {}
    for role in ROLES:
        value = config.get(f"{role}_token")
        if isinstance(value, dict):  # an AddedToken, as transformers writes it
            value = value.get("content")
        if isinstance(value, str) and value:
            roles[role] = value
    return roles


def _roles(hf_tokenizer: HFTokenizer, kind: str, config: dict) -> dict[str, str]:
    """The roles the config names, filled in from the tokens' names."""
    roles = infer_roles(hf_tokenizer, kind)
    # A third-party config may name tokens its vocabulary lacks; those roles stay unset.
    roles.update({role: token for role, token in _configured_roles(config).items()
                  if hf_tokenizer.token_to_id(token) is not None})
    return roles


def _infer_kind(hf_tokenizer: HFTokenizer, description: dict, path: str) -> str:
    model = type(hf_tokenizer.model).__name__
    pre_tokenizer = description.get("pre_tokenizer")
    if model == "BPE":
        return "bytelevel-bpe" if _mentions_type(pre_tokenizer, "ByteLevel") else "bpe"
    if model in ("WordPiece", "Unigram"):
        return model.lower()
    if model == "WordLevel" and isinstance(pre_tokenizer, dict) \
            and pre_tokenizer.get("pattern") == {"Regex": EACH_CHARACTER}:
        return "char"
    raise ArtifactError(f"{path} holds a {model} tokenizer, which matches no lmkit tokenizer kind "
                        f"({one_of(TOKENIZER_KINDS)}); train one with lmkit tokenizer train")


def _mentions_type(node, name: str) -> bool:
    """Whether a serialized component, or one inside it (a Sequence), has type `name`."""
    if isinstance(node, dict):
        return node.get("type") == name or any(_mentions_type(value, name) for value in node.values())
    if isinstance(node, list):
        return any(_mentions_type(value, name) for value in node)
    return False


def _short(error: BaseException) -> str:
    """The first line of an error's message, short enough for a one-line report."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text (invalid byte at offset {error.start})"
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= 160 else text[:157] + "..."


__all__ = [
    "ByteLevelBPE", "ByteLevelBPEOptions", "Character", "CharacterOptions", "ROLES", "TOKENIZER_KINDS",
    "Tokenizer", "Unigram", "UnigramOptions", "WordBPE", "WordBPEOptions", "WordPiece", "WordPieceOptions",
    "infer_roles", "load_tokenizer", "train_tokenizer",
]
