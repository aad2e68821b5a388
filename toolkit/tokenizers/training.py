"""Training the five tokenizer kinds, each set up the way the model family that made it famous did.

The kinds are registered as `tokenizer` components by lmkit.builtins; `train_tokenizer` looks a
kind up in that registry (lmkit.registry), the one list of kinds, which plugins extend.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import ClassVar

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from ..errors import DataError, SpecError
from .options import (
    ByteLevelBPEOptions,
    CharacterOptions,
    UnigramOptions,
    WordBPEOptions,
    WordOptions,
    WordPieceOptions,
)
from .templates import apply_template
from .wrapper import Tokenizer, infer_roles

# Characters are split out one by one, newlines included; a plain "." would skip "\n".
EACH_CHARACTER = r"[\s\S]"

TEXTS_PER_BATCH = 64  # documents or file segments handed to the trainer at a time


def _training_texts(paths, text_field: str) -> tuple[list, int]:
    """The data files and how many pieces of text they hold, after one checking read of them all.

    The same reader as training data (lmkit.data): text files, directories, .jsonl records, with
    the same one-line errors for text that is not UTF-8, missing fields and empty data.
    """
    from ..data import find_data_files, read_texts

    files = find_data_files(paths)
    pieces = sum(1 for _ in read_texts(files, text_field))
    if not pieces:
        which = f"{files[0].path} has" if len(files) == 1 else f"all {len(files)} files have"
        raise DataError(f"the training text is empty ({which} only whitespace); give files that contain text")
    return files, pieces


def _batches(files: list, text_field: str) -> Iterator[list[str]]:
    from ..data import read_texts

    batch = []
    for text, _ in read_texts(files, text_field):
        batch.append(text)
        if len(batch) == TEXTS_PER_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


class _TokenizerKind:
    """A tokenizer kind: how to set up a blank tokenizer and its trainer, and which template is its own."""

    name: ClassVar[str]
    options_class: ClassVar[type]
    family_template: ClassVar[str] = "none"  # what the `auto` template means for this kind

    @classmethod
    def _blank(cls, options, progress: bool) -> tuple[HFTokenizer, trainers.Trainer]:
        raise NotImplementedError

    @classmethod
    def train(cls, files: list[str], options=None, progress: bool = True, text_field: str = "text") -> Tokenizer:
        """Train on text or .jsonl files (or directories of them); the options default to the family's.

        Raises DataError for empty or unreadable text, SpecError for a vocab_size too small for the
        text's characters, TypeError for another kind's options.
        """
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
        hf_tokenizer = fixed_order(hf_tokenizer)
        # BPE and WordPiece keep every character however small the vocabulary asked for.
        if hf_tokenizer.get_vocab_size() > trainer.vocab_size:
            raise SpecError(f"vocab_size={trainer.vocab_size} is too small for this training text: its "
                            f"characters alone need {hf_tokenizer.get_vocab_size()} tokens; raise vocab_size")
        # The template names special tokens by id, known only once trained.
        apply_template(hf_tokenizer, options.template, options.template_pair, cls.family_template)
        return Tokenizer(hf_tokenizer, cls.name, infer_roles(hf_tokenizer, cls.name))


SCORE_DIGITS = 9  # Unigram scores are rounded to this: parallel sums differ from run to run by up to 1e-10
PENALTY_STEP = 1e-4  # what tokenizers' Unigram trainer adds per required character missing from its model


def fixed_order(hf_tokenizer: HFTokenizer) -> HFTokenizer:
    """The trained tokenizer with its ids in an order that depends only on the training text and options.

    tokenizers' trainers number some tokens as a hash map happens to iterate, so the same text gives "w"
    id 17 in one process and "b" the next: a BPE's alphabet, a WordPiece's tokens of equal count, the
    Unigram pieces of equal score and the characters its trainer adds last (each PENALTY_STEP above the
    least score, in set order, where SentencePiece's trainer adds them in a fixed order). Here
    the alphabet comes sorted, then a BPE's merges in the order they were learnt; a Unigram's pieces by
    score, ties by text, with the added characters' scores dealt out in the order of their text and every
    score rounded to SCORE_DIGITS decimals. Special tokens keep their ids. The pieces and merges are unchanged,
    and so is how any text is split, but for splits whose scores tie to 1e-9.

    What stays up to the trainer: a BPE or WordPiece trainer breaks ties between pairs of equal count by
    those hash-ordered ids, so on a small text two runs can learn different merges (tokenizers issue
    #1794).
    """
    state = json.loads(hf_tokenizer.to_str())
    model = state["model"]
    special = {token["content"] for token in state["added_tokens"]}
    if model["type"] == "BPE":
        learnt = {"".join(pair) if isinstance(pair, list) else pair.replace(" ", "", 1): i
                  for i, pair in reversed(list(enumerate(model["merges"])))}
        model["vocab"] = _renumber(model["vocab"], special, key=lambda token: (learnt.get(token, -1), token))
    elif model["type"] == "WordPiece":
        model["vocab"] = _renumber(model["vocab"], special, key=lambda token: (len(token.removeprefix("##")) > 1, token))
    elif model["type"] == "Unigram":
        pieces = [piece for piece in model["vocab"] if piece[0] not in special]
        _deal_penalties(pieces)
        for piece in pieces:  # the same file from the same text: parallel sums differ in the last digits
            piece[1] = round(piece[1], SCORE_DIGITS)
        pieces.sort(key=lambda piece: (-piece[1], piece[0]))
        dealt = iter(pieces)
        model["vocab"] = [piece if piece[0] in special else next(dealt) for piece in model["vocab"]]
    return HFTokenizer.from_str(json.dumps(state))


def _renumber(vocab: dict[str, int], special: set[str], key) -> dict[str, int]:
    """`vocab` with the ids that are not special tokens' given out again in the order of `key`."""
    free = sorted(i for token, i in vocab.items() if token not in special)
    ordered = sorted((token for token in vocab if token not in special), key=key)
    renumbered = {token: i for token, i in vocab.items() if token in special}
    renumbered.update(zip(ordered, free))
    return renumbered


def _deal_penalties(pieces: list[list]) -> None:
    """Give the scores of the characters the Unigram trainer added after training (the least score plus
    0, 1, 2... PENALTY_STEP, in its set's order) to those characters in the order of their text."""
    least = min(score for _, score in pieces)
    at_step: dict[int, list[int]] = {}
    for i, (piece, score) in enumerate(pieces):
        step = (score - least) / PENALTY_STEP
        if len(piece) == 1 and abs(step - round(step)) < 1e-6:
            at_step.setdefault(round(step), []).append(i)
    added, step = [], 0
    while step in at_step:  # the run 0, 1, 2... steps above the least score; a later step is a coincidence
        added += at_step[step]
        step += 1
    scores = sorted(pieces[i][1] for i in added)
    for i, score in zip(sorted(added, key=lambda i: pieces[i][0]), scores):
        pieces[i][1] = score


class ByteLevelBPE(_TokenizerKind):
    """GPT-2 / RoBERTa: BPE over bytes, so any text encodes without unknown tokens."""

    name = "bytelevel-bpe"
    options_class = ByteLevelBPEOptions
    family_template = "roberta"  # when <s> and </s> are special tokens; GPT-2's has neither

    @classmethod
    def _blank(cls, options: ByteLevelBPEOptions, progress: bool):
        hf_tokenizer = HFTokenizer(models.BPE())
        if options.lowercase:
            hf_tokenizer.normalizer = normalizers.Lowercase()
        set_byte_level_parts(hf_tokenizer)
        trainer = trainers.BpeTrainer(
            vocab_size=options.vocab_size, min_frequency=options.min_frequency,
            special_tokens=list(options.special_tokens), show_progress=progress,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        return hf_tokenizer, trainer


class WordBPE(_TokenizerKind):
    """GPT: BPE inside words, whose last piece ends in `</w>`; decoding turns that back into a space."""

    name = "bpe"
    options_class = WordBPEOptions

    @classmethod
    def _blank(cls, options: WordBPEOptions, progress: bool):
        # Set up as transformers sets up OpenAIGPTTokenizerFast.
        hf_tokenizer = HFTokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
        set_word_bpe_parts(hf_tokenizer, options.lowercase)
        # The trainer builds the model anew, so it needs the suffix too.
        trainer = trainers.BpeTrainer(
            vocab_size=options.vocab_size, min_frequency=options.min_frequency,
            special_tokens=list(options.special_tokens), show_progress=progress, end_of_word_suffix="</w>")
        return hf_tokenizer, trainer


class WordPiece(_TokenizerKind):
    """BERT: WordPiece with `##` continuations; `encode(..., add_special_tokens=True)` adds [CLS]/[SEP]."""

    name = "wordpiece"
    options_class = WordPieceOptions
    family_template = "bert"

    @classmethod
    def _blank(cls, options: WordPieceOptions, progress: bool):
        hf_tokenizer = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
        set_bert_parts(hf_tokenizer, lowercase=options.lowercase)
        trainer = trainers.WordPieceTrainer(
            vocab_size=options.vocab_size, min_frequency=options.min_frequency,
            special_tokens=list(options.special_tokens), show_progress=progress)
        return hf_tokenizer, trainer


class Unigram(_TokenizerKind):
    """T5 / ALBERT: a SentencePiece-style Unigram LM; spaces become `▁` and belong to the next piece."""

    name = "unigram"
    options_class = UnigramOptions
    family_template = "bert"  # ALBERT: [CLS] A [SEP], when the specials include them; T5: template=t5

    @classmethod
    def _blank(cls, options: UnigramOptions, progress: bool):
        hf_tokenizer = HFTokenizer(models.Unigram())
        # SentencePiece's nmt_nfkc with remove_extra_whitespaces: any run of whitespace (newlines, tabs) is one
        # space and the ends are stripped, so no piece spans a line break (a .txt file is read as one text).
        steps = [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
        hf_tokenizer.normalizer = normalizers.Sequence(steps + ([normalizers.Lowercase()] if options.lowercase else []))
        hf_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        hf_tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=options.vocab_size, special_tokens=list(options.special_tokens),
            unk_token="<unk>", show_progress=progress)
        return hf_tokenizer, trainer

    @classmethod
    def train(cls, files: list[str], options=None, progress: bool = True, text_field: str = "text") -> Tokenizer:
        tokenizer = super().train(files, options, progress, text_field)
        count = (options or cls.options_class()).sentinels
        if count:  # T5's sentinels count down from the end of the vocabulary: <extra_id_0> is the last id
            tokenizer.hf_tokenizer.add_special_tokens([f"<extra_id_{i}>" for i in range(count - 1, -1, -1)])
        return tokenizer


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


class Word(_TokenizerKind):
    """Whole words split at whitespace, the most frequent kept and the rest <unk>: the output vocabulary of
    word-level language models (ELMo's softmax, Peters et al. 2018 §3; bilm-tf's vocabulary file)."""

    name = "word"
    options_class = WordOptions
    family_template = "roberta"  # <s> $A </s>: bilm-tf reads every sentence between <S> and </S>

    @classmethod
    def _blank(cls, options: WordOptions, progress: bool):
        hf_tokenizer = HFTokenizer(models.WordLevel(unk_token="<unk>"))
        if options.lowercase:
            hf_tokenizer.normalizer = normalizers.Lowercase()
        hf_tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # No decoder: tokenizers then joins the words with single spaces.
        trainer = trainers.WordLevelTrainer(
            vocab_size=options.vocab_size, min_frequency=options.min_frequency,
            special_tokens=list(options.special_tokens), show_progress=progress)
        return hf_tokenizer, trainer


def train_tokenizer(kind: str, files: list[str], options=None, progress: bool = True,
                    text_field: str = "text") -> Tokenizer:
    """Train a tokenizer of a registered kind ('bytelevel-bpe', 'bpe', 'wordpiece', 'unigram', 'char', or a
    plugin's); SpecError names the kinds there are when `kind` is not one."""
    from ..registry import get_host

    return get_host().component("tokenizer", kind).load().train(files, options, progress, text_field)


def set_byte_level_parts(hf_tokenizer: HFTokenizer, add_prefix_space: bool = False) -> None:
    """GPT-2's byte-level pre-tokenizer and decoder (add_prefix_space: read "fox" as " fox", RoBERTa's flag)."""
    hf_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    hf_tokenizer.decoder = decoders.ByteLevel()
    # As GPT-2's tokenizer.json has it: offsets then cover the spaces inside tokens (lmkit.tasks.qa
    # trims them where offsets become answer text).
    hf_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)


def set_word_bpe_parts(hf_tokenizer: HFTokenizer, lowercase: bool) -> None:
    """GPT's parts, as transformers' OpenAIGPTTokenizerFast has them: BERT's normalizer and splitting, `</w>`."""
    hf_tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    hf_tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf_tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")


def set_bert_parts(hf_tokenizer: HFTokenizer, lowercase: bool, strip_accents: bool | None = None,
                   handle_chinese_chars: bool = True, clean_text: bool = True) -> None:
    """BERT's normalizer (strip_accents None: with lowercase, as BertTokenizer does), pre-tokenizer, decoder."""
    hf_tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=clean_text, handle_chinese_chars=handle_chinese_chars, strip_accents=strip_accents,
        lowercase=lowercase)
    hf_tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf_tokenizer.decoder = decoders.WordPiece()
