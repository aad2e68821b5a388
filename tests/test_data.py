"""Training data: files to a cached token stream, documents separated by eos, seeded batches, errors."""
import json
import os

import numpy as np
import pytest

from lmkit import data
from lmkit.data import (
    WindowSampler,
    evaluation_windows,
    find_data_files,
    load_tokens,
    split_validation,
    text_bytes,
    token_dtype,
)
from lmkit.errors import DataError

WORDS = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "far", "away", "quickly", "home"]


def sentences(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "\n".join(" ".join(rng.choice(WORDS, size=10)) for _ in range(n)) + "\n"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions

    corpus = tmp_path_factory.mktemp("corpus") / "text.txt"
    corpus.write_text(sentences(300))
    return ByteLevelBPE.train([str(corpus)], ByteLevelBPEOptions(vocab_size=300), progress=False)


def test_each_file_is_one_document_followed_by_eos(tmp_path, tokenizer):
    # A blank line inside a file is a paragraph, not a document boundary.
    (tmp_path / "a.txt").write_text("the cat sat\n\non the mat\n")
    (tmp_path / "b.txt").write_text("a dog ran far away")
    stream = load_tokens(tmp_path, tokenizer)
    eos = tokenizer.eos_id
    expected = tokenizer.encode("the cat sat\n\non the mat\n") + [eos] + tokenizer.encode("a dog ran far away") + [eos]
    assert stream.tokens.tolist() == expected
    assert stream.documents == 2 and stream.tokens.dtype == np.uint16
    assert os.path.dirname(stream.path) == str(tmp_path / ".lmkit-cache")


def test_long_files_are_encoded_in_segments_with_the_same_tokens(tmp_path, tokenizer, monkeypatch):
    text = "  indented start\n" + sentences(200) + "\n\n   spaced\n\tline\n"
    (tmp_path / "long.txt").write_text(text)
    monkeypatch.setattr(data, "SEGMENT_BYTES", 100)
    monkeypatch.setattr(data, "READ_BLOCK", 64)
    monkeypatch.setattr(data, "ENCODE_BATCH_BYTES", 300)
    assert len(list(data._text_segments(str(tmp_path / "long.txt")))) > 10
    stream = load_tokens(tmp_path, tokenizer)
    assert stream.tokens.tolist() == tokenizer.encode(text) + [tokenizer.eos_id]


def test_jsonl_records_are_documents(tmp_path, tokenizer):
    lines = [json.dumps({"text": "the cat sat", "id": 1}), "", json.dumps({"text": "   "}),
             json.dumps({"text": "a dog ran", "id": 2})]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    stream = load_tokens(tmp_path / "docs.jsonl", tokenizer)
    eos = tokenizer.eos_id
    assert stream.tokens.tolist() == tokenizer.encode("the cat sat") + [eos] + tokenizer.encode("a dog ran") + [eos]
    (tmp_path / "body.jsonl").write_text(json.dumps({"body": "on the mat"}) + "\n")
    other = load_tokens(tmp_path / "body.jsonl", tokenizer, text_field="body")
    assert other.tokens.tolist() == tokenizer.encode("on the mat") + [eos]
    assert text_bytes(tmp_path / "docs.jsonl") == len("the cat sat") + len("a dog ran")


def test_directories_take_txt_and_jsonl_files_in_order(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.txt", "a.jsonl", "sub/c.txt", "notes.md", ".hidden.txt"):
        (tmp_path / name).write_text("x")
    files = find_data_files([tmp_path, tmp_path / "b.txt"])
    assert [os.path.relpath(f.path, tmp_path) for f in files] == ["a.jsonl", "b.txt", os.path.join("sub", "c.txt")]
    assert [f.jsonl for f in files] == [True, False, False]
    assert [f.path for f in find_data_files(str(tmp_path / "*.txt"))] == [str(tmp_path / "b.txt")]


def test_the_cache_is_reused_until_the_data_or_the_tokenizer_changes(tmp_path, tokenizer):
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions

    (tmp_path / "a.txt").write_text(sentences(20))
    first = load_tokens(tmp_path, tokenizer)
    again = load_tokens(tmp_path, tokenizer)
    assert not first.from_cache and again.from_cache and again.path == first.path
    assert np.array_equal(first.tokens, again.tokens)

    (tmp_path / "a.txt").write_text(sentences(20, seed=1))
    changed = load_tokens(tmp_path, tokenizer)
    assert not changed.from_cache and changed.path != first.path

    other = ByteLevelBPE.train([str(tmp_path / "a.txt")], ByteLevelBPEOptions(vocab_size=280), progress=False)
    retokenized = load_tokens(tmp_path, other)
    assert not retokenized.from_cache and retokenized.path != changed.path
    assert len(os.listdir(tmp_path / ".lmkit-cache")) == 6  # .tokens and .json for each


def test_token_width_follows_the_vocabulary():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_batches_are_a_seeded_permutation_of_windows_per_epoch():
    tokens = np.arange(101, dtype=np.uint16)
    sampler = WindowSampler(tokens, seq_len=10, seed=3)
    assert sampler.n_windows == 10
    epoch = sampler.samples(0, 10)
    assert epoch.shape == (10, 11) and epoch.dtype == np.int64
    assert sorted(epoch[:, 0].tolist()) == list(range(0, 100, 10))  # every window once
    assert np.array_equal(epoch[:, 1:], epoch[:, :1] + np.arange(1, 11))
    # Any stretch reads the same as the whole; a batch may span two epochs.
    stream = sampler.samples(0, 30)
    assert np.array_equal(np.concatenate([sampler.samples(0, 7), sampler.samples(7, 16), sampler.samples(23, 7)]),
                          stream)
    assert not np.array_equal(stream[:10], stream[10:20])
    assert np.array_equal(WindowSampler(tokens, 10, seed=3).samples(5, 12), stream[5:17])
    assert not np.array_equal(WindowSampler(tokens, 10, seed=4).samples(0, 10), epoch)


def test_validation_split_and_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    train, val = split_validation(tokens, 0.1, seq_len=16)
    assert len(train) == 900 and val[0] == 900
    train, val = split_validation(tokens, 0.001, seq_len=16)
    assert len(val) == 17  # at least one window
    assert len(split_validation(tokens, 0.0, seq_len=16)[1]) == 0
    windows = evaluation_windows(tokens, seq_len=16, count=5)
    assert windows.shape == (5, 17) and windows[0, 0] == 0 and windows[-1, 0] == 61 * 16
    assert np.array_equal(windows, evaluation_windows(tokens, 16, 5))


def error_message(call) -> str:
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_data_errors_are_one_line_and_say_where(tmp_path, tokenizer):
    assert "does not exist" in error_message(lambda: load_tokens(tmp_path / "missing.txt", tokenizer))
    (tmp_path / "empty_dir").mkdir()
    assert "holds no .txt or .jsonl files" in error_message(lambda: load_tokens(tmp_path / "empty_dir", tokenizer))

    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf" + "é au lait".encode("latin-1"))
    assert error_message(lambda: load_tokens(bad, tokenizer)).startswith(f"{bad} is not UTF-8 text (invalid byte at offset 3)")

    blank_dir = tmp_path / "blank"
    blank_dir.mkdir()
    blank = blank_dir / "blank.txt"
    blank.write_text("  \n\n ")
    assert "is empty" in error_message(lambda: load_tokens(blank, tokenizer))
    assert os.listdir(blank_dir) == ["blank.txt"]  # no empty .lmkit-cache left beside it (a trial's)

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    assert error_message(lambda: load_tokens(broken, tokenizer)).startswith(f"{broken}:2 is not JSON")
    assert f"{broken}:1 has no 'body' field (it has: text)" in error_message(
        lambda: load_tokens(broken, tokenizer, text_field="body"))
    assert not (tmp_path / ".lmkit-cache").exists()  # failed tokenizations leave nothing behind, not even it


def test_a_tokenizer_without_eos_is_refused(tmp_path):
    from lmkit.tokenizers import WordPiece, WordPieceOptions

    (tmp_path / "a.txt").write_text(sentences(20))
    wordpiece = WordPiece.train([str(tmp_path / "a.txt")], WordPieceOptions(vocab_size=100), progress=False)
    assert "no end-of-text (eos) token" in error_message(lambda: load_tokens(tmp_path, wordpiece))
