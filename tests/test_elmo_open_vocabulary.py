"""ELMo reads any word: a word outside the word vocabulary reaches the char CNN as its own characters (not
those of <unk>) in embed, fine-tuning, predict and the torch-free export (lmkit.token_inputs). Also the
paper's BiLSTM tagger recipes, and fine-tuned ELMo models exported (fp32 and int8) and run by lmkit predict."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.nn.char_ids import vocabulary_char_ids, word_char_ids  # noqa: E402

SENTENCES = ["the cat sat on the mat", "a dog", "the old dog sat near the small cat on a mat"]
OOV = ["the zorblax sat on the mat", "the Quimby sat on the mat"]  # position 2: <s> the WORD sat ...


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    from lmkit.model import compose
    from lmkit.tokenizers import Word, WordOptions

    root = tmp_path_factory.mktemp("elmo-oov")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 20) + "\n")
    Word.train([str(corpus)], WordOptions(vocab_size=100, lowercase=True), progress=False).save(str(root / "tok"))
    compose("elmo-tiny", [f"tokenizer={root / 'tok'}", "encoder.init_range=0.5"], str(root / "model"))
    return {"root": root, "model": str(root / "model")}


def _direct(model, tokenizer, words: list[str]) -> np.ndarray:
    """The mix the model computes when the words' char ids are fed directly: (T, 2P)."""
    ids = torch.tensor([[tokenizer.token_to_id(w) or tokenizer.unk_id for w in words]])
    chars = vocabulary_char_ids(words, model.encoder.config.max_characters_per_token, bos="<s>", eos="</s>")
    with torch.no_grad():
        out = model.encoder(ids, torch.ones_like(ids, dtype=torch.bool), char_ids=torch.from_numpy(chars)[None])
    return out.last_hidden_state[0].numpy()


def test_two_unknown_words_get_their_own_vectors_equal_to_feeding_their_characters(composed):
    import lmkit
    from lmkit.token_inputs import spell

    opened = lmkit.open_model(composed["model"], device="cpu")
    tokenizer, model = opened.tokenizer, opened.model
    _, states, ids = opened.embed(OOV, pooling="none")
    assert ids[0] == ids[1] and ids[0][2] == tokenizer.unk_id  # both words are <unk> to the vocabulary
    assert not np.allclose(states[0][2], states[1][2], atol=1e-3)  # yet they read differently
    # what the word spells: the text it replaced, normalised as the tokenizer normalises (lowercased)
    assert spell(tokenizer, tokenizer.hf_tokenizer.encode(OOV[1], add_special_tokens=True), [OOV[1]])[2] == "quimby"
    for text, got in zip(OOV, states):
        words = ["<s>", *text.lower().split(), "</s>"]
        np.testing.assert_allclose(got, _direct(model, tokenizer, words), atol=1e-5)
    # Without char ids the ids alone are read: both words as the characters of <unk>, the same vectors.
    batch = torch.tensor(ids)
    with torch.no_grad():
        fallback = model.encoder(batch, torch.ones_like(batch, dtype=torch.bool)).last_hidden_state
    torch.testing.assert_close(fallback[0, 2], fallback[1, 2])
    wrong = torch.zeros(1, 3, 5, dtype=torch.long)
    with pytest.raises(Exception, match="char_ids has shape"):
        model.encoder(batch[:1, :3], char_ids=wrong)


def test_the_export_spells_unknown_words_as_pytorch_does(composed, tmp_path):
    import lmkit

    exported = str(tmp_path / "export")
    result = run_cli("export", composed["model"], "--out", exported)
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "export" / "lmkit-onnx.json").read_text())
    assert [t["name"] for t in manifest["graphs"]["model"]["inputs"]] == ["char_ids", "attention_mask"]
    assert manifest["dimensions"]["token_inputs"]["type"] == "char-ids"
    torch_states = lmkit.open_model(composed["model"], device="cpu").embed(OOV, pooling="none")[1]
    onnx_model = lmkit.open_model(exported, device="cpu")
    _, onnx_states, _ = onnx_model.embed(OOV, pooling="none")
    for a, b in zip(onnx_states, torch_states):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert not np.allclose(onnx_states[0][2], onnx_states[1][2], atol=1e-3)
    # the export's ids alone are still read (by the vocabulary's spelling), as the model reads them
    ids = np.array([onnx_model.tokenizer.encode(SENTENCES[0], add_special_tokens=True)])
    by_ids = onnx_model.features(ids)["last_hidden_state"]
    direct = lmkit.open_model(composed["model"], device="cpu").features(ids)["last_hidden_state"]
    np.testing.assert_allclose(by_ids, direct, atol=1e-4)


def test_finetuning_and_predict_read_the_characters_of_unknown_words(composed, tmp_path):
    from lmkit.model import load_model
    from lmkit.tasks.inputs import EncoderInputs, collate, encode_task
    from lmkit.tasks.tokens import TaggedData, TaggedSentence, collate_sentences, encode_sentences

    model, tokenizer, _ = load_model(composed["model"])
    token_inputs = model.encoder.token_inputs(tokenizer)
    C = model.encoder.config.max_characters_per_token
    data = TaggedData("token-classification", [TaggedSentence(("the", "zorblax", "sat"), (0, 1, 0))], ("O", "X"), "t")
    encoded, _ = encode_sentences(data, tokenizer, 32, encoder=True)
    batch = collate_sentences(encoded, 0, token_inputs)
    assert batch["input_ids"][0, 2] == tokenizer.unk_id
    np.testing.assert_array_equal(batch["char_ids"][0, 2], word_char_ids("zorblax", C))
    np.testing.assert_array_equal(batch["char_ids"][0, 1], model.encoder.char_table[tokenizer.token_to_id("the")])

    from lmkit.tasks.formats import Example, TaskData

    task = TaskData("classification", [Example(("the zorblax sat",), 0)], ("a",), "t")
    examples, _ = encode_task(task, EncoderInputs(tokenizer, 32))
    sequence = collate(examples, 0, token_inputs=token_inputs)
    assert sequence["char_ids"].shape == (1, 1, 5, C)
    np.testing.assert_array_equal(sequence["char_ids"][0, 0, 2], word_char_ids("zorblax", C))

    # End to end: a tagger fine-tuned from the CLI tags two unknown words from their characters.
    train = tmp_path / "train.conll"
    train.write_text("".join("\n".join(f"{w} {'X' if w == 'cat' else 'O'}" for w in s.split()) + "\n\n"
                             for s in SENTENCES * 3))
    out = str(tmp_path / "tagger")
    result = run_cli("finetune", composed["model"], "--task", "token-classification", "--train", str(train),
                     "--dev", str(train), "--out", out, "--steps", 2, "--batch-size", 4)
    assert result.code == 0, result.err
    words = tmp_path / "oov.conll"
    words.write_text("the\nzorblax\nsat\n\nthe\nquimby\nsat\n")
    predicted = run_cli("predict", f"{out}/best", "--data", str(words))
    assert predicted.code == 0, predicted.err
    rows = [json.loads(line) for line in predicted.out.splitlines() if line.strip()]
    assert rows[0]["words"][1] == "zorblax"
    assert rows[0]["probabilities"][1] != rows[1]["probabilities"][1]


# -- the paper's task model: a BiLSTM tagger over [word embedding; ELMo] (the elmo-bilstm recipes) ---------


@pytest.fixture(scope="module")
def tagger(composed):
    """An elmo-bilstm tagger fine-tuned from the CLI: its directory."""
    root = composed["root"]
    train = root / "tags.conll"
    train.write_text("".join("\n".join(f"{w} {'X' if w == 'cat' else 'O'}" for w in s.split()) + "\n\n"
                             for s in SENTENCES * 3))
    out = str(root / "elmo-bilstm")
    result = run_cli("finetune", composed["model"], "--task", "token-classification", "--recipe", "elmo-bilstm",
                     "--train", str(train), "--dev", str(train), "--out", out, "--steps", 2, "--batch-size", 4)
    assert result.code == 0, result.err
    return out


@pytest.mark.parametrize("recipe", ["elmo-bilstm", "elmo-bilstm-output", "word-bilstm"])
def test_the_tagger_recipes_refuse_other_tasks(composed, recipe, tmp_path):
    # A trial's `--task classification --recipe elmo-bilstm` trained the plain classifier and recorded the recipe.
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{s}\t{'a' if 'cat' in s else 'b'}\n" for s in SENTENCES))
    result = run_cli("finetune", composed["model"], "--task", "classification", "--recipe", recipe, "--train",
                     str(train), "--out", str(tmp_path / "out"), "--steps", 1)
    assert result.code == 1 and result.err.strip().splitlines() == [
        f"error: the {recipe} recipe fine-tunes token-classification, not classification: give --task "
        "token-classification, or leave --recipe out"], result.err
    assert not (tmp_path / "out").exists()


def test_the_bilstm_tagger_recipes_freeze_the_bilm_and_read_elmo_as_asked(composed, tagger, tmp_path):
    from safetensors.torch import load_file

    from lmkit.model import load_model

    out = tagger
    tuned = load_file(f"{out}/best/model.safetensors")
    before = load_file(f"{composed['model']}/model.safetensors")
    bilm = [n for n in before if n.startswith("encoder.") and "scalar_mix" not in n]
    assert bilm and all(torch.equal(before[n], tuned[n]) for n in bilm)  # the biLM frozen
    assert not torch.equal(before["encoder.scalar_mix.scalar_parameters"], tuned["encoder.scalar_mix.scalar_parameters"])
    assert tuned["objectives.token-head.layers.lstm.weight_ih_l0"].shape[1] == 2 * 32  # [word emb; ELMo], 2P each
    # The other two recipes' task models, as their heads build them on this stack.
    from lmkit.objectives.heads import TokenHead
    from lmkit.objectives.options import TokenHeadOptions

    stack = load_model(composed["model"])[0].encoder
    word = TokenHead(TokenHeadOptions(recipe="word-bilstm"), stack.d_model, stack)
    assert word.layers.lstm.weight_ih_l0.shape[1] == 32  # the word embedding alone
    both = TokenHead(TokenHeadOptions(recipe="elmo-bilstm-output"), stack.d_model, stack)
    assert both.score.weight.shape[1] == 32 + 32 and both.layers.output_mix is not None  # [h; ELMo']
    # The tagger's states depend on ELMo only where it reads it.
    model, tokenizer, _ = load_model(f"{out}/best")
    head = model.objectives["token-head"]
    ids = torch.tensor([tokenizer.encode("the cat sat", add_special_tokens=True)])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}
    model.eval()
    with torch.no_grad():
        before = head.scores(model, dict(batch))
        model.encoder.scalar_mix.gamma.mul_(3.0)
        assert not torch.allclose(head.scores(model, dict(batch)), before)
    from lmkit.errors import LmkitError
    from lmkit.plugins.elmo.recipe import ELMoBiLSTMRecipe

    with pytest.raises(LmkitError, match="reads an ELMo biLM"):  # --recipe elmo-bilstm on another family
        ELMoBiLSTMRecipe().token_layers(torch.nn.Linear(2, 2))


# -- the tagger exported: its own graph beside the biLM's (lmkit.exports.heads.layers_graph) --------------------


@pytest.mark.parametrize("recipe", ["elmo-bilstm", "elmo-bilstm-output", "word-bilstm"])
def test_the_tagger_graph_computes_what_the_packed_bilstm_does(composed, recipe):
    """TaggerGraph (no packed sequences, which ONNX lacks) against BiLSTMTagger on right-padded rows."""
    from lmkit.model import load_model
    from lmkit.objectives.heads import TokenHead
    from lmkit.objectives.options import TokenHeadOptions

    model = load_model(composed["model"])[0].eval()
    stack = model.encoder
    torch.manual_seed(0)
    layers = TokenHead(TokenHeadOptions(recipe=recipe), stack.d_model, stack).layers.eval()
    ids = torch.randint(0, stack.config.vocab_size, (3, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5], dtype=torch.bool)
    with torch.no_grad():
        output = stack.frozen_mix(ids, mask)
        want = layers(output, ids)
        given = {"last_hidden_state": output.last_hidden_state, "layers": torch.stack(output.hidden_states, 1)}
        got = layers.export_module()(ids, mask.long(), *(given[name] for name in layers.encoder_outputs))
    torch.testing.assert_close(got, want * mask[..., None], atol=1e-6, rtol=0)
    assert not torch.allclose(got[1, :4], layers(output, ids.flip(1))[1, :4])  # it reads the ids it is given


def test_a_fine_tuned_tagger_exports_in_fp32_fp16_and_int8_and_predict_runs_it_without_torch(tagger, tmp_path,
                                                                                     monkeypatch):
    import subprocess
    import sys

    from conftest import NO_TORCH

    test = tmp_path / "test.conll"
    test.write_text("the O\nzorblax O\ncat X\nsat O\n\na O\nquimby O\ndog O\non O\nthe O\nmat O\n\n")

    def predict(directory, torch_free=False):
        if not torch_free:
            result = run_cli("predict", directory, "--data", str(test))
            assert result.code == 0, result.err
            out = result.out
        else:
            child = NO_TORCH + "from lmkit.cli import main\nmain()\n"
            done = subprocess.run([sys.executable, "-c", child, "predict", directory, "--data", str(test)],
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            out = done.stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    reference = predict(f"{tagger}/best")
    assert [row["words"][1] for row in reference] == ["zorblax", "quimby"]
    # fp16: the biLM's time Loop runs in half precision (lmkit.exports.precision.loose_loop_state_shapes)
    for flags in ((), ("--dtype", "fp16"), ("--quantize", "int8")):
        exported = tmp_path / f"e{'-'.join(flags)}"
        made = run_cli("export", f"{tagger}/best", "--out", exported, *flags)
        assert made.code == 0, made.err
        manifest = json.loads((exported / "lmkit-onnx.json").read_text())
        assert set(manifest["graphs"]) == {"model", "task_layers"}
        assert manifest["task_head"]["layers"] == {"graph": "task_layers", "reads": ["last_hidden_state"]}
        assert manifest["validation"]["top1_graphs"] == ["task_layers"]  # the head's choices, on the tagger's states
        got = predict(str(exported), torch_free=not flags)
        assert [row["tags"] for row in got] == [row["tags"] for row in reference]
        atol = {(): 1e-4, ("--dtype", "fp16"): 1e-2}.get(flags)
        if atol is not None:  # int8 is held to its top-1 floor; its probabilities move by more
            assert manifest["validation"]["max_abs_diff"] < atol
            np.testing.assert_allclose([p for row in got for p in row["probabilities"]],
                                       [p for row in reference for p in row["probabilities"]], atol=atol)
        if flags == ("--dtype", "fp16"):
            assert manifest["dtype"] == "fp16" and manifest["validation"]["top1_agreement"] >= 0.9
    assert manifest["dtype"] == "int8" and manifest["validation"]["top1_agreement"] >= 0.5
    # A task model that does not say how it exports is refused in one line, nothing written.
    from lmkit.plugins.elmo.tagger import BiLSTMTagger

    monkeypatch.delattr(BiLSTMTagger, "export_module")
    refused = run_cli("export", f"{tagger}/best", "--out", str(tmp_path / "refused"))
    assert refused.code != 0 and "BiLSTMTagger" in refused.err and not (tmp_path / "refused").exists()


# -- fine-tuned ELMo models exported: int8, and lmkit predict on the export ------------------------------------


def test_a_fine_tuned_elmo_classifier_exports_in_fp32_and_int8_and_predict_runs_them(composed, tmp_path):
    task = tmp_path / "task.jsonl"
    texts = SENTENCES + OOV + ["a zorblax", "the quimby dog"]
    task.write_text("".join(json.dumps({"text": t, "label": "long" if len(t.split()) > 4 else "short"}) + "\n"
                            for t in texts * 3))
    out = str(tmp_path / "clf")
    result = run_cli("finetune", composed["model"], "--task", "classification", "--train", str(task), "--dev",
                     str(task), "--out", out, "--steps", 3, "--batch-size", 4)
    assert result.code == 0, result.err

    def predict(directory):
        result = run_cli("predict", directory, "--data", str(task))
        assert result.code == 0, result.err
        return np.array([[json.loads(line)["probabilities"][k] for k in ("long", "short")]
                         for line in result.out.splitlines() if line.startswith("{")])

    reference = predict(f"{out}/best")
    for flags, atol in (((), 1e-4), (("--quantize", "int8"), 0.05)):
        exported = str(tmp_path / f"e{len(flags)}")
        made = run_cli("export", f"{out}/best", "--out", exported, *flags)
        assert made.code == 0, made.err
        manifest = json.loads((tmp_path / f"e{len(flags)}" / "lmkit-onnx.json").read_text())
        assert manifest["task_head"]["type"] == "sequence-head"
        np.testing.assert_allclose(predict(exported), reference, atol=atol)  # OOV words spelled in both
    assert manifest["dtype"] == "int8" and manifest["validation"]["top1_agreement"] >= 0.5
