"""`lmkit import-hf` of BERT, ALBERT and RoBERTa: the same hidden states, pooled output and head logits
as transformers (within 1e-4) and the same token ids, for models built from configs with random weights."""
import json
import os
import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmkit.commands.import_hf import import_hf  # noqa: E402
from lmkit.errors import ArtifactError  # noqa: E402
from lmkit.model import load_model  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog sat on mat and ran café naïve hello world".split()
TEXTS = ["the quick brown fox", "Hello, World! the lazy dog sat on the mat and ran", "café naïve ümlaut ☃", "a"]
TOLERANCE = 1e-4
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=40)


def perturb(model):
    """Weights further from HF's init (biases and LN gains away from 0 and 1), so every tensor matters."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.tie_weights()  # the decoder stays the word embedding
    return model.eval()


def wordpiece_vocab() -> dict[str, int]:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", "!", "."] + sorted(
        {w.lower() for w in WORDS}) + ["##s", "##e", "##d", "c", "##af", "##é", "na", "##ï", "##ve"]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def bytelevel_files(directory) -> tuple[str, str]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(300)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    os.makedirs(directory, exist_ok=True)
    return tuple(tokenizer.model.save(str(directory)))


def unigram_vocab() -> list[tuple[str, float]]:
    pieces = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    scores = [0.0] * len(pieces)
    for word in sorted({w.lower() for w in WORDS}):
        pieces.append("▁" + word)
        scores.append(-5.0 - len(word) / 10)
    for char in sorted(set("".join(WORDS).lower()) | set(",!.")):
        pieces.append(char)
        scores.append(-10.0)
    pieces.append("▁")
    scores.append(-8.0)
    return list(zip(pieces, scores))


def build(family: str, directory):
    """(HF model, HF tokenizer) of one family, saved in `directory` as save_pretrained writes it."""
    if family == "bert":
        tokenizer = transformers.BertTokenizer(vocab=wordpiece_vocab())
        config = transformers.BertConfig(vocab_size=len(tokenizer), **SIZES)
        model = transformers.BertForPreTraining(config)
    elif family == "albert":
        tokenizer = transformers.AlbertTokenizer(vocab=unigram_vocab())
        config = transformers.AlbertConfig(vocab_size=len(tokenizer), embedding_size=16, **SIZES)
        model = transformers.AlbertForPreTraining(config)
    else:
        vocab, merges = bytelevel_files(directory / "bpe")
        tokenizer = transformers.RobertaTokenizer(vocab=vocab, merges=merges)
        config = transformers.RobertaConfig(vocab_size=len(tokenizer), **{**SIZES, "max_position_embeddings": 42})
        model = transformers.RobertaForMaskedLM(config)
    model = perturb(model)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    # Each family's own tokenizer files: BERT's vocab.txt and RoBERTa's vocab.json + merges.txt
    # alone (what older checkpoints have); ALBERT's tokenizer.json (no sentencepiece here).
    # (transformers 5 writes tokenizer.json only, so the older files are written here.)
    if family != "albert":
        os.remove(directory / "tokenizer.json")
    if family == "bert":
        (directory / "vocab.txt").write_text("".join(token + "\n" for token in wordpiece_vocab()), encoding="utf-8")
    if family == "roberta":
        import shutil

        shutil.copy(vocab, directory / "vocab.json")
        shutil.copy(merges, directory / "merges.txt")
    return model, tokenizer


@pytest.fixture(scope="module", params=["bert", "albert", "roberta"])
def pair(request, tmp_path_factory):
    """(family, HF model, HF tokenizer, lmkit model, lmkit tokenizer) after import_hf."""
    source = tmp_path_factory.mktemp(f"hf-{request.param}")
    hf_model, hf_tokenizer = build(request.param, source)
    out = tmp_path_factory.mktemp("imported") / request.param
    import_hf(str(source), str(out))
    model, tokenizer, _ = load_model(str(out))
    return request.param, hf_model, hf_tokenizer, model, tokenizer


def test_the_same_token_ids_as_transformers(pair):
    family, _, hf_tokenizer, _, tokenizer = pair
    for text in TEXTS:
        assert tokenizer.encode(text, add_special_tokens=True) == hf_tokenizer(text)["input_ids"], (family, text)
    assert tokenizer.hf_tokenizer.encode("the fox", "a lazy dog").ids == \
        hf_tokenizer("the fox", "a lazy dog")["input_ids"]
    assert tokenizer.mask_id == hf_tokenizer.mask_token_id and tokenizer.pad_id == hf_tokenizer.pad_token_id


def test_hidden_states_pooled_output_and_head_logits_match(pair):
    family, hf_model, hf_tokenizer, model, _ = pair
    batch = hf_tokenizer(TEXTS, padding=True, return_tensors="pt")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = hf_model(**batch, output_hidden_states=True)
        encoded = model.encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        states = encoded.last_hidden_state
        logits = model.objectives["masked-lm"].logits(model, states)
    figures = {"hidden": (states - expected.hidden_states[-1])[real].abs().max().item(),
               "mlm": (logits - expected.logits if family == "roberta" else logits - expected.prediction_logits)
               [real].abs().max().item()}
    if family != "roberta":
        base = getattr(hf_model, family)
        with torch.no_grad():
            hf_pooled = base(**batch).pooler_output
            pair_objective = "next-sentence" if family == "bert" else "sentence-order"
            pair_logits = model.objectives[pair_objective].logits(model, encoded)
        figures["pooled"] = (encoded.pooler_output - hf_pooled).abs().max().item()
        figures["pair"] = (pair_logits - expected.seq_relationship_logits if family == "bert"
                           else pair_logits - expected.sop_logits).abs().max().item()
    print(f"\n{family} parity (max abs diff): " + ", ".join(f"{k} {v:.2e}" for k, v in figures.items()))
    assert all(value < TOLERANCE for value in figures.values()), figures


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "electra"}))
    with pytest.raises(ArtifactError, match="'electra'.*lmkit imports"):
        import_hf(str(tmp_path), str(tmp_path / "out"))


def test_an_albert_with_several_layer_groups_is_refused(tmp_path):
    from lmkit.plugins.bert.hf import albert_config_from_hf

    with pytest.raises(ValueError, match="num_hidden_groups=2"):
        albert_config_from_hf({"model_type": "albert", "num_hidden_groups": 2, **SIZES, "vocab_size": 10})
