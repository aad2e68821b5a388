"""What a tokenizer does to text, checked against transformers' tokenizers built from local files.

issue #19: a foreign file's padding and truncation (item 1), tokenizer_config.json flags (item 2),
answer spans read back from offsets (item 5) and words that yield no tokens (item 6); issue #12:
the post-processing template as an option. Every kind lmkit trains and every form it imports.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import unicodedata

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers, processors

from lmkit.errors import ArtifactError, DataError, SpecError
from lmkit.options import build_options
from lmkit.tasks import qa, tokens
from lmkit.tokenizers import (
    ByteLevelBPEOptions,
    CharacterOptions,
    UnigramOptions,
    WordBPEOptions,
    WordPieceOptions,
    load_tokenizer,
    train_tokenizer,
)

transformers = pytest.importorskip("transformers")

AWKWARD = ["Café naïve hacía", "ÅNGSTRÖM über Ωmega", "中国人 said 你好", "don't stop", "zero\u200bwidth",
           "tab\tand\u00a0nbsp", "ﬁne İstanbul", "MiXeD CaSe", "  leading and trailing  ", "a" * 40]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "paris", "river", "bank", "of",
         "mat", "cat", "sat", "on", "in", "where", "did", "it"]
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
TRAINED = {
    "bytelevel-bpe": ByteLevelBPEOptions(vocab_size=320, special_tokens=ROBERTA_SPECIALS),
    "bpe": WordBPEOptions(vocab_size=200),
    "wordpiece": WordPieceOptions(vocab_size=200),
    "unigram": UnigramOptions(vocab_size=200),
    "char": CharacterOptions(vocab_size=120),
}
IMPORTED = ("tokenizer.json", "vocab.txt", "vocab.json+merges.txt")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + rng.choice([".", "!", "?"]) for _ in range(300)]
    path.write_text("\n".join(lines + [line.capitalize() for line in lines[:50]]) + "\n", encoding="utf-8")
    return str(path)


def bert_vocab() -> list[str]:
    """Specials, then every spelling of the awkward strings' words (cased, lowercased, without accents)."""
    def plain(text):
        return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "'", *WORDS]
    for text in AWKWARD:
        for variant in {text, text.lower(), plain(text), plain(text.lower())}:
            for word in variant.split():
                pieces += [word, *word, *(f"##{c}" for c in word)]
    return list(dict.fromkeys(pieces))


@pytest.fixture(scope="module")
def tokenizers_of(corpus, tmp_path_factory):
    """name -> a directory holding that tokenizer: each trained kind and each imported form."""
    root = tmp_path_factory.mktemp("tokenizers")
    made = {}
    for kind, options in TRAINED.items():
        made[kind] = str(root / kind)
        train_tokenizer(kind, [corpus], options, progress=False).save(made[kind])
    # tokenizer.json as transformers' BertTokenizer saves it (no lmkit keys in its config)
    bert = transformers.BertTokenizer(vocab=str(_write_vocab(root / "vocab.txt")))
    bert.save_pretrained(str(root / "tokenizer.json-dir"))
    made["tokenizer.json"] = str(root / "tokenizer.json-dir")
    made["vocab.txt"] = str(root / "vocab.txt-dir")
    os.makedirs(made["vocab.txt"])
    _write_vocab(os.path.join(made["vocab.txt"], "vocab.txt"))
    made["vocab.json+merges.txt"] = str(root / "roberta")
    trained = load_tokenizer(made["bytelevel-bpe"]).hf_tokenizer
    os.makedirs(made["vocab.json+merges.txt"])
    trained.model.save(made["vocab.json+merges.txt"])
    return made


def _write_vocab(path) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(bert_vocab()) + "\n")
    return str(path)


# -- item 1: a file's own padding and truncation -------------------------------------------------------


def padded_tokenizer_json(directory) -> str:
    """A small WordPiece tokenizer.json saved with padding and truncation to 128, as many are shipped."""
    vocab = {token: i for i, token in enumerate(bert_vocab())}
    hf = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    hf.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    hf.enable_padding(length=128, pad_id=0, pad_token="[PAD]")
    hf.enable_truncation(128)
    os.makedirs(directory, exist_ok=True)
    hf.save(os.path.join(directory, "tokenizer.json"))
    return str(directory)


def test_a_files_padding_and_truncation_are_switched_off(tmp_path):
    directory = padded_tokenizer_json(tmp_path / "padded")
    tokenizer = load_tokenizer(directory)
    ten = " ".join(WORDS[:10])
    assert len(tokenizer.encode(ten)) == 10
    assert len(tokenizer.encode(" ".join(WORDS[:10] * 30))) == 300  # not cut to 128
    assert [len(ids) for ids in tokenizer.encode_batch([ten, "the fox"])] == [10, 2]
    reference = transformers.BertTokenizer(vocab=_write_vocab(tmp_path / "vocab.txt"))
    assert tokenizer.encode(ten) == reference(ten, add_special_tokens=False)["input_ids"]
    # what lmkit writes back (import-hf, export) no longer carries them either
    tokenizer.save(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "tokenizer.json").read_text())
    assert saved["padding"] is None and saved["truncation"] is None


def test_the_export_runtime_reads_the_file_without_its_padding(tmp_path):
    from lmkit.exports.runtime import read_tokenizer

    directory = padded_tokenizer_json(tmp_path / "export")
    tokenizer = read_tokenizer(directory, {"tokenizer": "tokenizer.json", "files": {"tokenizer.json": ""}})
    assert len(tokenizer.encode(" ".join(WORDS[:10]))) == 10


def test_embed_of_an_import_attends_to_its_tokens_only(tmp_path, run):
    """The issue's case: a BertModel with random weights beside a padded tokenizer.json, import-hf, embed."""
    pytest.importorskip("torch")
    from safetensors.numpy import load_file

    source = padded_tokenizer_json(tmp_path / "bert")
    config = transformers.BertConfig(vocab_size=len(bert_vocab()), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=512)
    transformers.BertModel(config).save_pretrained(source)
    assert run("import-hf", source, "--out", tmp_path / "model").code == 0
    ten = " ".join(WORDS[:10])
    result = run("embed", tmp_path / "model", "--text", ten, "--tokens", "--out", tmp_path / "e.safetensors",
                 "--device", "cpu")
    assert result.code == 0, result.stderr
    arrays = load_file(str(tmp_path / "e.safetensors"))
    assert arrays["attention_mask"].shape == (1, 12) and arrays["attention_mask"].all()  # [CLS] 10 words [SEP]
    long = " ".join(WORDS[:10] * 30)
    result = run("embed", tmp_path / "model", "--text", long, "--tokens", "--out", tmp_path / "l.safetensors",
                 "--device", "cpu")
    assert result.code == 0, result.stderr
    assert load_file(str(tmp_path / "l.safetensors"))["attention_mask"].shape == (1, 302)  # not cut to 128


# -- item 2: tokenizer_config.json flags -----------------------------------------------------------------


BERT_CONFIGS = [
    {"do_lower_case": True, "strip_accents": False},
    {"do_lower_case": True},
    {"do_lower_case": False},
    {"do_lower_case": False, "strip_accents": True},
    {"do_lower_case": True, "tokenize_chinese_chars": False},
    {"do_lower_case": False, "tokenize_chinese_chars": False, "strip_accents": False},
    {"model_max_length": 8},
]


@pytest.mark.parametrize("flags", BERT_CONFIGS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("form", ["vocab.txt", "tokenizer.json"])
def test_bert_config_flags_give_transformers_ids(flags, form, tmp_path):
    vocab = _write_vocab(tmp_path / "vocab.txt")
    directory = tmp_path / "checkpoint"
    os.makedirs(directory)
    if form == "vocab.txt":
        _write_vocab(directory / "vocab.txt")
    else:  # a tokenizer.json that lowercases and keeps Chinese characters apart: the config overrides it
        transformers.BertTokenizer(vocab=vocab).backend_tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", **flags}))
    reference = transformers.BertTokenizer.from_pretrained(str(directory)) if form == "tokenizer.json" else \
        transformers.BertTokenizer(vocab, **flags)
    legacy = transformers.BertTokenizerLegacy(vocab, **flags)
    tokenizer = load_tokenizer(directory)
    for text in [*AWKWARD, " ".join(AWKWARD)]:
        expected = reference(text)["input_ids"]
        assert tokenizer.encode(text, add_special_tokens=True) == expected, text
        assert legacy(text)["input_ids"] == expected, text  # the two references agree


def test_the_issues_accents_case(tmp_path):
    _write_vocab(tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": true, "strip_accents": false}')
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.decode(tokenizer.encode("Café naïve hacía")) == "café naïve hacía"


def test_bert_special_tokens_named_by_the_config(tmp_path):
    names = {"unk_token": "<oov>", "cls_token": "<bos>", "sep_token": "<eos>", "pad_token": "<blank>"}
    vocab = [names["pad_token"], names["unk_token"], names["cls_token"], names["sep_token"], *bert_vocab()[5:]]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(names))
    reference = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), **names)
    tokenizer = load_tokenizer(tmp_path)
    for text in AWKWARD + ["the ☃ fox"]:
        assert tokenizer.encode(text, add_special_tokens=True) == reference(text)["input_ids"], text
    pair = ("the fox", "a lazy dog")
    assert tokenizer.hf_tokenizer.encode(*pair).ids == reference(*pair)["input_ids"]
    assert (tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id) == (1, 2, 3, 0)


@pytest.mark.parametrize("add_prefix_space", [False, True])
@pytest.mark.parametrize("form", ["vocab.json+merges.txt", "tokenizer.json"])
def test_add_prefix_space_gives_robertas_ids(tokenizers_of, tmp_path, form, add_prefix_space):
    files = [os.path.join(tokenizers_of["vocab.json+merges.txt"], name) for name in ("vocab.json", "merges.txt")]
    reference = transformers.RobertaTokenizer(*files, add_prefix_space=add_prefix_space)
    directory = tmp_path / "roberta"
    os.makedirs(directory)
    if form == "tokenizer.json":  # saved the other way round: the config's flag wins, as in transformers
        transformers.RobertaTokenizer(*files, add_prefix_space=not add_prefix_space).save_pretrained(str(directory))
        assert transformers.AutoTokenizer.from_pretrained(str(directory), add_prefix_space=add_prefix_space)(
            "the fox")["input_ids"] == reference("the fox")["input_ids"]
    else:
        for path in files:
            shutil.copy(path, directory)
    (directory / "tokenizer_config.json").write_text(json.dumps({"add_prefix_space": add_prefix_space}))
    tokenizer = load_tokenizer(directory)
    for text in [*AWKWARD, "the quick fox", "Paris"]:
        assert tokenizer.encode(text, add_special_tokens=True) == reference(text)["input_ids"], text
    assert tokenizer.hf_tokenizer.encode("the fox", "a dog").ids == reference("the fox", "a dog")["input_ids"]


@pytest.mark.parametrize("form, config, words", [
    ("vocab.txt", {"add_prefix_space": True}, "add_prefix_space"),
    ("vocab.txt", {"do_lower_case": "yes"}, "do_lower_case is 'yes'"),
    ("vocab.json+merges.txt", {"do_lower_case": True}, "byte-level BPE"),
    ("vocab.json+merges.txt", {"strip_accents": True}, "strip_accents"),
])
def test_flags_a_form_cannot_take_are_refused_in_one_line(tokenizers_of, tmp_path, form, config, words):
    directory = shutil.copytree(tokenizers_of[form], tmp_path / "copy")
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError) as error:
        load_tokenizer(directory)
    assert words in str(error.value) and "\n" not in str(error.value)


# -- item 5: offsets back to the exact characters ---------------------------------------------------------


CONTEXT = "The quick brown fox jumps over the lazy dog in Paris, on the river bank."


@pytest.mark.parametrize("name", [*TRAINED, *IMPORTED])
def test_every_answer_span_reads_back_exactly(tokenizers_of, name):
    tokenizer = load_tokenizer(tokenizers_of[name])
    words = [(match.group(), match.start()) for match in re.finditer(r"\w+", CONTEXT)]
    answers = list(words)
    answers += [(CONTEXT[a:b + len(t2)], a) for (_, a), (t2, b) in zip(words, words[1:])]  # two-word spans
    questions = [qa.Question(str(i), "Where did the fox jump?", CONTEXT, ((text, start),))
                 for i, (text, start) in enumerate(answers)]
    data = qa.QuestionData("question-answering", questions, (), "squad.json")
    encoded, cut = qa.encode_questions(data, tokenizer, 256)
    assert cut == 0
    for question, row in zip(questions, encoded):
        assert qa.span_text(question, row, (row.start, row.end)) == question.answers[0][0]


def test_the_issues_leading_space(tokenizers_of):
    tokenizer = load_tokenizer(tokenizers_of["bytelevel-bpe"])
    question = qa.Question("q", "What jumps?", CONTEXT, (("fox", CONTEXT.index("fox")),))
    (row,), _ = qa.encode_questions(qa.QuestionData("question-answering", [question], (), "s"), tokenizer, 64)
    assert qa.span_text(question, row, (row.start, row.end)) == "fox"


# -- item 6: words that yield no tokens, one, many, or only unknown ones -------------------------------------

SENTENCE = ("The", "\u200b", "quick", "Ωmega☃", "\u200b\u200b", "fox", "jumps")  # zero, many, unknown tokens
TAGS = (0, 1, 2, 1, 0, 2, 1)


@pytest.mark.parametrize("encoder", [True, False], ids=["encoder", "decoder"])
@pytest.mark.parametrize("name", [*TRAINED, *IMPORTED])
def test_every_word_keeps_its_tag(tokenizers_of, name, encoder):
    from lmkit.tasks.kinds import TokenKind

    tokenizer = load_tokenizer(tokenizers_of[name])
    data = tokens.TaggedData("token-classification", [tokens.TaggedSentence(SENTENCE, TAGS),
                                                      tokens.TaggedSentence(SENTENCE[::-1], TAGS[::-1])],
                             ("O", "B-X", "I-X"), "t.conll")
    encoded, cut = tokens.encode_sentences(data, tokenizer, 128, encoder=encoder)
    assert cut == 0 and [row.words for row in encoded] == [len(SENTENCE)] * 2
    for row, sentence in zip(encoded, data.examples):
        assert [label for label in row.labels if label != -100] == list(sentence.tags)
    # prediction: a model that predicts the gold tags gives every word its own tag back
    kind = TokenKind("token-classification", None)
    kind.scheme = "conlleval"  # what reading a CoNLL file of B/I/O tags resolves to
    batch = tokens.collate_sentences(encoded, 0)
    scores = np.eye(len(data.labels))[batch["labels"].clip(0)] * 10.0  # (B, T, tags): sure of the gold tag
    outputs = kind.outputs([scores], [batch], encoded, data)
    assert (outputs[0]["words"], outputs[0]["tags"]) == (list(SENTENCE), [data.labels[t] for t in TAGS])
    assert kind.metrics([batch["labels"].clip(0)], [batch], encoded, data)["accuracy"] == 1.0


def test_a_word_cut_by_max_length_is_counted(tokenizers_of):
    tokenizer = load_tokenizer(tokenizers_of["wordpiece"])
    data = tokens.TaggedData("token-classification", [tokens.TaggedSentence(SENTENCE, TAGS)], ("O", "B", "I"), "t")
    (row,), cut = tokens.encode_sentences(data, tokenizer, 4, encoder=True)  # [CLS] The \u200b→[UNK] [SEP]
    assert cut == 1 and row.words == 2


def test_a_word_without_tokens_and_no_unknown_token_is_refused(tmp_path):
    hf = HFTokenizer(models.WordLevel({"the": 0, "fox": 1}))  # no unknown token
    hf.normalizer = normalizers.BertNormalizer()
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ArtifactError):  # not one of lmkit's kinds: no silent misreading either
        load_tokenizer(tmp_path)
    bpe = HFTokenizer(models.BPE({"t": 0, "h": 1, "e": 2}, []))
    bpe.normalizer = normalizers.BertNormalizer()
    bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bpe.save(str(tmp_path / "tokenizer.json"))
    data = tokens.TaggedData("token-classification", [tokens.TaggedSentence(("the", "\u200b"), (0, 0))], ("O",), "x")
    with pytest.raises(DataError, match="yields no tokens"):
        tokens.encode_sentences(data, load_tokenizer(tmp_path), 16, encoder=True)


# -- issue #12: the template is an option --------------------------------------------------------------------


@pytest.mark.parametrize("kind, values, single, pair", [
    ("wordpiece", {}, "[CLS] $A [SEP]", "[CLS] $A [SEP] $B [SEP]"),
    ("wordpiece", {"template": "none"}, "$A", "$A $B"),
    ("unigram", {"template": "t5"}, "$A </s>", "$A </s> $B </s>"),
    ("bytelevel-bpe", {"special_tokens": list(ROBERTA_SPECIALS)}, "<s> $A </s>", "<s> $A </s> </s> $B </s>"),
    ("bytelevel-bpe", {}, "$A", "$A $B"),  # GPT-2: no <s>, </s>: auto adds nothing
    ("char", {"special_tokens": ["<pad>", "<unk>", "[gMASK]", "<sop>", "<eop>"], "template": "$A [gMASK] <sop>",
              "template_pair": "$A [gMASK] <sop> $B:1 <eop>:1"},
     "$A [gMASK] <sop>", "$A [gMASK] <sop> $B <eop>"),  # GLM's own
])
def test_templates(corpus, kind, values, single, pair):
    from lmkit.registry import get_host

    component = get_host().component("tokenizer", kind)
    options = build_options(component.options_class(), values, f"tokenizer {kind}")
    tokenizer = component.load().train([corpus], options, progress=False)
    texts = {"$A": "the fox", "$B": "a dog"}
    plain = {name: tokenizer.encode(text) for name, text in texts.items()}

    def expected(template):
        return [i for piece in template.split() for i in plain.get(piece, [tokenizer.token_to_id(piece)])]

    assert tokenizer.encode(texts["$A"], add_special_tokens=True) == expected(single)
    assert tokenizer.hf_tokenizer.encode(texts["$A"], texts["$B"]).ids == expected(pair)


@pytest.mark.parametrize("values, words", [
    ({"template": "bert", "special_tokens": ["<pad>", "</s>", "<unk>"]}, "adds [CLS], [SEP]"),
    ({"template": "[CLS] $A"}, "template_pair"),
    ({"template": "[CLS] text"}, "neither a preset"),
    ({"template": "t5", "template_pair": "$A $B"}, "custom template"),
])
def test_bad_templates_are_refused(values, words):
    with pytest.raises(SpecError) as error:
        build_options(UnigramOptions, values, "tokenizer unigram")
    assert words in str(error.value) and "\n" not in str(error.value)


def test_flags_another_normalizer_already_follows_are_accepted(tmp_path):
    hf = HFTokenizer(models.WordPiece({token: i for i, token in enumerate(bert_vocab())}, unk_token="[UNK]"))
    hf.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.Lowercase()])  # as ALBERT's lowercases
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    assert load_tokenizer(tmp_path).encode("The FOX") == load_tokenizer(tmp_path / "tokenizer.json").encode("the fox")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    with pytest.raises(ArtifactError) as error:
        load_tokenizer(tmp_path)
    assert "do_lower_case=false" in str(error.value) and "\n" not in str(error.value)
