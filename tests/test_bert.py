"""The BERT family: encoders (BERT, ALBERT, RoBERTa), masked LM with NSP/SOP, the pre-training data,
and the CLI on them (train, show, embed). Everything at tiny sizes."""
import json
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmkit.documents import read_documents  # noqa: E402
from lmkit.model import compose, load_model  # noqa: E402
from lmkit.plugins.bert.config import MaskedLMOptions  # noqa: E402
from lmkit.plugins.bert.data import IGNORE, Masker  # noqa: E402
from lmkit.training.arguments import TrainingArguments  # noqa: E402
from lmkit.training.batches import DataContext, batches_for  # noqa: E402

WORDS = ("the cat dog sat on a mat ran far away quickly home under tree big small red blue green "
         "jumping unbelievable wonderful").split()
TINY = ["encoder.n_layers=1", "encoder.d_model=32", "encoder.d_ff=64"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """60 documents of 2-7 sentences, one sentence per line, a blank line between documents."""
    rng = np.random.default_rng(0)
    documents = []
    for _ in range(60):
        sentences = [" ".join(rng.choice(WORDS, size=rng.integers(4, 12))) + "."
                     for _ in range(rng.integers(2, 8))]
        documents.append("\n".join(sentences))
    path = tmp_path_factory.mktemp("corpus") / "documents.txt"
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def models(corpus, tmp_path_factory) -> dict[str, str]:
    """bert-tiny (wordpiece), albert-tiny (unigram) and roberta-tiny (byte-level BPE) model directories."""
    from lmkit.tokenizers import (
        ByteLevelBPE,
        ByteLevelBPEOptions,
        Unigram,
        UnigramOptions,
        WordPiece,
        WordPieceOptions,
    )

    root = tmp_path_factory.mktemp("bert-models")
    tokenizers = {
        "bert": WordPiece.train([corpus], WordPieceOptions(vocab_size=120), progress=False),
        "albert": Unigram.train([corpus], UnigramOptions(
            vocab_size=100, lowercase=True, special_tokens=("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")),
            progress=False),
        "roberta": ByteLevelBPE.train([corpus], ByteLevelBPEOptions(
            vocab_size=300, special_tokens=("<s>", "<pad>", "</s>", "<unk>", "<mask>")), progress=False),
    }
    out = {}
    for family, tokenizer in tokenizers.items():
        tokenizer.save(str(root / f"{family}-tokenizer"))
        out[family] = str(root / family)
        layers = ["encoder.n_layers=2"] if family == "albert" else []  # 2 layers share one
        compose(f"{family}-tiny", [f"tokenizer={root / f'{family}-tokenizer'}", *TINY, *layers], out[family])
    return out


def pretraining_batches(model_dir, corpus, *, seq_len=64, **options):
    model, tokenizer, config = load_model(model_dir)
    if options:
        from dataclasses import replace

        model.objectives["masked-lm"].options = replace(model.objectives["masked-lm"].options, **options)
    args = TrainingArguments.from_dict(dict(data=[corpus], steps=1, batch_size=8, seq_len=seq_len))
    objectives = [o["type"] for o in config["spec"]["objectives"]]
    return batches_for(DataContext(model, tokenizer, args, objectives, progress=False, say=lambda _: None)), tokenizer


# -- masking -----------------------------------------------------------------------------------------


def test_masking_statistics_on_a_large_sample(models, corpus):
    """15% of the ordinary tokens are picked; of those 80% [MASK], 10% random, 10% unchanged; never a special."""
    batches, tokenizer = pretraining_batches(models["bert"], corpus, seq_len=128)
    batch = batches.train(0, 3000)  # ~50 epochs of the 57 training sequences, each masked anew
    ids, labels, real = batch["input_ids"], batch["labels"], batch["attention_mask"]
    special = np.isin(np.where(labels != IGNORE, labels, ids),
                      [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id])
    picked = labels != IGNORE
    candidates = real & ~special
    assert not (picked & special).any(), "a special token was picked"
    assert np.isin(ids[special & real], [tokenizer.cls_id, tokenizer.sep_id]).all(), "a special token was changed"
    rate = picked.sum() / candidates.sum()
    masked = (ids[picked] == tokenizer.mask_id).mean()
    kept = (ids[picked] == labels[picked]).mean()
    replaced = 1 - masked - kept
    print(f"\nmasking over {candidates.sum():,} tokens: picked {rate:.4f}, of them [MASK] {masked:.4f}, "
          f"random {replaced:.4f}, unchanged {kept:.4f}")
    assert abs(rate - 0.15) < 0.005
    assert abs(masked - 0.8) < 0.01 and abs(replaced - 0.1) < 0.01 and abs(kept - 0.1) < 0.01
    random_ids = ids[picked & (ids != tokenizer.mask_id) & (ids != labels)]
    assert not np.isin(random_ids, [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]).any()


def test_whole_word_masking_picks_every_piece_of_a_word():
    # ids: [CLS] un ##believ ##able cat dog ##s [SEP]; word starts marked
    ids = np.array([1, 10, 11, 12, 13, 14, 15, 2])
    starts = np.array([1, 1, 0, 0, 1, 1, 0, 1], dtype=bool)
    candidate = np.array([0, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    masker = Masker(MaskedLMOptions(whole_word=True, mask_prob=0.5), mask_id=3, special_ids=[0, 1, 2, 3],
                    vocab_size=20)
    words = [[1, 2, 3], [4], [5, 6]]
    for seed in range(200):
        _, labels = masker(ids, candidate, starts, np.random.default_rng(seed))
        picked = labels != IGNORE
        assert not picked[[0, 7]].any()
        for word in words:
            assert picked[word].all() or not picked[word].any(), (seed, picked)


def test_ngram_masking_picks_spans_of_words_with_p_proportional_to_1_over_n():
    masker = Masker(MaskedLMOptions(max_ngram=3), mask_id=3, special_ids=[0, 1, 2, 3], vocab_size=50)
    assert np.allclose(masker.ngram_p, [6 / 11, 3 / 11, 2 / 11])
    ids = np.concatenate([[1], np.arange(10, 40), [2]])
    candidate = np.ones(len(ids), dtype=bool)
    candidate[[0, -1]] = False
    starts = np.ones(len(ids), dtype=bool)
    runs = []
    for seed in range(300):
        _, labels = masker(ids, candidate, starts, np.random.default_rng(seed))
        picked = np.flatnonzero(labels != IGNORE)
        assert len(picked) == round(30 * 0.15)
        runs.extend(np.diff(np.flatnonzero(np.diff(np.concatenate([[-2], picked])) != 1).tolist() + [len(picked)]))
    assert max(runs) >= 3 and np.mean(runs) > 1.3  # unigram-only picking would give runs of ~1.1


def test_dynamic_masking_draws_a_new_mask_every_epoch_and_the_same_one_on_resume(models, corpus):
    batches, _ = pretraining_batches(models["roberta"], corpus)
    n = len(batches.train_sequences)
    sequence = int(batches.order(0)[0])
    first_epoch = batches.sample(batches.train_sequences, sequence, 0, 0)
    second_epoch = batches.sample(batches.train_sequences, sequence, 1, 0)
    assert (first_epoch[0] != second_epoch[0]).any() or (first_epoch[2] != second_epoch[2]).any()
    # sample i of the stream is the same whichever run reads it (exact resume)
    again, _ = pretraining_batches(models["roberta"], corpus)
    for key, value in batches.train(n - 3, 6).items():
        assert np.array_equal(value, again.train(n - 3, 6)[key]), key
    static, _ = pretraining_batches(models["roberta"], corpus, dynamic=False)
    a, b = (static.sample(static.train_sequences, sequence, epoch, 0) for epoch in (0, 1))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])


# -- sequences ---------------------------------------------------------------------------------------


def _contiguous(tokens: np.ndarray, stream: np.ndarray) -> bool:
    windows = np.lib.stride_tricks.sliding_window_view(stream, len(tokens))
    return bool((windows == tokens).all(axis=1).any())


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_sentence_pairs_for_nsp_and_sop(models, corpus, family):
    batches, tokenizer = pretraining_batches(models[family], corpus, seq_len=128)
    sequences, stream = batches.train_sequences, batches.train_corpus.tokens
    labels = []
    for index in range(len(sequences)):
        for epoch in range(4):
            ids, types, candidate, _, label = sequences.make(index, np.random.default_rng([epoch, index]))
            labels.append(label)
            seps = np.flatnonzero(ids == tokenizer.sep_id)
            assert ids[0] == tokenizer.cls_id and len(seps) == 2 and seps[1] == len(ids) - 1
            a, b = ids[1:seps[0]], ids[seps[0] + 1:-1]
            assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:] == 1).all()
            assert not candidate[[0, seps[0], seps[1]]].any()
            if label == 0:  # B follows A in the document
                assert _contiguous(np.concatenate([a, b]), stream)
            elif family == "albert":  # SOP: the same two segments, swapped
                assert _contiguous(np.concatenate([b, a]), stream)
    assert 0.4 < np.mean(labels) < 0.6


def test_full_sentences_are_packed_across_documents(models, corpus):
    batches, tokenizer = pretraining_batches(models["roberta"], corpus, seq_len=64)
    sequences = batches.train_sequences
    bodies = []
    for index in range(len(sequences)):
        ids, types, candidate, _, label = sequences.make(index, np.random.default_rng(0))
        assert len(ids) <= 64 and ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id and label == -1
        assert not candidate[ids == tokenizer.sep_id].any()
        bodies.append(ids[1:-1])
    assert np.array_equal(np.concatenate(bodies), sequences.stream)  # every token, in order, once
    inside = [body for body in bodies if (body[:-1] == tokenizer.sep_id).any()]
    assert inside, "no sequence crosses a document boundary"
    batch = batches.train(0, 4)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}


def test_documents_are_split_at_blank_lines_and_cached(tmp_path, models):
    from lmkit.documents import load_corpus
    from lmkit.tokenizers import load_tokenizer

    path = tmp_path / "docs.txt"
    path.write_text("one.\ntwo.\n\n\nthree.\n  \nfour.\nfive.")
    assert read_documents([str(path)]) == [["one.", "two."], ["three."], ["four.", "five."]]
    tokenizer = load_tokenizer(models["bert"])
    corpus = load_corpus([str(path)], tokenizer)
    assert corpus.documents == 3 and len(corpus.offsets) == 6
    assert list((tmp_path / ".lmkit-cache").glob("*.sentences.npz"))
    cached = load_corpus([str(path)], tokenizer)
    assert all(np.array_equal(getattr(corpus, name), getattr(cached, name))
               for name in ("tokens", "word_start", "offsets", "doc_starts"))


# -- encoders ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "albert", "roberta"])
def test_encoder_interface_and_padding(models, family):
    model, tokenizer, _ = load_model(models[family])
    encoder = model.encoder
    ids = torch.tensor([tokenizer.encode("the cat sat on a mat", add_special_tokens=True)])
    T = ids.size(1)
    padded = torch.cat([ids, torch.full((1, 3), tokenizer.pad_id)], dim=1)
    mask = torch.cat([torch.ones(1, T, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        states = encoder(ids).last_hidden_state
        features = encoder(padded, attention_mask=mask, token_type_ids=torch.zeros_like(padded))
        states_padded = features.last_hidden_state
    assert states.shape == (1, T, encoder.config.d_model)
    assert torch.allclose(states, states_padded[:, :T], atol=1e-5)
    if family == "roberta":  # positions count real tokens (fairseq), so left padding changes nothing either
        left = torch.cat([torch.full((1, 3), tokenizer.pad_id), ids], dim=1)
        with torch.no_grad():
            states_left = encoder(left, attention_mask=mask.flip(1)).last_hidden_state
        assert torch.allclose(states, states_left[:, 3:], atol=1e-5)
    assert features.pooler_output.shape == (1, encoder.d_model)
    assert torch.allclose(features.pooler_output, encoder.pooled(states_padded))
    assert features.attention_mask.tolist() == mask.tolist()
    expected = {"bert": 128, "albert": 128, "roberta": 128}[family]  # roberta-tiny: 130 rows - offset 2
    assert encoder.max_positions == expected
    with pytest.raises(ValueError, match=f"at most {expected} tokens"):
        encoder(torch.zeros(1, expected + 1, dtype=torch.long))


def test_albert_sharing_stores_shared_parameters_once(models):
    from lmkit.plugins.bert.config import AlbertConfig
    from lmkit.plugins.bert.model import AlbertEncoder

    counts, unshared = {}, set()
    for sharing in ("none", "attention", "ffn", "all"):
        encoder = AlbertEncoder(AlbertConfig(vocab_size=100, d_model=32, n_layers=4,
                                             n_heads=4, d_ff=64, d_embed=8,
                                             sharing=sharing))
        counts[sharing] = sum(t.numel() for t in encoder.state_dict().values())
        assert counts[sharing] == sum(p.numel() for p in encoder.parameters())  # each tensor saved once
        unshared.add(encoder.parameters_without_sharing())
        if sharing == "all":
            assert not any(".h.1." in key for key in encoder.state_dict())
        assert encoder.embeddings.word_embeddings.weight.shape == (100, 8)  # V x E
        encoder(torch.randint(0, 100, (2, 5))).last_hidden_state.sum().backward()  # shared weights get gradients
        if sharing == "attention":  # a conversion reaches the shared modules through layer 0
            assert encoder.double()(torch.randint(0, 100, (2, 5))).last_hidden_state.dtype == torch.float64
    assert counts["all"] < counts["attention"] < counts["ffn"] < counts["none"]
    assert unshared == {counts["none"]}


# -- the CLI -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,objectives", [("bert", "masked-lm+next-sentence"),
                                               ("albert", "masked-lm+sentence-order"),
                                               ("roberta", "masked-lm")])
def test_lmkit_train_runs_each_composition(models, corpus, family, objectives, tmp_path, run):
    import shutil

    directory = shutil.copytree(models[family], tmp_path / family)
    config = json.loads((directory / "config.json").read_text())
    assert "+".join(o["type"] for o in config["spec"]["objectives"]) == objectives
    result = run("train", directory, "--data", corpus, "--steps", "3", "--batch-size", "4", "--seq-len", "32",
                 "--eval-every", "3", "--eval-batches", "1", "--warmup", "1", "--lr", "1e-3")
    assert result.code == 0, result.err
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and np.isfinite(records[-1]["loss"]) and np.isfinite(records[-1]["val_loss"])
    # Each objective's loss, and perplexity of the masked-LM part alone (not of MLM + NSP summed).
    last, types = records[-1], objectives.split("+")
    if len(types) > 1:
        assert last["loss"] == pytest.approx(sum(last[f"loss_{t}"] for t in types), rel=1e-4)
        assert last["val_loss"] == pytest.approx(sum(last[f"val_loss_{t}"] for t in types), rel=1e-4)
        assert last["val_ppl"] == pytest.approx(math.exp(last["val_loss_masked-lm"]))
        assert "masked-lm" in result.err and types[1] in result.err
    else:
        assert not any(key.startswith("loss_") for key in last)
        assert last["val_ppl"] == pytest.approx(math.exp(last["val_loss"]))
    result = run("train", directory, "--resume", "--steps", "4")
    assert result.code == 0, result.err


def test_show_reports_what_sharing_saves(models, run):
    result = run("show", models["albert"], "--json")
    summary = json.loads(result.out)
    saved = summary["parameters_saved_by_sharing"]["encoder"]
    assert saved > 0 and summary["parameters_without_sharing"]["encoder"] == summary["parameters"]["encoder"] + saved
    assert "cross-layer sharing saves" in run("show", models["albert"]).out
    assert "parameters_saved_by_sharing" not in run("show", models["bert"], "--json").out


def test_lmkit_embed_gives_token_states_and_pooled_vectors(models, tmp_path, run):
    from safetensors.numpy import load_file

    model, tokenizer, _ = load_model(models["bert"])
    texts = ["the cat sat", "a big red tree under the blue home"]
    result = run("embed", models["bert"], "--text", texts[0], "--text", texts[1], "--pool", "cls", "--tokens")
    assert result.code == 0, result.err
    records = json.loads(result.out)
    with torch.no_grad():
        ids = torch.tensor([tokenizer.encode(texts[0], add_special_tokens=True)])
        expected = model.embed(ids, torch.ones_like(ids, dtype=torch.bool))
    assert records[0]["input_ids"][0] == tokenizer.cls_id
    assert np.allclose(records[0]["embedding"], expected.pooler_output[0].numpy(), atol=1e-5)
    assert np.allclose(records[0]["token_states"], expected.last_hidden_state[0].numpy(), atol=1e-5)
    out = tmp_path / "vectors.safetensors"
    assert run("embed", models["bert"], "--text", texts[0], "--text", texts[1], "--pool", "mean",
               "--out", out).code == 0
    assert load_file(str(out))["pooled"].shape == (2, 32)
    long_text = " ".join(["cat"] * 200)
    result = run("embed", models["bert"], "--text", long_text)
    assert result.code != 0 and "beyond the model's 128 positions" in result.err
    result = run("embed", models["bert"], "--text", long_text, "--truncate", "--tokens")
    assert result.code == 0 and "cut to the model's 128 positions" in result.err
    assert json.loads(result.out)[0]["input_ids"][-1] == tokenizer.sep_id


def test_spec_errors_are_one_line(models, tmp_path, run):
    result = run("compose", "albert-tiny", "--set", "encoder.sharing=some", "--out", tmp_path / "x")
    assert result.code != 0 and "sharing" in result.err and "'all'" in result.err
    result = run("compose", "roberta-tiny", "--set", "objectives=[{type=\"next-sentence\"}]", "--out", tmp_path / "y")
    assert result.code != 0 and "pooled [CLS]" in result.err
    assert os.path.isdir(models["bert"])
