"""Training, saving and loading tokenizers, on top of Hugging Face `tokenizers`.

Six kinds, each set up the way the model family that made it famous did (lmkit.tokenizers.training):

    bytelevel-bpe  GPT-2 / RoBERTa   byte-level BPE over all 256 bytes: no unknown tokens
    bpe            GPT               BPE with `</w>` end-of-word markers, lowercased text
    wordpiece      BERT              WordPiece with `##` continuations, [CLS] ... [SEP] templates
    unigram        T5 / ALBERT       SentencePiece-style Unigram LM with `▁` for spaces
    char           (char-level LMs)  one token per character
    word           ELMo              whole words split at whitespace, the rest <unk>

What each adds around a text or a pair is an option of the kind, `template` (.templates); the
options are .options; the kinds are registered as `tokenizer` components by lmkit.builtins.

A trained tokenizer is a directory with `tokenizer.json` (exactly what `tokenizers` writes, so
any Hugging Face reader opens it) and `tokenizer_config.json`, which records the lmkit kind and
which special token plays which role (bos, eos, pad, unk, cls, sep, mask). `load_tokenizer`
(.loading) also opens tokenizers made elsewhere: a bare tokenizer.json, a GPT-2 style vocab.json +
merges.txt, or a BERT vocab.txt, with their tokenizer_config.json. Nothing here imports torch, and
nothing reads or writes pickles.
"""
from __future__ import annotations

from .loading import load_tokenizer
from .options import (
    ByteLevelBPEOptions,
    CharacterOptions,
    UnigramOptions,
    WordBPEOptions,
    WordOptions,
    WordPieceOptions,
)
from .training import ByteLevelBPE, Character, Unigram, Word, WordBPE, WordPiece, train_tokenizer
from .wrapper import ROLES, TOKENIZER_CONFIG, Tokenizer, infer_roles

__all__ = [
    "ByteLevelBPE", "ByteLevelBPEOptions", "Character", "CharacterOptions", "ROLES", "TOKENIZER_CONFIG",
    "Tokenizer", "Unigram", "UnigramOptions", "Word", "WordBPE", "WordBPEOptions", "WordOptions", "WordPiece",
    "WordPieceOptions",
    "infer_roles", "load_tokenizer", "train_tokenizer",
]
