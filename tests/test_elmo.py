"""ELMo (lmkit.plugins.elmo): char ids, the char CNN and projected LSTMs against bilm-tf's TF equations in numpy,
the import of weights in bilm-tf's HDF5 layout, statelessness, the biLM objective and the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402
from elmo_reference import bilm_layers, write_bilm_tf  # noqa: E402

from lmkit.nn.char_ids import boundary_char_ids, vocabulary_char_ids, word_char_ids  # noqa: E402

SENTENCES = ["the cat sat on the mat", "a dog", "the old dog sat near the small cat on a mat"]


# -- part 1: the token encoder ---------------------------------------------------------------------


def test_char_ids_are_bilm_tf_s():
    # Hand-derived from bilm-tf's data.py: begin-of-word 258, bytes, end-of-word 259, padding 260, then +1.
    assert word_char_ids("cat", 8).tolist() == [259, 100, 98, 117, 260, 261, 261, 261]
    assert word_char_ids("é", 6).tolist() == [259, 196, 170, 260, 261, 261]  # UTF-8 bytes c3 a9
    assert boundary_char_ids(256, 5).tolist() == [259, 257, 260, 261, 261]  # <S>
    assert boundary_char_ids(257, 5).tolist() == [259, 258, 260, 261, 261]  # </S>
    # Longer than the slots: cut to 48 bytes, as the reference cuts it, and still closed by end-of-word.
    long = word_char_ids("x" * 60)
    assert long.shape == (50,) and long[0] == 259 and long[49] == 260 and (long[1:49] == ord("x") + 1).all()
    table = vocabulary_char_ids(["<pad>", "<s>", "</s>", "<unk>", "cat"], 8, bos="<s>", eos="</s>", pad="<pad>")
    assert table[0].tolist() == [0] * 8  # a padded token
    assert table[1].tolist() == boundary_char_ids(256, 8).tolist()
    assert table[3].tolist() == word_char_ids("<unk>", 8).tolist()
    assert table[4].tolist() == word_char_ids("cat", 8).tolist()


def test_word_tokenizer_keeps_whole_words_and_marks_the_rest_unknown(tmp_path):
    from lmkit.tokenizers import Word, WordOptions

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    tokenizer = Word.train([str(corpus)], WordOptions(vocab_size=100), progress=False)
    ids = tokenizer.encode("the zebra sat", add_special_tokens=True)
    assert [tokenizer.id_to_token(i) for i in ids] == ["<s>", "the", "<unk>", "sat", "</s>"]
    assert tokenizer.decode(tokenizer.encode("the cat sat")) == "the cat sat"
    assert tokenizer.special_tokens == {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>",
                                        "cls": "<s>", "sep": "</s>"}


def test_projected_lstm_without_clips_is_nn_lstm_with_proj_size():
    from lmkit.nn.projected_lstm import ProjectedLSTM

    torch.manual_seed(0)
    ours = ProjectedLSTM(6, 10, 4, cell_clip=0, proj_clip=0)
    reference = torch.nn.LSTM(6, 10, proj_size=4, batch_first=True)
    with torch.no_grad():
        reference.weight_ih_l0.copy_(ours.weight_ih)
        reference.weight_hh_l0.copy_(ours.weight_hh)
        reference.bias_ih_l0.copy_(ours.bias)
        reference.bias_hh_l0.zero_()
        reference.weight_hr_l0.copy_(ours.weight_proj)
        x = torch.randn(3, 8, 6)
        torch.testing.assert_close(ours(x), reference(x)[0], rtol=1e-5, atol=1e-6)


def test_scalar_mix_starts_as_the_average_and_normalises_over_real_tokens():
    from lmkit.nn.scalar_mix import ScalarMix

    layers = [torch.randn(2, 5, 4) for _ in range(3)]
    torch.testing.assert_close(ScalarMix(3)(layers), sum(layers) / 3)
    mix = ScalarMix(3, layer_norm=True)
    with torch.no_grad():
        mix.scalar_parameters.copy_(torch.tensor([1.0, -1.0, 0.5]))
        mix.gamma.fill_(2.0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    weights = torch.softmax(torch.tensor([1.0, -1.0, 0.5]), 0)
    expected = 0
    for w, h in zip(weights, layers):
        real = h[mask]  # (N, 4): the statistics come from real tokens only
        expected = expected + w * (h - real.mean()) / torch.sqrt(real.var(unbiased=False) + 1e-12)
    torch.testing.assert_close(mix(layers, mask), 2.0 * expected, rtol=1e-5, atol=1e-5)


# -- part 5: import, against the TF equations --------------------------------------------------------


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """bilm-tf files with random weights (options.json, weights.hdf5, vocab.txt), imported with lmkit import-elmo."""
    pytest.importorskip("h5py")
    root = tmp_path_factory.mktemp("bilm-tf")
    written = write_bilm_tf(str(root / "options.json"), str(root / "weights.hdf5"))
    words = sorted({w for s in SENTENCES for w in s.split()})
    (root / "vocab.txt").write_text("\n".join(["</S>", "<S>", "<UNK>", *words]) + "\n")
    out = str(root / "imported")
    result = run_cli("import-elmo", str(root / "options.json"), str(root / "weights.hdf5"), "--vocab",
                     str(root / "vocab.txt"), "--out", out)
    assert result.code == 0, result.err
    return {"root": root, "model": out, **written}


def test_import_matches_the_tf_equations_with_clipping_engaged(released):
    from lmkit.model import load_model

    model, tokenizer, _ = load_model(released["model"])
    ids = [tokenizer.encode(s, add_special_tokens=True) for s in SENTENCES]
    assert tokenizer.id_to_token(ids[0][0]) == "<S>" and tokenizer.id_to_token(ids[0][-1]) == "</S>"
    width = max(map(len, ids))
    batch = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids]).bool()
    with torch.no_grad():
        layers = torch.stack(model.encoder.layers(batch, mask), dim=1).numpy()  # (B, L + 1, T, 2P)
    clipped = {}
    for i, (sentence, row) in enumerate(zip(SENTENCES, ids)):
        # bilm-tf's Batcher: <S> words </S>, each word's shifted char ids.
        chars = np.stack([boundary_char_ids(256, 12)] + [word_char_ids(w, 12) for w in sentence.split()]
                         + [boundary_char_ids(257, 12)])
        np.testing.assert_array_equal(model.encoder.char_table[torch.tensor(row)].numpy(), chars)
        expected = bilm_layers(released["arrays"], released["options"], chars, clipped)
        # float32 against float64 through 2 x 2 clipped recurrences: ~1e-5; a gate or transpose mistake is O(1).
        np.testing.assert_allclose(layers[i, :, :len(row)], expected, atol=1e-4, rtol=0)
    # The weights are large enough that both clips change values: the comparison covers them.
    assert clipped["cell"] > 0 and clipped["proj"] > 0, clipped


def test_import_names_a_dataset_whose_shape_contradicts_options(released, tmp_path):
    import h5py

    root = released["root"]
    bad = tmp_path / "bad.hdf5"
    with h5py.File(bad, "w") as handle:
        for name, value in released["arrays"].items():
            handle.create_dataset(name, data=value[..., :-1] if name == "CNN_proj/W_proj" else value)
    result = run_cli("import-elmo", str(root / "options.json"), str(bad), "--vocab", str(root / "vocab.txt"),
                     "--out", str(tmp_path / "m"))
    assert result.code != 0 and "Traceback" not in result.err
    assert "CNN_proj/W_proj has shape (16, 6)" in result.err and "(16, 7)" in result.err, result.err
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_import_names_a_missing_options_field_or_dataset(released, tmp_path):
    root = released["root"]
    options = json.loads((root / "options.json").read_text())
    del options["lstm"]["cell_clip"]
    (tmp_path / "options.json").write_text(json.dumps(options))
    result = run_cli("import-elmo", str(tmp_path / "options.json"), str(root / "weights.hdf5"), "--vocab",
                     str(root / "vocab.txt"), "--out", str(tmp_path / "m"))
    assert result.code != 0 and "lstm.cell_clip" in result.err and len(result.err.strip().splitlines()) == 1
    write_bilm_tf(str(tmp_path / "o2.json"), str(tmp_path / "w2.hdf5"), skip="RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/B")
    result = run_cli("import-elmo", str(tmp_path / "o2.json"), str(tmp_path / "w2.hdf5"), "--vocab",
                     str(root / "vocab.txt"), "--out", str(tmp_path / "m"))
    assert result.code != 0 and "RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/B" in result.err, result.err


# -- parts 2-4: the biLM, its layers, statelessness -----------------------------------------------------


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    from lmkit.model import compose
    from lmkit.tokenizers import Word, WordOptions

    root = tmp_path_factory.mktemp("elmo")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 20) + "\n")
    Word.train([str(corpus)], WordOptions(vocab_size=100), progress=False).save(str(root / "tok"))
    compose("elmo-tiny", [f"tokenizer={root / 'tok'}", "encoder.init_range=0.5"], str(root / "model"))
    return {"root": root, "corpus": str(corpus), "model": str(root / "model")}


def test_a_sentence_gets_the_same_vectors_whatever_it_is_batched_with(composed):
    from lmkit.model import load_model

    model, tokenizer, _ = load_model(composed["model"])
    encoder = model.encoder
    rows = [tokenizer.encode(s, add_special_tokens=True) for s in SENTENCES]

    def run(batch_rows, pad_id=0):
        width = max(map(len, batch_rows))
        ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in batch_rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch_rows]).bool()
        with torch.no_grad():
            return torch.stack(encoder.layers(ids, mask), dim=1)

    alone = run([rows[1]])[0]
    after_another = (run([rows[2]]), run([rows[1]])[0])[1]  # no state carried from the previous call
    with_longer = run([rows[2], rows[1], rows[0]])[1, :, :len(rows[1])]
    other_padding = run([rows[2], rows[1]], pad_id=7)[1, :, :len(rows[1])]  # padding ids never read
    for other in (after_another, with_longer, other_padding):
        torch.testing.assert_close(other, alone, rtol=1e-5, atol=1e-6)
    assert alone.shape == (3, len(rows[1]), 32)  # L + 1 layers of [fwd; bwd], 2 x 16
    torch.testing.assert_close(alone[0, :, :16], alone[0, :, 16:])  # layer 0 is the token layer, duplicated


def test_each_direction_reads_only_its_own_side(composed):
    """The forward LM's states at t do not depend on tokens after t, the backward LM's not on tokens before."""
    from lmkit.model import load_model

    encoder = load_model(composed["model"])[0].encoder
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 3]])
    changed = ids.clone()
    changed[0, 3] = 11
    with torch.no_grad():
        _, f, b = encoder.directions(ids)
        _, f2, b2 = encoder.directions(changed)
    for k in range(len(f)):
        torch.testing.assert_close(f[k][:, :3], f2[k][:, :3])
        torch.testing.assert_close(b[k][:, 4:], b2[k][:, 4:])
        assert not torch.allclose(f[k][:, 3:], f2[k][:, 3:]) and not torch.allclose(b[k][:, :4], b2[k][:, :4])


def test_loss_is_the_mean_of_the_forward_and_backward_nll(composed):
    import torch.nn.functional as F

    from lmkit.model import load_model

    model = load_model(composed["model"])[0]
    objective = model.objectives["bilm"]
    ids = torch.randint(4, model.encoder.config.vocab_size, (3, 9))
    with torch.no_grad():
        _, f, b = model.encoder.directions(ids)
        softmax = objective.softmax
        forward = F.cross_entropy(softmax(f[-1][:, :-1]).reshape(-1, softmax.out_features), ids[:, 1:].reshape(-1))
        backward = F.cross_entropy(softmax(b[-1][:, 1:]).reshape(-1, softmax.out_features), ids[:, :-1].reshape(-1))
        torch.testing.assert_close(objective(model, {"input_ids": ids}), 0.5 * (forward + backward))
        scored = objective.score_text(model, ids)
    assert scored["forward"][1] == scored["backward"][1] == 3 * 8
    assert math.isclose(scored["forward"][0] / 24, forward.item(), rel_tol=1e-5)


def test_sampled_softmax_touches_only_the_targets_and_the_sampled_rows(composed, monkeypatch):
    from lmkit.model import load_model
    from lmkit.plugins.elmo.config import BiLMObjectiveOptions
    from lmkit.plugins.elmo.objective import BiLMObjective

    model = load_model(composed["model"])[0]
    objective = BiLMObjective.for_model(BiLMObjectiveOptions(sampled_softmax=3), model).train()
    torch.manual_seed(0)
    drawn, multinomial = [], torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda *a, **k: drawn.append(multinomial(*a, **k)) or drawn[-1])
    ids = torch.tensor([[4, 5, 6, 5, 4]])
    objective(model, {"input_ids": ids}).backward()
    touched = set(objective.softmax.weight.grad.abs().sum(1).nonzero().flatten().tolist())
    assert len(drawn) == 2 and all(len(d) == 3 for d in drawn)  # 3 negatives per direction, as bilm-tf draws
    assert {4, 5, 6} <= touched <= {4, 5, 6} | set(torch.cat(drawn).tolist())
    monkeypatch.undo()
    objective.eval()  # evaluation scores with the full softmax
    full = objective(model, {"input_ids": ids}).item()
    assert math.isclose(full, 0.5 * sum(n for n, _ in objective.score_text(model, ids).values()) / 4, rel_tol=1e-5)


# -- the CLI: train, eval, embed, export --------------------------------------------------------------


def test_cli_train_eval_embed_and_export(composed, tmp_path):
    model, corpus = composed["model"], composed["corpus"]
    trained = run_cli("train", model, "--data", corpus, "--steps", 3, "--batch-size", 4, "--seq-len", 16,
                      "--warmup", 0, "--eval-every", 0, "--save-every", 0)
    assert trained.code == 0, trained.err
    evaluated = run_cli("eval", model, "--data", corpus, "--context", 32, "--json")
    assert evaluated.code == 0, evaluated.err
    record = json.loads(evaluated.out)
    f, b = record["scores"]["forward"], record["scores"]["backward"]
    assert record["forward_perplexity"] == pytest.approx(f["perplexity"]) and f["tokens"] == b["tokens"] > 0
    assert record["perplexity"] == pytest.approx(math.exp((f["nll"] + b["nll"]) / (f["tokens"] + b["tokens"])))
    text = run_cli("eval", model, "--data", corpus, "--context", 32)
    assert "forward perplexity" in text.out and "backward perplexity" in text.out and "mean perplexity" in text.out

    def embed(directory, *args):
        result = run_cli("embed", directory, "--text", SENTENCES[0], "--text", SENTENCES[1], *args)
        assert result.code == 0, result.err
        return np.array([r["embedding"] for r in json.loads(result.out)])

    every = embed(model, "--layers", "all")
    assert every.shape == (2, 3 * 32)
    np.testing.assert_allclose(embed(model, "--layers", "1"), every[:, 32:64], atol=1e-6)
    wrong = run_cli("embed", model, "--text", "a dog", "--layers", "3")
    assert wrong.code != 0 and "out of range" in wrong.err and len(wrong.err.strip().splitlines()) == 1
    exported = str(tmp_path / "export")
    assert run_cli("export", model, "--out", exported).code == 0
    # Every layer at once (the mix is the conformance suite's check), and one chosen on the torch-free runtime.
    np.testing.assert_allclose(embed(exported, "--layers", "all"), every, atol=1e-4)
    np.testing.assert_allclose(embed(exported, "--layers", "2"), every[:, 64:], atol=1e-4)
    manifest = json.loads((tmp_path / "export" / "lmkit-onnx.json").read_text())
    assert [t["name"] for t in manifest["graphs"]["model"]["outputs"]] == ["last_hidden_state", "pooler_output",
                                                                          "layers"]


def test_finetune_freezes_the_bilm_and_learns_the_mix(composed, tmp_path):
    from safetensors.torch import load_file

    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"text": s, "label": "long" if len(s.split()) > 4 else "short"}) + "\n"
                            for s in SENTENCES * 4))
    out = str(tmp_path / "tuned")
    result = run_cli("finetune", composed["model"], "--task", "classification", "--train", str(task), "--dev",
                     str(task), "--out", out, "--steps", 3, "--batch-size", 4)
    assert result.code == 0, result.err
    assert "the elmo recipe's 0.001" in result.err  # the stack's own recipe (plugins/elmo/recipe.py)
    before, after = load_file(f"{composed['model']}/model.safetensors"), load_file(f"{out}/best/model.safetensors")
    bilm = [name for name in before if name.startswith("encoder.") and "scalar_mix" not in name]
    assert bilm and all(torch.equal(before[name], after[name]) for name in bilm)  # frozen
    assert not torch.equal(before["encoder.scalar_mix.scalar_parameters"], after["encoder.scalar_mix.scalar_parameters"])


# A bare biLM has no top-1 output to hold fp16 and int8 to (a fine-tuned one has: tests/test_elmo_open_vocabulary.py
# exports its tagger in both): they are held to the cosine of its features to PyTorch's instead.
@pytest.mark.parametrize("flags", [["--dtype", "fp16"], ["--quantize", "int8"]])
def test_a_bare_bilm_in_reduced_precision_is_held_to_its_features_cosine(run, composed, tmp_path, flags):
    result = run("export", composed["model"], "--out", tmp_path / "e", *flags)
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "e" / "lmkit-onnx.json").read_text())
    validation = manifest["validation"]
    assert validation["top1_agreement"] is None and validation["threshold"] == {"min_feature_cosine": 0.99}
    if "int8" in flags:  # the character CNN and the stacked directions are what MatMulNBits cannot take
        assert manifest["quantization"]["dynamic"]["nodes"] > 0
    assert 0.99 <= validation["feature_cosine"] <= 1.0 + 1e-9
    # with top-1 asked for, there is nothing to take it of: refused in one line, nothing written
    asked = run("export", composed["model"], "--out", tmp_path / "f", *flags, "--min-top1", "0.5")
    error = asked.err.strip().splitlines()[-1]  # after the line that says what is being exported
    assert asked.code == 1 and error.startswith("error: ") and "no output whose top-1 choice" in error, asked.err
    assert not (tmp_path / "f").exists()
