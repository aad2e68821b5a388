"""Tokenizer training, saving and loading (lmkit.tokenizers), on small generated corpora."""
from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys

import pytest
from tokenizers import Tokenizer as HFTokenizer

from lmkit.errors import ArtifactError, DataError, PluginError, SpecError
from lmkit.options import build_options
from lmkit.tokenizers import (
    ROLES,
    ByteLevelBPEOptions,
    CharacterOptions,
    Tokenizer,
    UnigramOptions,
    WordBPEOptions,
    WordPieceOptions,
    load_tokenizer,
    train_tokenizer,
)

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "zu", "an", "el", "or", "ix", "qu",
             "by", "cog", "dif", "jaw", "gy", "wh"]
RARE_WORDS = ["café", "naïve", "☃", "Ωmega"]

OPTIONS = {
    "bytelevel-bpe": ByteLevelBPEOptions(vocab_size=400),
    "bpe": WordBPEOptions(vocab_size=300),
    "wordpiece": WordPieceOptions(vocab_size=300),
    "unigram": UnigramOptions(vocab_size=300),
    "char": CharacterOptions(vocab_size=203),
}
EXPECTED_IDS = {  # role -> id, as each family lays out its special tokens
    "bytelevel-bpe": {"bos": 0, "eos": 0, "pad": 0},
    "bpe": {"unk": 0, "eos": 1},
    "wordpiece": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4},
    "unigram": {"pad": 0, "eos": 1, "unk": 2},
    "char": {"pad": 0, "unk": 1, "eos": 2},
}
KINDS = list(OPTIONS)
SAMPLES = ["Kalo mine, zuta! café naïve?", "whgy  jawcog.\nbyel ixor", "", "☃ shi<|endoftext|>po"]


def make_lines(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    lines = []
    for _ in range(count):
        line = [rng.choice(words) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.3:
            line[0] = line[0].capitalize()
        if rng.random() < 0.1:
            line.append(rng.choice(RARE_WORDS))
        lines.append(" ".join(line) + rng.choice([".", "!", "?", ",", ""]))
    return lines


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """corpus/ with .txt files at two depths, and a file that is not .txt (so not read)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "sub").mkdir()
    (root / "a.txt").write_text("\n".join(make_lines(1500, 0)) + "\n", encoding="utf-8")
    (root / "sub" / "b.txt").write_text("\n".join(make_lines(1000, 1)), encoding="utf-8")
    (root / "notes.md").write_bytes(b"not UTF-8 \xff and not read")
    return str(root)


@pytest.fixture(scope="module")
def trained(corpus) -> dict[str, Tokenizer]:
    return {kind: train_tokenizer(kind, [corpus], options, progress=False)
            for kind, options in OPTIONS.items()}


def corpus_text(corpus: str) -> str:
    paths = (os.path.join(corpus, "a.txt"), os.path.join(corpus, "sub", "b.txt"))
    return "".join(open(path, encoding="utf-8").read() for path in paths)


def check_one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message and message.strip() == message
    for part in parts:
        assert part in message


# --- training ----------------------------------------------------------------------------------

def _as_a_hash_map_might_number_it(hf_tokenizer: HFTokenizer, seed: int) -> HFTokenizer:
    """The same trained tokenizer with its ids shuffled as tokenizers' trainers may give them out in another
    process (special tokens stay): a Unigram's pieces of equal score swapped, its added characters' scores
    dealt in another order."""
    rng = random.Random(seed)
    state = json.loads(hf_tokenizer.to_str())
    model, special = state["model"], {token["content"] for token in state["added_tokens"]}
    if model["type"] == "Unigram":
        pieces = [piece for piece in model["vocab"] if piece[0] not in special]
        least = min(score for _, score in pieces)
        added = [piece for piece in pieces if len(piece[0]) == 1 and piece[1] - least < 1e-4 * len(pieces)]
        scores = [piece[1] for piece in added]
        rng.shuffle(scores)
        for piece, score in zip(added, scores):
            piece[1] = score
        rng.shuffle(pieces)
        pieces.sort(key=lambda piece: -piece[1])  # stable: ties keep the shuffled order
        dealt = iter(pieces)
        model["vocab"] = [piece if piece[0] in special else next(dealt) for piece in model["vocab"]]
    else:
        free = [token for token in model["vocab"] if token not in special]
        ids = [model["vocab"][token] for token in free]
        rng.shuffle(ids)
        model["vocab"].update(zip(free, ids))
    return HFTokenizer.from_str(json.dumps(state))


@pytest.mark.parametrize("kind", ["bytelevel-bpe", "bpe", "wordpiece", "unigram"])
def test_ids_depend_only_on_what_was_learnt(trained, kind, corpus):
    # A CI run's T5 fixture had "w" at id 17 where the last run had "b": the trainers number tokens in
    # hash-map order, which changes from process to process.
    from lmkit.tokenizers.training import fixed_order

    learnt = trained[kind].hf_tokenizer
    orders = [fixed_order(_as_a_hash_map_might_number_it(learnt, seed)) for seed in range(4)]
    assert all(order.to_str() == orders[0].to_str() for order in orders)
    assert orders[0].get_vocab() == learnt.get_vocab()  # what training gave is in the fixed order already
    text = corpus_text(corpus)[:2000]
    assert orders[0].encode(text).tokens == learnt.encode(text).tokens
    if kind == "unigram":  # highest score first, ties in the order of their text
        pieces = json.loads(learnt.to_str())["model"]["vocab"][3:]
        assert pieces == sorted(pieces, key=lambda piece: (-round(piece[1], 9), piece[0]))


@pytest.mark.parametrize("kind", KINDS)
def test_training_respects_vocab_size_and_lays_out_special_tokens(trained, kind):
    tokenizer = trained[kind]
    limit = OPTIONS[kind].vocab_size
    assert 50 < tokenizer.vocab_size <= limit
    assert tokenizer.kind == kind
    ids = {role: getattr(tokenizer, f"{role}_id") for role in ROLES}
    assert {role: i for role, i in ids.items() if i is not None} == EXPECTED_IDS[kind]
    for token in OPTIONS[kind].special_tokens:
        assert tokenizer.id_to_token(tokenizer.token_to_id(token)) == token
    assert tokenizer.to_config() == {"type": kind, "vocab_size": tokenizer.vocab_size,
                                     "special_tokens": tokenizer.special_tokens}


def test_gpt_fine_tuning_markers_are_whole_tokens(trained):
    tokenizer = trained["bpe"]
    assert [tokenizer.token_to_id(t) for t in ("_start_", "_delimiter_", "_classify_")] == [2, 3, 4]
    assert tokenizer.encode("_start_ kalo _classify_")[0] == 2


def test_byte_level_round_trips_any_text(trained):
    tokenizer = trained["bytelevel-bpe"]
    text = "Zürich 😀 naïve\tcafé\r\n  <|endoftext|> never seen: ЖЯ ∑ \x00"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_id in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.replace("<|endoftext|>", "")


def test_char_round_trips_seen_characters_and_keeps_the_most_frequent(corpus, trained):
    tokenizer = trained["char"]
    text = corpus_text(corpus)
    sample = text[:2000]
    assert tokenizer.decode(tokenizer.encode(sample)) == sample
    assert len(tokenizer.encode(sample)) == len(sample)
    assert tokenizer.encode("\n") != [tokenizer.unk_id]
    assert tokenizer.encode("ka#") == [tokenizer.token_to_id("k"), tokenizer.token_to_id("a"),
                                       tokenizer.unk_id]

    small = train_tokenizer("char", [corpus], CharacterOptions(vocab_size=8), progress=False)
    assert small.vocab_size == 3 + 5
    counts = collections.Counter(text)
    kept = [c for c in counts if small.token_to_id(c) is not None]
    dropped = [c for c in counts if small.token_to_id(c) is None]
    assert len(kept) == 5 and min(counts[c] for c in kept) >= max(counts[c] for c in dropped)


def test_unigram_round_trips_seen_text_up_to_sentencepieces_whitespace(trained):
    """As SentencePiece normalises (nmt_nfkc, remove_extra_whitespaces): a run of whitespace, newlines and tabs
    included, is one space, and the ends are stripped. Trained on files of many lines, no piece spans a line."""
    tokenizer = trained["unigram"]
    text = " Kalo mine, zuta! café  naïve?\n\twhgy\n"
    assert tokenizer.decode(tokenizer.encode(text)) == "Kalo mine, zuta! café naïve? whgy"
    assert tokenizer.encode(text) == tokenizer.encode("Kalo mine, zuta! café naïve? whgy")
    assert tokenizer.id_to_token(tokenizer.encode("kalo")[0]).startswith("▁")
    pieces = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    assert not [piece for piece in pieces if any(c.isspace() for c in piece)]


def test_wordpiece_round_trips_up_to_normalisation_and_adds_cls_sep_on_request(corpus, trained):
    tokenizer = trained["wordpiece"]
    ids = tokenizer.encode("Kalo mine, zuta! Café naïve?")
    assert tokenizer.decode(ids) == "kalo mine, zuta! cafe naive?"
    assert any(tokenizer.id_to_token(i).startswith("##") for i in ids)
    assert tokenizer.encode("kalo", add_special_tokens=True) == [tokenizer.cls_id, *tokenizer.encode("kalo"),
                                                                 tokenizer.sep_id]
    cased = train_tokenizer("wordpiece", [corpus], WordPieceOptions(vocab_size=300, lowercase=False),
                            progress=False)
    assert cased.decode(cased.encode("Kalo mine")) == "Kalo mine"


def test_word_bpe_lowercases_and_decodes_with_spaces(trained):
    tokenizer = trained["bpe"]
    ids = tokenizer.encode("Kalo mine, zuta! Café naïve?")
    assert tokenizer.decode(ids) == "kalo mine , zuta ! cafe naive ?"
    assert tokenizer.id_to_token(ids[-1]) == "?</w>"


def test_encode_batch_matches_encode(trained):
    for tokenizer in trained.values():
        assert tokenizer.encode_batch(SAMPLES) == [tokenizer.encode(text) for text in SAMPLES]


def test_inputs_may_be_files_directories_and_glob_patterns(corpus):
    by_directory = train_tokenizer("char", [corpus], progress=False)
    by_files = train_tokenizer("char", [os.path.join(corpus, "a.txt"), os.path.join(corpus, "sub", "b.txt")],
                               progress=False)
    by_pattern = train_tokenizer("char", [os.path.join(corpus, "**", "*.txt"), corpus], progress=False)
    vocab = by_directory.hf_tokenizer.get_vocab()
    assert by_files.hf_tokenizer.get_vocab() == vocab and by_pattern.hf_tokenizer.get_vocab() == vocab


def test_progress_bars_never_write_to_stdout(corpus, capfd):
    train_tokenizer("wordpiece", [corpus], WordPieceOptions(vocab_size=200), progress=True)
    assert capfd.readouterr().out == ""


# --- saving and loading ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_identical_encodings(trained, tmp_path, kind):
    tokenizer = trained[kind]
    out = tmp_path / "tok"
    tokenizer.save(str(out))
    assert sorted(os.listdir(out)) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["lmkit_type"] == kind and config["special_tokens"] == tokenizer.special_tokens
    assert all(config[f"{role}_token"] == token for role, token in tokenizer.special_tokens.items())
    HFTokenizer.from_file(str(out / "tokenizer.json"))  # a plain `tokenizers` file

    for path in (out, out / "tokenizer.json"):
        loaded = load_tokenizer(str(path))
        assert loaded.kind == kind and loaded.special_tokens == tokenizer.special_tokens
        assert loaded.vocab_size == tokenizer.vocab_size
        assert loaded.encode_batch(SAMPLES) == tokenizer.encode_batch(SAMPLES)
        assert loaded.encode(SAMPLES[0], add_special_tokens=True) == tokenizer.encode(SAMPLES[0], True)


@pytest.mark.parametrize("kind", KINDS)
def test_kind_and_roles_are_inferred_without_our_config(trained, tmp_path, kind):
    tokenizer = trained[kind]
    tokenizer.save(str(tmp_path))
    os.remove(tmp_path / "tokenizer_config.json")
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.kind == kind and loaded.special_tokens == tokenizer.special_tokens


def test_hugging_face_role_keys_are_honoured(trained, tmp_path):
    trained["bytelevel-bpe"].save(str(tmp_path))
    # GPT-2's own config: one token for everything, unknown included; a token the vocabulary lacks is ignored.
    config = {"unk_token": {"content": "<|endoftext|>", "special": True}, "mask_token": "<mask>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.special_tokens == {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>",
                                     "unk": "<|endoftext|>"}


def test_gpt2_vocab_and_merges_match_transformers(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    trained["bytelevel-bpe"].hf_tokenizer.model.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["merges.txt", "vocab.json"]
    ours = load_tokenizer(str(tmp_path))
    theirs = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path))
    assert ours.kind == "bytelevel-bpe" and ours.eos_id == theirs.eos_token_id
    for text in SAMPLES + ["  leading spaces", "ЖЯ 😀\n\n"]:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text


@pytest.mark.parametrize("lowercase", [None, False])
def test_bert_vocab_txt_matches_transformers(trained, tmp_path, lowercase):
    transformers = pytest.importorskip("transformers")
    trained["wordpiece"].hf_tokenizer.model.save(str(tmp_path))
    assert os.listdir(tmp_path) == ["vocab.txt"]
    if lowercase is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))
    ours = load_tokenizer(str(tmp_path))
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    assert ours.kind == "wordpiece"
    assert (ours.cls_id, ours.mask_id) == (theirs.cls_token_id, theirs.mask_token_id)
    for text in SAMPLES + ["[CLS] kalo [MASK] mi", "KALO Mine"]:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
        assert ours.encode(text, add_special_tokens=True) == theirs.encode(text), text


def test_transformers_reads_our_directory(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer = trained["wordpiece"]
    tokenizer.save(str(tmp_path))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert theirs.cls_token == "[CLS]" and theirs.pad_token_id == tokenizer.pad_id
    assert theirs.encode(SAMPLES[0]) == tokenizer.encode(SAMPLES[0], add_special_tokens=True)


# --- errors ------------------------------------------------------------------------------------

def train_and_save(kind: str, files, out) -> None:
    """What `lmkit tokenizer train` does."""
    train_tokenizer(kind, files, progress=False).save(str(out))


def test_non_utf8_file_is_named_with_the_offset(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes(b"kalo mine\n" * 200_000 + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError) as error:
        train_and_save("char", [str(bad)], tmp_path / "out")
    check_one_line(error, str(bad), "not UTF-8", f"offset {10 * 200_000 + 3}", "iconv")
    assert not (tmp_path / "out").exists()


def test_utf8_cut_short_at_the_end_is_caught(tmp_path):
    bad = tmp_path / "cut.txt"
    bad.write_bytes("kalo ☃".encode()[:-1])
    with pytest.raises(DataError) as error:
        train_and_save("char", [str(bad)], tmp_path / "out")
    check_one_line(error, "offset 5")


def test_empty_corpus_is_refused(tmp_path):
    (tmp_path / "blank.txt").write_text("  \n\t\n")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf\n")
    (tmp_path / "nothing.txt").write_text("")
    with pytest.raises(DataError) as error:
        train_and_save("bpe", [str(tmp_path)], tmp_path / "out")
    check_one_line(error, "training text is empty")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["missing.txt", "no-text-here", "*.text"])
def test_missing_inputs_are_named(tmp_path, name):
    (tmp_path / "no-text-here").mkdir()
    (tmp_path / "no-text-here" / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError) as error:
        train_and_save("char", [str(tmp_path / name)], tmp_path / "out")
    check_one_line(error, str(tmp_path / name))
    assert not (tmp_path / "out").exists()


def test_too_small_vocabulary_is_refused(corpus):
    with pytest.raises(SpecError) as error:
        train_tokenizer("wordpiece", [corpus], WordPieceOptions(vocab_size=20), progress=False)
    check_one_line(error, "vocab_size=20", "raise vocab_size")
    with pytest.raises(SpecError) as error:
        train_tokenizer("unigram", [corpus], UnigramOptions(vocab_size=10), progress=False)
    check_one_line(error, "vocab_size=10")


def test_unknown_kind_suggests_the_closest(corpus):
    # The plugin registry is the one list of kinds: its error, as `lmkit tokenizer train --kind` gives.
    with pytest.raises(PluginError) as error:
        train_tokenizer("chars", [corpus])
    check_one_line(error, "did you mean 'char'")


@pytest.mark.parametrize("cls, values, words", [
    (ByteLevelBPEOptions, {"vocab_size": 200}, "at least 258"),
    (WordPieceOptions, {"special_tokens": ["[PAD]", "[CLS]"]}, "'[UNK]'"),
    (UnigramOptions, {"special_tokens": ["<unk>", "<unk>"]}, "twice"),
    (CharacterOptions, {"vocab_size": 3}, "vocab_size"),
    (WordBPEOptions, {"min_frequency": 0}, "min_frequency"),
])
def test_options_are_checked(cls, values, words):
    with pytest.raises(SpecError) as error:
        build_options(cls, values, "tokenizer")
    check_one_line(error, words)


def test_loading_reports_what_is_wrong(tmp_path):
    with pytest.raises(ArtifactError) as error:
        load_tokenizer(str(tmp_path / "nowhere"))
    check_one_line(error, "does not exist")

    with pytest.raises(ArtifactError) as error:
        load_tokenizer(str(tmp_path))
    check_one_line(error, "tokenizer.json", "vocab.json", "merges.txt", "vocab.txt")

    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    with pytest.raises(ArtifactError) as error:
        load_tokenizer(str(tmp_path))
    check_one_line(error, f"{tmp_path / 'tokenizer.json'} is not a valid tokenizer file", "retrain")

    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    with pytest.raises(ArtifactError) as error:
        load_tokenizer(str(tmp_path / "tokenizer.json"))
    check_one_line(error, "is not a valid tokenizer file")


def test_config_naming_a_token_outside_the_vocabulary_is_refused(trained, tmp_path):
    trained["char"].save(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"lmkit_type": "char",
                                                                "special_tokens": {"eos": "</s>"}}))
    with pytest.raises(ArtifactError) as error:
        load_tokenizer(str(tmp_path))
    check_one_line(error, "tokenizer_config.json", "'</s>'")


def test_importing_does_not_import_torch():
    code = "import sys, lmkit.tokenizers; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gpt_style_vocab_and_merges_load_as_word_bpe(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat, and the dog ran far away.\n" * 50)
    trained = train_tokenizer("bpe", [str(corpus)], WordBPEOptions(vocab_size=120), progress=False)
    folder = tmp_path / "openai-gpt"
    folder.mkdir()
    trained.hf_tokenizer.model.save(str(folder))  # vocab.json + merges.txt, as OpenAI's GPT shipped them
    loaded = load_tokenizer(str(folder))
    assert loaded.kind == "bpe" and loaded.unk_id == trained.unk_id
    for text in ("the cat sat on the mat", "The dog ran far, far away!"):
        assert loaded.encode(text) == trained.encode(text)
        assert loaded.decode(loaded.encode(text)) == trained.decode(trained.encode(text))


@pytest.mark.parametrize("kind", KINDS)
def test_a_continuation_reads_as_it_does_after_its_prompt(trained, kind, corpus):
    """Tokenizer.continuation: what tokens add after a prompt, for every kind, is the whole text less the prompt's.
    A trial: `lmkit generate` printed prompt + decode(continuation), which a word-end BPE (GPT, ULMFiT) glued into
    "the redthe the"; the CLI now prints that whole text, streamed or not."""
    tokenizer = trained[kind]
    words = open(os.path.join(corpus, "a.txt"), encoding="utf-8").readline().split()  # words it has learnt
    prompt, continuation = tokenizer.encode_batch([" ".join(words[:3]), " ".join(words[3:6])])
    whole = tokenizer.decode(prompt + continuation)
    assert tokenizer.decode(prompt) + tokenizer.continuation(prompt, continuation) == whole
    if kind == "bpe":  # decoded alone, the first word loses its space: the fault this guards against
        assert tokenizer.decode(prompt) + tokenizer.decode(continuation) != whole
