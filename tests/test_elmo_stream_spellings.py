"""ELMo trains and is evaluated on every word's own characters: `lmkit train` and `lmkit eval --data` read the
cached token stream, and an unknown word's spelling is kept beside it (lmkit.data.Spellings), so the char CNN
sees "zorblax", not the characters of <unk> (lmkit.token_inputs.window_inputs)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.nn.char_ids import vocabulary_char_ids, word_char_ids  # noqa: E402

SENTENCES = ["the cat sat on the mat", "a dog", "the old dog sat near the small cat on a mat"]
HELD_OUT = "the zorblax sat on the mat\nthe Quimby sat near a dog\n"  # two words the vocabulary lacks


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    from lmkit.model import compose
    from lmkit.tokenizers import Word, WordOptions

    root = tmp_path_factory.mktemp("elmo-spellings")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 20) + "\n")
    Word.train([str(corpus)], WordOptions(vocab_size=100, lowercase=True), progress=False).save(str(root / "tok"))
    compose("elmo-tiny", [f"tokenizer={root / 'tok'}", "encoder.init_range=0.5"], str(root / "model"))
    return {"root": root, "model": str(root / "model")}


def _tokenizer(composed):
    from lmkit.tokenizers import load_tokenizer

    return load_tokenizer(composed["model"])


def test_the_stream_keeps_what_each_unknown_word_spells_and_caches_it(composed, tmp_path):
    from lmkit.data import load_tokens

    tokenizer = _tokenizer(composed)
    data = tmp_path / "held.txt"
    data.write_text(HELD_OUT)
    plain = load_tokens(str(data), tokenizer)  # a stack that reads ids alone: no spellings made or read
    assert plain.spellings is None and not list((tmp_path / ".lmkit-cache").glob("*.spellings*"))
    stream = load_tokens(str(data), tokenizer, spellings=True)
    np.testing.assert_array_equal(stream.tokens, plain.tokens)  # the same ids, tokenized again once
    unk = tokenizer.unk_id
    where = np.flatnonzero(np.asarray(stream.tokens) == unk)
    np.testing.assert_array_equal(stream.spellings.positions, where)
    assert [stream.spellings.table[w] for w in stream.spellings.words] == ["zorblax", "quimby"]  # lowercased
    again = load_tokens(str(data), tokenizer, spellings=True)
    assert again.from_cache and again.spellings.table == stream.spellings.table
    np.testing.assert_array_equal(again.spellings.positions, where)
    # A backward tokenizer reads the stream right to left, its spellings alike.
    backward = load_tokens(str(data), tokenizer.reversed(), spellings=True)
    back_where = np.flatnonzero(np.asarray(backward.tokens) == unk)
    np.testing.assert_array_equal(backward.spellings.positions, back_where)
    assert [backward.spellings.table[w] for w in backward.spellings.words] == ["quimby", "zorblax"]


def test_training_batches_carry_each_words_own_characters(composed, tmp_path):
    from lmkit.model import load_model
    from lmkit.training.arguments import TrainingArguments
    from lmkit.training.batches import DataContext, batches_for

    model, tokenizer, _ = load_model(composed["model"])
    data = tmp_path / "train.txt"
    data.write_text(HELD_OUT * 6)
    args = TrainingArguments(data=(str(data),), steps=1, batch_size=4, seq_len=7, val_fraction=0.2, eval_batches=2)
    batches = batches_for(DataContext(model, tokenizer, args, ["bilm"], progress=False, say=lambda _: None))
    C = model.encoder.config.max_characters_per_token
    table = model.encoder.char_table.numpy()
    seen = set()
    for batch in [batches.train(0, 8), *batches.validation()]:
        ids, chars = batch["input_ids"], batch["char_ids"]
        assert chars.shape == (*ids.shape, C)
        known = ids != tokenizer.unk_id
        np.testing.assert_array_equal(chars[known], table[ids[known]])  # in-vocabulary words as the table spells
        for row, t in zip(*np.nonzero(~known)):
            word = next(w for w in ("zorblax", "quimby") if (chars[row, t] == word_char_ids(w, C)).all())
            seen.add(word)
    assert seen == {"zorblax", "quimby"}
    # the same samples every time they are asked for: what makes a resumed run exact
    first, second = batches.train(3, 5), batches.train(3, 5)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_eval_perplexity_reads_unknown_words_as_embedding_spells_them(composed, tmp_path):
    import lmkit
    from lmkit.embedding import token_ids
    from lmkit.token_inputs import batch_inputs

    data = tmp_path / "held.txt"
    data.write_text(HELD_OUT)
    result = run_cli("eval", composed["model"], "--data", str(data), "--json")
    assert result.code == 0, result.err
    got = json.loads(result.out)

    # By hand: the text as lmkit embed spells it (lmkit.embedding.token_ids), in one window: the end-of-text token
    # eval puts first, the file's words (one document), its closing end-of-text token.
    opened = lmkit.open_model(composed["model"], device="cpu")
    model, tokenizer = opened.model, opened.tokenizer
    spelled: list = []
    token_ids(tokenizer, [HELD_OUT], spellings=spelled)
    words = ["</s>", *spelled[0][1:-1], "</s>"]  # embed's template puts <s> .. </s> around; the stream </s> .. </s>
    assert "zorblax" in words and "quimby" in words
    ids = torch.tensor([[tokenizer.token_to_id(w) or tokenizer.unk_id for w in words]])
    chars = torch.from_numpy(batch_inputs(model.encoder.token_inputs(tokenizer), [words], len(words))["char_ids"])
    np.testing.assert_array_equal(chars[0].numpy(), vocabulary_char_ids(words, chars.shape[-1], bos="<s>", eos="</s>"))
    objective = model.objectives["bilm"]
    scored = objective.score_text(model, ids, char_ids=chars)
    nll = sum(s for s, _ in scored.values())
    count = sum(n for _, n in scored.values())
    assert got["tokens"] == count
    assert got["perplexity"] == pytest.approx(float(np.exp(nll / count)), rel=1e-5)
    forward_nll, forward_count = scored["forward"]
    assert got["forward_perplexity"] == pytest.approx(float(np.exp(forward_nll / forward_count)), rel=1e-5)
    # Read as <unk> the words give another perplexity: the test would see eval fall back to the ids.
    as_unk = objective.score_text(model, ids)
    assert abs(sum(s for s, _ in as_unk.values()) - nll) > 1e-3
