"""Training text -> a memory-mapped token stream -> the same batches for the same seed, every time.

Data is plain text files, directories of them, or JSONL files with one document per line in a text
field. Every document (a whole text file, or one JSONL record) is tokenized once and followed by
the tokenizer's end-of-text token, and the stream is cached as a flat array of token ids beside the
data, in `.lmkit-cache/<key>.tokens` (raw little-endian uint16, or uint32 for vocabularies of more
than 65,536 tokens) with `<key>.json` describing it. The key hashes the data's bytes and the tokenizer,
so changing either tokenizes again and nothing stale is ever read.

A model whose stack reads what each token spells (lmkit.token_inputs: ELMo's characters) also needs
the text behind each unknown token, which the ids lose. For it (load_tokens(spellings=True)) the
cache keeps `<key>.spellings`, raw little-endian int64 pairs (stream position, word) for every
unknown token, and `<key>.spellings.json` with the table of words; other models never read or write
them.

A training batch is a set of windows of seq_len + 1 consecutive tokens (the inputs and, shifted by
one, the targets). Each epoch visits every window once in an order drawn from (seed, epoch), so the
whole data position is one integer, the number of windows consumed so far.

Nothing here imports torch: batches are numpy arrays.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import itertools
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .artifacts import atomic_write, atomic_write_json
from .errors import DataError

CACHE_DIRECTORY = ".lmkit-cache"
# Bump when the way text becomes tokens changes, so old caches are not reused.
CACHE_FORMAT = "lmkit-tokens/1"
DIRECTORY_SUFFIXES = (".txt", ".jsonl")  # what a directory contributes; files named directly may be anything
READ_BLOCK = 1 << 23
# A long text file is encoded in segments of about this many bytes (an Encoding costs far more
# memory than its text), cut where that cannot change the tokens (see `_text_segments`).
SEGMENT_BYTES = 1 << 18
ENCODE_BATCH_BYTES = 1 << 22  # text handed to the tokenizer per call; it encodes a batch in parallel
ASCII_WHITESPACE = b" \t\n\r\x0b\x0c"


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits, else uint32: half the disk and page cache of int32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


# -- finding and checking the files ------------------------------------------------------------------


@dataclass(frozen=True)
class DataFile:
    path: str
    jsonl: bool  # one JSON record per line, else the whole file is one document


def find_data_files(paths: str | Iterable[str]) -> list[DataFile]:
    """The files behind `paths`: files as given, .txt and .jsonl files under directories, glob patterns."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[str] = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            inside = sorted(
                file for file in glob.glob(os.path.join(glob.escape(path), "**", "*"), recursive=True)
                if file.endswith(DIRECTORY_SUFFIXES) and os.path.isfile(file)
            )  # glob skips hidden files and folders, and so the token cache
            if not inside:
                raise DataError(f"{path} holds no .txt or .jsonl files; put the text in such files or name "
                                "the files themselves")
            found.extend(inside)
        elif os.path.isfile(path):
            found.append(path)
        elif any(character in path for character in "*?["):
            matches = sorted(file for file in glob.glob(path, recursive=True) if os.path.isfile(file))
            if not matches:
                raise DataError(f"{path} matches no files; check the pattern")
            found.extend(matches)
        else:
            raise DataError(f"{path} does not exist; give text files, .jsonl files or directories of them")
    if not found:
        raise DataError("no data files were given; pass text or .jsonl files, or directories of them")
    unique = list(dict.fromkeys(os.path.abspath(file) for file in found))  # a file named twice counts once
    return [DataFile(file, file.endswith(".jsonl")) for file in unique]


def _not_utf8(path: str, offset: int) -> DataError:
    return DataError(f"{path} is not UTF-8 text (invalid byte at offset {offset}); re-encode it as UTF-8, "
                     "e.g. iconv -f latin1 -t utf-8")


def read_text(path: str) -> str:
    """A user's text file, decoded; DataError (one line) naming the offset when it is not UTF-8. A leading
    byte-order mark is dropped."""
    with open(path, "rb") as handle:
        return _decode(handle.read(), path, 0)


def _decode(raw: bytes, path: str, offset: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(path, offset + error.start) from None
    return text.removeprefix("\ufeff") if offset == 0 else text  # a byte-order mark is not text


def _read_blocks(path: str) -> Iterator[bytes]:
    try:
        with open(path, "rb") as handle:
            while block := handle.read(READ_BLOCK):
                yield block
    except OSError as error:
        raise DataError(f"{path} cannot be read ({error.strerror}); check that it is a readable file") from None


# -- documents ---------------------------------------------------------------------------------------


def _text_segments(path: str) -> Iterator[str]:
    """A text file in pieces of about SEGMENT_BYTES, cut only after a newline followed by a non-space.

    Cut there, byte-level BPE (GPT-2's split pattern), BPE, WordPiece and char tokenizers give the
    same tokens as for the whole file, since they split at whitespace anyway. A Metaspace (unigram)
    tokenizer marks a word start at each cut: one token in about 60,000 may differ.
    """
    pending, offset = b"", 0
    for block in _read_blocks(path):
        pending += block
        while len(pending) > SEGMENT_BYTES:
            cut = pending.find(b"\n", SEGMENT_BYTES)
            while 0 <= cut < len(pending) - 1 and pending[cut + 1] in ASCII_WHITESPACE:
                cut = pending.find(b"\n", cut + 1)
            if cut < 0 or cut == len(pending) - 1:
                break  # no safe cut in what is read so far: read on
            yield _decode(pending[:cut + 1], path, offset)
            offset += cut + 1
            pending = pending[cut + 1:]
    if pending:
        yield _decode(pending, path, offset)


def jsonl_documents(path: str, text_field: str,
                     advice: str = "pass --text-field with the field that holds the text") -> Iterator[str]:
    """The text field of each record; blank lines are skipped. `advice` ends the error for a record without it."""
    offset = 0
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line = _decode(raw, path, offset)
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number} is not JSON ({error.msg}); each line of a .jsonl file "
                                    "must be one JSON object") from None
                if not isinstance(record, dict) or text_field not in record:
                    keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
                    raise DataError(f"{path}:{number} has no '{text_field}' field (it has: {keys or 'nothing'}); "
                                    f"{advice}")
                text = record[text_field]
                if not isinstance(text, str):
                    raise DataError(f"{path}:{number}: '{text_field}' is a {type(text).__name__}, not a string; "
                                    f"{advice}")
                yield text
    except OSError as error:
        raise DataError(f"{path} cannot be read ({error.strerror}); check that it is a readable file") from None


def read_texts(files: list[DataFile], text_field: str = "text") -> Iterator[tuple[str, bool]]:
    """(text, ends a document) for all the data, in order; a document of only whitespace is left out."""
    for file in files:
        if file.jsonl:
            for text in jsonl_documents(file.path, text_field):
                if text.strip():
                    yield text, True
            continue
        held = None  # the segment before the current one: whether it ends the file is not known yet
        for segment in _text_segments(file.path):
            if segment.isspace():  # segments start at a non-space, so only a blank file or start is all space
                continue
            if held is not None:
                yield held, False
            held = segment
        if held is not None:
            yield held, True


def text_bytes(paths: str | Iterable[str], *, text_field: str = "text") -> int:
    """UTF-8 bytes of the documents `load_tokens` reads from `paths`: what bits per byte divides by."""
    return sum(len(text.encode("utf-8")) for text, _ in read_texts(find_data_files(paths), text_field))


def _batched_by_size(pieces: Iterator[tuple[str, bool]], limit: int) -> Iterator[list[tuple[str, bool]]]:
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= limit:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# -- the token cache ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spellings:
    """What the unknown tokens of a token stream stand for: the (normalised) text each replaced
    (lmkit.token_inputs.spell). Every other token spells its own vocabulary string."""

    positions: np.ndarray  # (n,) int64, increasing: where in the stream each unknown token is
    words: np.ndarray  # (n,) int64: which word of `table` it stands for
    table: tuple[str, ...]

    def window(self, start: int, stop: int) -> Spellings:
        """Those of stream positions start .. stop - 1, counted from start."""
        lo, hi = np.searchsorted(self.positions, [start, stop])
        return Spellings(self.positions[lo:hi] - start, self.words[lo:hi], self.table)

    def shifted(self, offset: int) -> Spellings:
        """Those of the same stream with `offset` tokens put before it."""
        return Spellings(self.positions + offset, self.words, self.table)

    def reversed(self, n_tokens: int) -> Spellings:
        """Those of the stream of n_tokens read backwards."""
        return Spellings((n_tokens - 1 - self.positions)[::-1], self.words[::-1], self.table)


@dataclass(frozen=True)
class TokenStream:
    """A tokenized data set: the ids of all its documents, each followed by the end-of-text token."""

    tokens: np.ndarray  # (n_tokens,) read-only memmap
    documents: int
    path: str  # the .tokens file
    from_cache: bool  # whether an earlier run had already tokenized this data
    spellings: Spellings | None = None  # with load_tokens(spellings=True)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's serialized form (its tokenizer.json), of its end-of-text token and of
    whether it reads right to left."""
    digest = hashlib.sha256(tokenizer.hf_tokenizer.to_str().encode("utf-8"))
    digest.update(f"\0eos={tokenizer.eos_id}".encode())
    if tokenizer.reverse:
        digest.update(b"\0reverse")
    return digest.hexdigest()


def _content_key(files: list[DataFile], text_field: str, tokenizer_hash: str) -> str:
    digest = hashlib.sha256(f"{CACHE_FORMAT}\0{SEGMENT_BYTES}\0{tokenizer_hash}".encode())
    for file in files:
        kind = f"jsonl:{text_field}" if file.jsonl else "text"
        digest.update(f"\0{kind}\0{os.path.getsize(file.path)}\0".encode())
        for block in _read_blocks(file.path):
            digest.update(block)
    return digest.hexdigest()[:24]


def _cache_directory(first_path: str) -> str:
    """.lmkit-cache in the (first) data directory, or in the user's cache when that is not writable."""
    folder = first_path if os.path.isdir(first_path) else os.path.dirname(os.path.abspath(first_path))
    beside = os.path.join(folder, CACHE_DIRECTORY)
    try:
        os.makedirs(beside, exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    fallback = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lmkit", "tokens")
    os.makedirs(fallback, exist_ok=True)
    return fallback


@contextlib.contextmanager
def removed_if_left_empty(directory: str):
    """Around filling a cache directory: where that fails and leaves .lmkit-cache empty, it goes too (a failed
    command leaves nothing behind: a trial's empty training file left an empty .lmkit-cache beside it)."""
    try:
        yield
    except BaseException:
        if os.path.basename(directory) == CACHE_DIRECTORY:
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only if empty
        raise


def _open_cached(tokens_path: str, meta_path: str) -> TokenStream | None:
    """The cached stream, if it is complete: the .json is written only after the .tokens file."""
    try:
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        dtype = np.dtype(meta["dtype"])
        if meta.get("format") != CACHE_FORMAT or os.path.getsize(tokens_path) != meta["tokens"] * dtype.itemsize:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    tokens = np.memmap(tokens_path, dtype=dtype, mode="r")
    return TokenStream(tokens, meta["documents"], tokens_path, from_cache=True)


def _open_spellings(path: str, meta_path: str, n_tokens: int) -> Spellings | None:
    """The cached spellings, if they are complete and belong to a stream of n_tokens."""
    try:
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        if (meta.get("format") != CACHE_FORMAT or meta["tokens"] != n_tokens
                or os.path.getsize(path) != meta["unknown"] * 16):
            return None
        table = tuple(meta["words"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    pairs = np.fromfile(path, dtype="<i8").reshape(-1, 2)
    return Spellings(pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), table)


def _unknown_spellings(tokenizer, encoding, text: str) -> Iterator[tuple[int, str]]:
    """(index, what it spells) of every unknown token of `encoding`, the encoding of `text`."""
    from .token_inputs import spell

    spelled = spell(tokenizer, encoding, [text])
    for index, token_id in enumerate(encoding.ids):
        if token_id == tokenizer.unk_id:
            yield index, spelled[index]


def load_tokens(paths: str | Iterable[str], tokenizer, *, text_field: str = "text", progress: bool = False,
                what: str = "data", spellings: bool = False) -> TokenStream:
    """The token stream of the files behind `paths`, tokenizing them only if no cache matches.

    `what` names the data in error messages ("training data", "validation data"). A tokenizer that
    reverses (a backward LM's) gets the left-to-right stream read backwards, a view of the same cache:
    each document right to left, the documents in reverse order, an end-of-text token before each
    (what fastai's backwards language-model loader reads). spellings=True: also what each unknown
    token stands for (TokenStream.spellings), for a stack that reads it (lmkit.token_inputs); the
    first such call on data cached without them tokenizes it again, to the same ids.
    """
    if tokenizer.reverse:
        stream = load_tokens(paths, tokenizer.forward(), text_field=text_field, progress=progress, what=what,
                             spellings=spellings)
        spelled = None if stream.spellings is None else stream.spellings.reversed(len(stream.tokens))
        return dataclasses.replace(stream, tokens=stream.tokens[::-1], spellings=spelled)
    eos = tokenizer.eos_id
    if eos is None:
        raise DataError(f"the {tokenizer.kind} tokenizer has no end-of-text (eos) token to separate documents "
                        "with; train one whose special tokens include <|endoftext|> or </s>")
    paths = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    files = find_data_files(paths)
    key = _content_key(files, text_field, tokenizer_fingerprint(tokenizer))
    directory = _cache_directory(paths[0])
    tokens_path, meta_path = os.path.join(directory, f"{key}.tokens"), os.path.join(directory, f"{key}.json")
    spellings_path = os.path.join(directory, f"{key}.spellings")
    cached = _open_cached(tokens_path, meta_path)
    if cached is not None and not spellings:
        return cached
    if cached is not None:
        spelled = _open_spellings(spellings_path, spellings_path + ".json", len(cached.tokens))
        if spelled is not None:
            return dataclasses.replace(cached, spellings=spelled)

    from tqdm import tqdm

    dtype = token_dtype(tokenizer.vocab_size)
    total_bytes = sum(os.path.getsize(file.path) for file in files)
    n_tokens = n_documents = 0
    # Where unknown tokens are and which word each spells: only for spellings=True, and only unknown tokens
    # (a word tokenizer's vocabulary covers most of the text), so the side file stays small.
    unknown: list[tuple[int, int]] = []
    words: dict[str, int] = {}
    # disable=None: the bar is drawn only on a terminal.
    with removed_if_left_empty(directory), tqdm(total=total_bytes, desc="tokenizing", unit="B", unit_scale=True,
                                                leave=False, file=sys.stderr, disable=None if progress else True
                                                ) as bar, atomic_write(tokens_path, "wb") as out:
        for batch in _batched_by_size(read_texts(files, text_field), ENCODE_BATCH_BYTES):
            if spellings:
                encodings = tokenizer.hf_tokenizer.encode_batch([text for text, _ in batch], add_special_tokens=False)
                encoded = [encoding.ids for encoding in encodings]
            else:
                encoded = tokenizer.encode_batch([text for text, _ in batch])
            with_eos = []
            position = n_tokens
            for index, (ids, (text, ends_document)) in enumerate(zip(encoded, batch)):
                if spellings and tokenizer.unk_id is not None and tokenizer.unk_id in ids:
                    unknown.extend((position + i, words.setdefault(word, len(words)))
                                   for i, word in _unknown_spellings(tokenizer, encodings[index], text))
                with_eos.append(ids)
                position += len(ids)
                if ends_document:
                    with_eos.append((eos,))
                    position += 1
            count = sum(map(len, with_eos))
            np.fromiter(itertools.chain.from_iterable(with_eos), dtype=dtype, count=count).tofile(out)
            n_tokens += count
            n_documents += sum(ends for _, ends in batch)
            bar.update(sum(len(text.encode("utf-8")) for text, _ in batch))
        if n_documents == 0:
            which = f"{files[0].path} holds no text" if len(files) == 1 else f"none of its {len(files)} files holds text"
            raise DataError(f"the {what} is empty: {which}; give files that contain text")
    atomic_write_json(meta_path, {
        "format": CACHE_FORMAT, "dtype": dtype.str, "tokens": n_tokens, "documents": n_documents,
        "eos_id": eos, "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
        "text_field": text_field, "files": [file.path for file in files],
    })
    spelled = None
    if spellings:
        spelled = Spellings(np.array([p for p, _ in unknown], dtype=np.int64).reshape(-1),
                            np.array([w for _, w in unknown], dtype=np.int64).reshape(-1), tuple(words))
        with atomic_write(spellings_path, "wb") as out:
            np.stack([spelled.positions, spelled.words], axis=1).astype("<i8").tofile(out)
        atomic_write_json(spellings_path + ".json", {"format": CACHE_FORMAT, "tokens": n_tokens,
                                                     "unknown": len(unknown), "words": list(spelled.table)})
    return TokenStream(np.memmap(tokens_path, dtype=dtype, mode="r"), n_documents, tokens_path, from_cache=False,
                       spellings=spelled)


# -- splits and batches ------------------------------------------------------------------------------


def split_validation(tokens: np.ndarray, fraction: float, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the validation split is the stream's last `fraction` of tokens.

    It is made at least one window (seq_len + 1 tokens) long, so a small data set still evaluates.
    """
    if fraction <= 0:
        return tokens, tokens[:0]
    held_out = max(math.ceil(len(tokens) * fraction), seq_len + 1)
    return tokens[:len(tokens) - held_out], tokens[len(tokens) - held_out:]


def _gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    """(len(starts), seq_len + 1) int64: the window at each start, read in one indexing operation."""
    return tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)


class SeededOrder:
    """Item indices of an endless stream of epochs, each a seeded permutation, addressed by sample index.

    Sample i of the stream is order(epoch)[i % n] with epoch = i // n, so any stretch of samples can
    be read without replaying the ones before it (which is what makes a resumed run exact).
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # a batch spans at most two epochs once the data holds a batch
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._orders[epoch]

    def indices(self, first: int, count: int) -> np.ndarray:
        """(count,) int64: the items of samples first, ..., first + count - 1."""
        epochs, positions = np.divmod(np.arange(first, first + count), self.n)
        items = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            items[here] = self.order(int(epoch))[positions[here]]
        return items


class WindowSampler:
    """Windows of seq_len + 1 tokens in a seeded order, epoch after epoch, addressed by sample index.

    Window w covers tokens [w * seq_len, w * seq_len + seq_len], so consecutive windows share one
    token: each token of the stream is predicted in exactly one window.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int):
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.n_windows = max((len(tokens) - 1) // seq_len, 0)
        if self.n_windows == 0:
            raise ValueError(f"{len(tokens)} tokens hold no window of {seq_len + 1}")
        self.windows = SeededOrder(self.n_windows, seed)

    def order(self, epoch: int) -> np.ndarray:
        return self.windows.order(epoch)

    def starts(self, first: int, count: int) -> np.ndarray:
        """(count,) int64: where in the stream samples first, ..., first + count - 1 start."""
        return self.windows.indices(first, count) * self.seq_len

    def samples(self, first: int, count: int) -> np.ndarray:
        """(count, seq_len + 1) int64: samples first, ..., first + count - 1 of the stream."""
        return _gather(self.tokens, self.starts(first, count), self.seq_len)


def evaluation_starts(tokens: np.ndarray, seq_len: int, count: int) -> np.ndarray:
    """(n,) int64: where evaluation_windows' windows start in `tokens`."""
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows <= 0 or count <= 0:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_windows - 1, num=min(count, n_windows)).round().astype(np.int64)) * seq_len


def evaluation_windows(tokens: np.ndarray, seq_len: int, count: int) -> np.ndarray:
    """(n, seq_len + 1) int64: up to `count` windows spread evenly over the split, the same every time."""
    return _gather(tokens, evaluation_starts(tokens, seq_len, count), seq_len)
