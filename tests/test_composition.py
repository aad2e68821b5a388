"""Parts compose across papers: ALBERT's cross-layer sharing in a GPT-2 decoder, GPT-3's banded
attention in a BERT encoder, and CoVe's frozen features under a task head. Each composes through
the CLI, trains, reloads, exports and runs its export; bad combinations fail at compose time in one
line naming the option."""
import json
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lmkit.model import load_model  # noqa: E402

WORDS = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "far", "away", "quickly", "home", "red", "big"]


def corpus(path, rng, lines=300, words=(6, 14)):
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))
                              for _ in range(lines)) + "\n")
    return path


# -- ALBERT's cross-layer sharing in a GPT-2 decoder ---------------------------------------------------


@pytest.mark.parametrize("sharing", ["all", "attention"])
def test_a_gpt2_decoder_with_albert_sharing_trains_reloads_and_exports(run, tmp_path, sharing):
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions

    (tmp_path / "data").mkdir()
    data = corpus(tmp_path / "data" / "text.txt", random.Random(0))
    tokenizer = ByteLevelBPE.train([str(data)], ByteLevelBPEOptions(vocab_size=300), progress=False)
    tokenizer.save(str(tmp_path / "tok"))
    model_dir = tmp_path / "m"
    done = run("compose", "gpt2-tiny", "--set", f"tokenizer={tmp_path / 'tok'}", "--set",
               f"decoder.vocab_size={tokenizer.vocab_size}", "--set", "decoder.n_layers=3",
               "--set", f"decoder.sharing={sharing}", "--out", model_dir)
    assert done.code == 0, done.err

    summary = json.loads(run("show", model_dir, "--json").out)
    saved = summary["parameters_saved_by_sharing"]["decoder"]
    assert saved > 0
    assert summary["parameters_without_sharing"]["decoder"] == summary["parameters"]["decoder"] + saved
    block = 2 * (64 * 192 + 192 + 64 * 64 + 64) if sharing == "attention" else None  # q/k/v + output, 2 layers
    if block:
        assert saved == block + 2 * 2 * 64  # and ln_1 of layers 1 and 2

    done = run("train", model_dir, "--data", tmp_path / "data", "--steps", "3", "--batch-size", "2",
               "--seq-len", "32", "--eval-every", "0", "--lr", "1e-2")
    assert done.code == 0, done.err

    model, tokenizer, config = load_model(str(model_dir))  # reloads: the shared tensors are stored once
    decoder = model.decoder.eval()
    assert config["spec"]["decoder"]["sharing"] == sharing
    assert decoder.h[2].attn.c_attn is decoder.h[0].attn.c_attn
    assert not any(key.startswith("decoder.h.1.attn") for key in model.state_dict())
    ids = torch.tensor([tokenizer.encode("the cat sat on a mat and ran far away")])
    with torch.no_grad():
        full = decoder(ids)
        cache = decoder.new_cache(1)  # a cache slot per layer, though the layers share parameters
        stepped = torch.cat([decoder(ids[:, :5], cache)] + [decoder(ids[:, i:i + 1], cache)
                                                            for i in range(5, ids.size(1))], dim=1)
    assert cache.length == ids.size(1)
    assert torch.allclose(full, stepped, atol=1e-5)

    done = run("export", model_dir, "--out", tmp_path / "e")
    assert done.code == 0, done.err
    manifest = json.loads((tmp_path / "e" / "lmkit-onnx.json").read_text())
    assert manifest["exporter"]["name"] == "decoder.gpt2"
    assert {t["name"] for t in manifest["graphs"]["model"]["inputs"]} >= {f"past_key_values.{i}.key" for i in range(3)}
    args = ["--prompt", "the cat", "--prompt", "a dog ran", "--max-new-tokens", "12", "--json"]
    on_torch, on_onnx = run("generate", model_dir, *args), run("generate", tmp_path / "e", *args)
    assert on_torch.code == on_onnx.code == 0, on_onnx.err
    tokens = [[row["tokens"] for row in json.loads(result.out)] for result in (on_torch, on_onnx)]
    assert tokens[0] == tokens[1] and all(len(row) == 12 for row in tokens[0])


# -- GPT-3's banded attention in a BERT encoder --------------------------------------------------------


def test_a_bert_encoder_with_gpt3_banded_attention_trains_reloads_and_exports(run, tmp_path):
    from lmkit.tokenizers import WordPiece, WordPieceOptions

    data = corpus(tmp_path / "text.txt", random.Random(1), lines=200, words=(8, 30))
    tokenizer = WordPiece.train([str(data)], WordPieceOptions(vocab_size=80), progress=False)
    tokenizer.save(str(tmp_path / "tok"))
    model_dir = tmp_path / "m"
    done = run("compose", "bert-tiny", "--set", f"tokenizer={tmp_path / 'tok'}", "--set",
               f"encoder.vocab_size={tokenizer.vocab_size}", "--set", "encoder.band_width=4",
               "--set", "encoder.banded_layers=odd", "--out", model_dir)
    assert done.code == 0, done.err
    done = run("train", model_dir, "--data", data, "--steps", "3", "--batch-size", "4", "--seq-len", "32",
               "--eval-every", "0", "--warmup", "1", "--lr", "1e-3")
    assert done.code == 0, done.err

    model, tokenizer, config = load_model(str(model_dir))
    encoder = model.encoder.eval()
    assert encoder.banded == (False, True) and config["spec"]["encoder"]["band_width"] == 4
    texts = ["the cat sat on a mat and ran far away quickly home", "a big red dog"]
    rows = [tokenizer.encode(text, add_special_tokens=True) for text in texts]
    width = max(map(len, rows))
    ids = torch.tensor([row + [tokenizer.pad_id] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    with torch.no_grad():
        states = encoder(ids, mask).last_hidden_state
        # A token more than band_width - 1 positions from the last one cannot read it in the banded
        # layer; the dense layer before it lets it read it only through its neighbours.
        alone = encoder(ids[1:, :len(rows[1])]).last_hidden_state
    assert torch.allclose(states[1, :len(rows[1])], alone[0], atol=1e-5)  # padding is never read

    done = run("export", model_dir, "--out", tmp_path / "e")
    assert done.code == 0, done.err
    manifest = json.loads((tmp_path / "e" / "lmkit-onnx.json").read_text())
    assert manifest["exporter"]["name"] == "encoder.bert" and manifest["validation"]["max_abs_diff"] <= 1e-4
    args = [arg for text in texts for arg in ("--text", text)] + ["--pool", "mean"]
    on_torch, on_onnx = run("embed", model_dir, *args), run("embed", tmp_path / "e", *args)
    assert on_torch.code == on_onnx.code == 0, on_onnx.err
    vectors = [np.array([row["embedding"] for row in json.loads(result.out)]) for result in (on_torch, on_onnx)]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-4)  # blocked in torch, a band mask in ONNX


# -- CoVe's frozen features under a task head -----------------------------------------------------------


def test_a_classifier_on_frozen_cove_features_finetunes_reloads_and_exports(run, tmp_path):
    from lmkit.tokenizers import WordBPEOptions, train_tokenizer

    rng = random.Random(0)
    good, bad = ["good", "fine", "great", "nice"], ["bad", "awful", "poor", "sad"]
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))) + " "
                     + rng.choice(good if i % 2 else bad), "label": i % 2} for i in range(64)]
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "text.txt").write_text("\n".join(row["text"] for row in rows))
    tokenizer = train_tokenizer("bpe", [str(tmp_path / "text.txt")], WordBPEOptions(
        vocab_size=60, min_frequency=1, special_tokens=("<pad>", "<unk>", "<s>", "</s>")), progress=False)
    tokenizer.save(str(tmp_path / "tok"))
    nmt = tmp_path / "nmt"  # an NMT model (untrained here: CoVe's composition is what is tested)
    done = run("compose", "nmt-tiny", "--set", f"tokenizer={tmp_path / 'tok'}", "--set",
               f"encoder.vocab_size={tokenizer.vocab_size}", "--set", f"decoder.vocab_size={tokenizer.vocab_size}",
               "--out", nmt)
    assert done.code == 0, done.err
    spec = tmp_path / "cove.toml"
    spec.write_text(f'[tokenizer]\npath = "{nmt}"\n[encoder]\ntype = "cove"\nmodel = "{nmt}"\n')
    done = run("compose", spec, "--out", tmp_path / "cove")
    assert done.code == 0, done.err

    done = run("finetune", tmp_path / "cove", "--task", "classification", "--train", tmp_path / "task.jsonl",
               "--out", tmp_path / "tuned", "--steps", "12", "--batch-size", "16", "--lr", "1e-2")
    assert done.code == 0, done.err
    model, _, config = load_model(str(tmp_path / "tuned"))
    assert [o["type"] for o in config["spec"]["objectives"]] == ["sequence-head"]
    head = model.objectives["sequence-head"].output_layer()
    assert head.in_features == model.encoder.d_model == 32 + 64  # sized to [embedding; BiLSTM] by for_model
    nmt_model, _, _ = load_model(str(nmt))  # the features stayed frozen: the MT-LSTM is the NMT model's
    assert all(torch.equal(p, q) for p, q in zip(model.encoder.mt_lstm.parameters(), nmt_model.encoder.parameters()))

    done = run("export", tmp_path / "tuned", "--out", tmp_path / "e")
    assert done.code == 0, done.err
    manifest = json.loads((tmp_path / "e" / "lmkit-onnx.json").read_text())
    assert manifest["exporter"]["name"] == "encoder.cove" and manifest["architecture"] == "encoder-only"
    assert manifest["validation"]["max_abs_diff"] <= 1e-4  # on padded batches
    on_torch = run("predict", tmp_path / "tuned", "--data", tmp_path / "task.jsonl")
    on_onnx = run("predict", tmp_path / "e", "--data", tmp_path / "task.jsonl")
    assert on_torch.code == on_onnx.code == 0, on_onnx.err
    expected, got = ([json.loads(line) for line in done.out.splitlines()] for done in (on_torch, on_onnx))
    assert [row["label"] for row in got] == [row["label"] for row in expected] and len(got) == len(rows)
    assert all(got_row["probabilities"] == pytest.approx(row["probabilities"], abs=1e-4)  # float error, not 6-digit text
               for row, got_row in zip(expected, got))
    args = ["--text", "the cat is good", "--text", "a dog sat on the mat far away", "--pool", "mean"]
    on_torch, on_onnx = run("embed", tmp_path / "tuned", *args), run("embed", tmp_path / "e", *args)
    vectors = [np.array([row["embedding"] for row in json.loads(result.out)]) for result in (on_torch, on_onnx)]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)  # a padded batch, row for row


# -- combinations that do not fit -----------------------------------------------------------------------


@pytest.mark.parametrize("preset,setting,message", [
    ("gpt2-tiny", "decoder.sharing=layers",
     "error: decoder.sharing: 'layers' is not allowed; allowed: 'none', 'all', 'attention', 'ffn'"),
    ("gpt3-tiny", "decoder.sharing=some", "error: decoder.sharing: 'some' is not allowed; allowed: 'none', 'all'"),
    ("bert-tiny", "encoder.band_width=129",
     "error: encoder: band_width (129) must be at most the context, max_positions (128)"),
    ("roberta-tiny", "encoder.band_width=129",
     "error: encoder: band_width (129) must be at most the context, max_positions less the position offset, "
     "130 - 2 (128)"),
    ("bert-tiny", "encoder.band_width=0", "error: encoder: band_width must be a positive integer, got 0"),
    ("albert-tiny", "encoder.banded_layers=[5]",
     "error: encoder: banded_layers must be one of odd, even, all, none or a list of layers in 0..1"),
    ("albert-tiny", "encoder.sharing=layers", "error: encoder.sharing: 'layers' is not allowed; allowed: 'none'"),
])
def test_parts_that_do_not_fit_fail_at_compose_time_in_one_line(run, tmp_path, preset, setting, message):
    extra = ["--set", "encoder.band_width=4"] if "banded_layers" in setting else []
    done = run("compose", preset, "--set", setting, *extra, "--out", tmp_path / "m")
    assert done.code == 1 and done.out == "" and done.err.count("\n") == 1, done.err
    assert done.err.startswith(message), done.err
    assert not (tmp_path / "m").exists()
