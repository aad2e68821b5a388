"""compose, show and loading: model directories, and everything that can be wrong with them."""
import json
import os
import random

import pytest
import torch

from lmkit.artifacts import read_safetensors_header
from lmkit.errors import ArtifactError
from lmkit.model import load_model
from lmkit.registry import PluginHost


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    words = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "far", "away", "quickly", "home"]
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory):
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions

    out = tmp_path_factory.mktemp("tok")
    ByteLevelBPE.train([corpus], ByteLevelBPEOptions(vocab_size=300), progress=False).save(str(out))
    return str(out)


@pytest.fixture(scope="module")
def vocab(tokenizer_dir):
    from lmkit.tokenizers import load_tokenizer

    return load_tokenizer(tokenizer_dir).vocab_size


@pytest.fixture(scope="module")
def model_dir(tokenizer_dir, vocab, tmp_path_factory):
    from lmkit.model import compose

    out = str(tmp_path_factory.mktemp("runs") / "m0")
    compose("gpt2-tiny", ["decoder.n_layers=1", f"decoder.vocab_size={vocab}", f"tokenizer={tokenizer_dir}"], out)
    return out


def test_compose_writes_a_complete_model_directory(model_dir, vocab):
    assert sorted(os.listdir(model_dir)) == ["config.json", "model.safetensors", "tokenizer.json",
                                             "tokenizer_config.json"]
    config = json.load(open(os.path.join(model_dir, "config.json")))
    assert config["lmkit_version"] == "0.1.0"
    assert config["spec"]["decoder"]["n_layers"] == 1
    assert config["spec"]["tokenizer"] == {"type": "bytelevel-bpe", "vocab_size": vocab}
    assert config["components"]["decoder"] == {"type": "gpt2", "plugin": "gpt"}
    assert config["plugins"]["gpt"] == {"module": "lmkit.plugins.gpt", "distribution": "lmkit-toolkit", "version": "0.1.0"}


def test_loading_rebuilds_the_same_model(model_dir, vocab):
    model, tokenizer, _ = load_model(model_dir)
    assert tokenizer.vocab_size == vocab
    header = read_safetensors_header(os.path.join(model_dir, "model.safetensors"))
    assert set(header) == set(model.state_dict())
    ids = torch.tensor([tokenizer.encode("the cat sat on the mat")])
    again, _, _ = load_model(model_dir)
    assert torch.equal(model.decoder(ids), again.decoder(ids))


def test_the_same_seed_gives_the_same_weights(tokenizer_dir, tmp_path):
    from lmkit.model import compose

    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        compose("gpt2-tiny", [f"tokenizer={tokenizer_dir}"], str(tmp_path / name), seed=seed)
    read = lambda n: open(tmp_path / n / "model.safetensors", "rb").read()  # noqa: E731
    assert read("a") == read("b") != read("c")


def test_show_counts_parameters_per_part(run, model_dir, vocab):
    result = run("show", model_dir, "--json")
    assert result.code == 0, result.err
    shown = json.loads(result.out)
    # gpt2-tiny with one layer: wte vocab x 64, wpe 64x64, one block, ln_f
    block = 2 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + 2 * 64 + (64 * 256 + 256) + (256 * 64 + 64)
    expected = vocab * 64 + 64 * 64 + block + 2 * 64
    assert shown["parameters"] == {"decoder": expected, "total": expected}
    assert shown["spec"]["decoder"]["type"] == "gpt2"
    text = run("show", model_dir)
    assert "decoder" in text.out and f"{expected:,}" in text.out


def test_compose_cli_refuses_a_non_empty_directory_unless_forced(run, tokenizer_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = run("compose", "gpt2-tiny", "--out", out)
    assert result.code == 1 and result.err.count("\n") == 1
    assert "exists and is not empty" in result.err and "--force" in result.err
    assert os.listdir(out) == ["notes.txt"]
    assert run("compose", "gpt2-tiny", "--out", out, "--force").code == 0
    assert "notes.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)


def test_a_failed_compose_writes_nothing(run, tmp_path):
    out = tmp_path / "never"
    result = run("compose", "gpt2-tiny", "--set", "decoder.n_layers=x", "--out", out)
    assert result.code == 1 and not out.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".never")] == []


def test_a_tokenizer_bigger_than_the_vocabulary_is_refused(run, tokenizer_dir, vocab, tmp_path):
    result = run("compose", "gpt2-tiny", "--set", "decoder.vocab_size=100", "--set", f"tokenizer={tokenizer_dir}",
                 "--out", tmp_path / "m")
    assert result.code == 1
    assert f"decoder.vocab_size=100 is smaller than the tokenizer's {vocab} tokens" in result.err


# -- bad model directories -------------------------------------------------------------------------


def copy_model(model_dir, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(model_dir, target)
    return target


def test_a_directory_without_config(tmp_path):
    with pytest.raises(ArtifactError, match="has no config.json: it is not an lmkit model directory"):
        load_model(str(tmp_path))


def test_a_truncated_weights_file(model_dir, tmp_path):
    target = copy_model(model_dir, tmp_path)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="model.safetensors is truncated"):
        load_model(str(target))


def test_a_corrupt_weights_header(model_dir, tmp_path):
    target = copy_model(model_dir, tmp_path)
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:12] = b"\xff\xfe\x00\x01"
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="is corrupt"):
        load_model(str(target))


def test_a_pickle_in_place_of_weights_is_refused(model_dir, tmp_path):
    target = copy_model(model_dir, tmp_path)
    torch.save({"x": torch.zeros(2)}, target / "model.safetensors")
    with pytest.raises(ArtifactError, match="refusing .*model.safetensors: it is a pickle"):
        load_model(str(target))
    os.remove(target / "model.safetensors")
    torch.save({"x": torch.zeros(2)}, target / "pytorch_model.bin")
    with pytest.raises(ArtifactError, match="refusing .*pytorch_model.bin: it is a pickle .*arbitrary code"):
        load_model(str(target))


def test_a_pickle_handed_as_weights_to_compose(run, model_dir, tmp_path):
    pickle = tmp_path / "weights.pt"
    torch.save({"x": torch.zeros(2)}, pickle)
    result = run("compose", "gpt2-tiny", "--weights", pickle, "--out", tmp_path / "m")
    assert result.code == 1 and "it is a pickle" in result.err and not (tmp_path / "m").exists()


def test_weights_that_do_not_match_the_spec_name_the_first_tensor(model_dir, vocab, tmp_path):
    target = copy_model(model_dir, tmp_path)
    config = json.load(open(target / "config.json"))
    config["spec"]["decoder"]["d_model"] = 32
    json.dump(config, open(target / "config.json", "w"))
    with pytest.raises(ArtifactError, match=rf"tensor 'decoder.wte.weight' has shape \[{vocab}, 64\] in the file, "
                                            rf"the spec builds \[{vocab}, 32\]"):
        load_model(str(target))


def test_a_directory_whose_plugin_is_missing_names_it(model_dir):
    from importlib.metadata import entry_points

    without_gpt = PluginHost([ep for ep in entry_points(group="lmkit") if ep.name == "core"])
    with pytest.raises(Exception, match=r"needs decoder 'gpt2' from plugin 'gpt' \(lmkit-toolkit 0.1.0\), which is not "
                                        r"installed; install it with: pip install lmkit-toolkit"):
        load_model(model_dir, host=without_gpt)
    with pytest.raises(Exception, match="which LMKIT_LOAD_PLUGINS leaves out"):
        load_model(model_dir, host=PluginHost(only="core"))


def test_bad_model_directories_on_the_cli(run, tmp_path):
    result = run("show", tmp_path)
    assert result.code == 1 and result.err.startswith("error: ") and result.err.count("\n") == 1
    (tmp_path / "config.json").write_text("{not json")
    result = run("show", tmp_path)
    assert result.code == 1 and "config.json is not valid JSON" in result.err


def test_a_safetensors_file_whose_header_length_looks_like_a_pickle_opcode_loads(tmp_path):
    """A header of 640 bytes starts the file with 0x80 0x02, the opening of a protocol-2 pickle."""
    import struct

    from safetensors.torch import load_file

    header = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode().ljust(640)
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack("<f", 1.5))
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert read_safetensors_header(str(path)) == {"x": {"dtype": "F32", "shape": [1]}}
    assert load_file(str(path))["x"].item() == 1.5


def test_a_spec_files_tokenizer_path_is_read_from_the_files_directory(tokenizer_dir, tmp_path, monkeypatch):
    # A trial's `cd sub && lmkit compose ../good.toml` looked for the file's "tok/" in sub/.
    import shutil

    from lmkit.model import compose

    shutil.copytree(tokenizer_dir, tmp_path / "tok")
    (tmp_path / "good.toml").write_text('preset = "gpt2-tiny"\n[tokenizer]\npath = "tok/"\n[decoder]\nn_layers = 1\n')
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    compose("../good.toml", [], str(tmp_path / "m"))
    assert load_model(str(tmp_path / "m"))[1].vocab_size > 0
