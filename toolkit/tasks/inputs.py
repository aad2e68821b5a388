"""From examples to token ids: the input transformations of fine-tuning.

GPT (Radford et al. 2018, §3.3) fine-tunes a left-to-right decoder on structured inputs by turning
each into token sequences around three learned markers, and reads the final state of the last one:

    classification   start text extract
    entailment       start premise delim hypothesis extract
    similarity       start a delim b extract  and  start b delim a extract (their states added)
    multiple choice  start context delim answer_k extract, one sequence per answer

An encoder (BERT) reads the pair the way it was pre-trained, [CLS] a [SEP] b [SEP] with segment ids,
which its tokenizer's post-processor knows; its features are the pooled [CLS] state. Either way an
example becomes S sequences (1, 2 for similarity, or one per choice) and an extract position each.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .formats import Example, TaskData

# The names GPT's released fine-tuning code gave its markers; lmkit's `bpe` tokenizer has them.
MARKERS = {"start": "_start_", "delim": "_delimiter_", "extract": "_classify_"}


@dataclass
class EncodedExample:
    sequences: list[list[int]]  # S token-id lists
    token_types: list[list[int]]  # segment ids, the same shapes
    extract: list[int]  # the position of each sequence's extract token
    label: int | float
    spellings: list[list[str]] | None = None  # per sequence and token, what it spells (lmkit.token_inputs)


def refuse_reversed(tokenizer, what: str) -> None:
    """DataError when the tokenizer reads right to left (a backward LM's), which `what` cannot honour."""
    if tokenizer.reverse:
        from ..errors import DataError

        raise DataError(f"this model's tokenizer reads text right to left (tokenizer.reverse, a backward language "
                        f"model), which {what} cannot follow; fine-tune a model composed without it")


def add_markers(tokenizer) -> bool:
    """Give the tokenizer GPT's start/delim/extract markers if it lacks them; True if it changed."""
    missing = [token for token in MARKERS.values() if tokenizer.token_to_id(token) is None]
    if missing:
        tokenizer.hf_tokenizer.add_special_tokens(missing)
    return bool(missing)


def sequences_of(example: Example, kind: str) -> list[tuple[str, ...]]:
    """The text segments of each of an example's sequences."""
    if kind == "multiple-choice":  # the texts (a context, or a cloze pattern's fields) then the choice
        texts = tuple(text for text in example.texts if text)
        return [(*texts, choice) for choice in example.choices]
    if kind == "similarity" and len(example.texts) == 2:
        a, b = example.texts
        return [(a, b), (b, a)]
    return [example.texts]


def _truncate(segments: list[list[int]], budget: int) -> int:
    """Shorten the longest segment, one token at a time from its end, until they fit; tokens cut."""
    cut = 0
    while sum(map(len, segments)) > budget:
        longest = max(range(len(segments)), key=lambda i: len(segments[i]))
        if not segments[longest]:
            break
        segments[longest].pop()
        cut += 1
    return cut


class DecoderInputs:
    """GPT's transformation: start a [delim b] extract, features at the extract token."""

    def __init__(self, tokenizer, max_length: int):
        self.ids = {role: tokenizer.token_to_id(token) for role, token in MARKERS.items()}
        if None in self.ids.values():
            raise ValueError("the tokenizer lacks GPT's fine-tuning markers; call add_markers first")
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode(self, segments: tuple[str, ...]) -> tuple[list[int], list[int], int, int]:
        pieces = [self.tokenizer.encode(text) for text in segments]
        cut = _truncate(pieces, self.max_length - len(pieces) - 1)  # start, delims, extract
        ids = [self.ids["start"], *pieces[0]]
        for piece in pieces[1:]:
            ids += [self.ids["delim"], *piece]
        ids.append(self.ids["extract"])
        return ids, [0] * len(ids), len(ids) - 1, cut


class EncoderInputs:
    """BERT's pair format from the tokenizer's own template; features at [CLS] (position 0)."""

    def __init__(self, tokenizer, max_length: int):
        from tokenizers import Tokenizer as HFTokenizer

        refuse_reversed(tokenizer, "an encoder's [CLS] a [SEP] b [SEP] inputs")
        # A copy that truncates the longest segment first, as BERT's fine-tuning code did.
        self.truncating = HFTokenizer.from_str(tokenizer.hf_tokenizer.to_str())
        self.truncating.enable_truncation(max_length, strategy="longest_first")
        self.plain = tokenizer.hf_tokenizer
        self.tokenizer = tokenizer

    def encode(self, segments: tuple[str, ...]) -> tuple[list[int], list[int], int, int, list[str]]:
        """(ids, segment ids, extract position, tokens cut, what each token spells: lmkit.token_inputs.spell)."""
        from ..token_inputs import spell

        encoding = self.truncating.encode(*segments, add_special_tokens=True)
        full = len(self.plain.encode(*segments, add_special_tokens=True).ids)
        return (list(encoding.ids), list(encoding.type_ids), 0, full - len(encoding.ids),
                spell(self.tokenizer, encoding, segments))


def encode_task(data: TaskData, inputs: DecoderInputs | EncoderInputs) -> tuple[list[EncodedExample], int]:
    """Every example as its sequences of ids, and how many examples had tokens cut to fit."""
    encoded, truncated = [], 0
    for example in data.examples:
        sequences, types, extract, spellings, cut_any = [], [], [], [], False
        for segments in sequences_of(example, data.kind):
            # a recipe's inputs may also say what each token spells (EncoderInputs; 4 items: ids alone)
            ids, token_types, position, cut, *spelled = inputs.encode(segments)
            spellings.append(spelled[0] if spelled else None)
            sequences.append(ids)
            types.append(token_types)
            extract.append(position)
            cut_any |= cut > 0
        truncated += cut_any
        encoded.append(EncodedExample(sequences, types, extract, example.label,
                                      spellings if None not in spellings else None))
    return encoded, truncated


def collate(examples: list[EncodedExample], pad_id: int, regression: bool = False,
            token_inputs: dict | None = None) -> dict[str, np.ndarray]:
    """A batch: (B, S, T) ids, mask, segment ids and LM labels (-100 at padding), (B, S) extract, (B,) labels;
    with token_inputs, the stack's per-token inputs (B, S, T, ...) from the spellings (lmkit.token_inputs)."""
    from ..errors import LmkitError
    from ..token_inputs import batch_inputs

    B, S = len(examples), len(examples[0].sequences)
    T = max(len(ids) for example in examples for ids in example.sequences)
    input_ids = np.full((B, S, T), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((B, S, T), dtype=np.int64)
    attention_mask = np.zeros((B, S, T), dtype=bool)
    extract_index = np.zeros((B, S), dtype=np.int64)
    for b, example in enumerate(examples):
        for s, ids in enumerate(example.sequences):
            input_ids[b, s, :len(ids)] = ids
            token_type_ids[b, s, :len(ids)] = example.token_types[s]
            attention_mask[b, s, :len(ids)] = True
            extract_index[b, s] = example.extract[s]
    labels = np.array([e.label for e in examples], dtype=np.float32 if regression else np.int64)
    extra = {}
    if token_inputs is not None:
        if any(e.spellings is None for e in examples):
            raise LmkitError("this model reads per-token inputs (characters) that its task recipe's inputs do not "
                             "spell; fine-tune it with a recipe built on lmkit.tasks.inputs.EncoderInputs")
        rows = [spelled for e in examples for spelled in e.spellings]
        extra = {name: value.reshape(B, S, *value.shape[1:])
                 for name, value in batch_inputs(token_inputs, rows, T).items()}
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            "extract_index": extract_index, "lm_labels": np.where(attention_mask, input_ids, -100), "labels": labels,
            **extra}
