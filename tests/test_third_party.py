"""A real third-party plugin, pip-installed with its own entry point, and one that breaks at import."""
import json

import pytest
from conftest import run_subprocess


@pytest.fixture(scope="module")
def lmkit_with(third_party_site):
    def run(*args, **kwargs):
        return run_subprocess(*args, python_path=third_party_site, **kwargs)

    return run


def test_plugins_shows_both_with_versions_and_the_error(lmkit_with):
    result = lmkit_with("plugins", "--json")
    assert result.code == 0, result.err
    plugins = {p["name"]: p for p in json.loads(result.out)}
    example, broken = plugins["example"], plugins["broken"]
    assert (example["distribution"], example["version"], example["status"]) == ("lmkit-example", "0.3.1", "ok")
    assert example["components"] == [
        "decoder:bigram", "exporter:decoder.bigram", "export-runtime:last-token", "importer:bigram",
        "optimizer:adagrad", "schedule:constant", "task-recipe:mean-pool", "preset:bigram-tiny", "command:bigram-top"]
    assert (broken["distribution"], broken["status"]) == ("lmkit-broken", "error")
    assert broken["error"] == "ModuleNotFoundError: No module named 'lmkit_missing_dependency'"
    assert plugins["gpt"]["status"] == "ok"


def test_the_third_party_component_preset_and_command_work(lmkit_with, tmp_path):
    assert "bigram" in lmkit_with("components", "--kind", "decoder").out
    assert "bigram-tiny" in lmkit_with("presets").out
    out = tmp_path / "bigram"
    result = lmkit_with("compose", "bigram-tiny", "--out", out)
    assert result.code == 0, result.err
    config = json.loads((out / "config.json").read_text())
    assert config["plugins"]["example"] == {"module": "lmkit_example", "distribution": "lmkit-example",
                                            "version": "0.3.1"}
    top = lmkit_with("bigram-top", out, "--token-id", "3", "-k", "2")
    assert top.code == 0, top.err
    assert len(top.out.split()) == 2 and all(0 <= int(t) < 64 for t in top.out.split())
    assert "bigram-top" in lmkit_with("--help").out


def test_the_broken_plugin_does_not_take_other_commands_down(lmkit_with, tmp_path):
    result = lmkit_with("compose", "gpt2-tiny", "--out", tmp_path / "m")
    assert result.code == 0, result.err
    assert lmkit_with("show", tmp_path / "m").code == 0


def test_a_model_needing_an_uninstalled_plugin_says_which(lmkit_with, tmp_path):
    out = tmp_path / "bigram"
    assert lmkit_with("compose", "bigram-tiny", "--out", out).code == 0
    result = run_subprocess("show", out)  # show reads files only: it works without the plugin
    assert result.code == 0
    code = f"from lmkit.model import load_model; load_model({str(out)!r})"
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "lmkit", "bigram-top", str(out), "--token-id", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 2  # without the plugin, its command does not exist
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "needs decoder 'bigram' from plugin 'example' (lmkit-example 0.3.1), which is not installed; " \
           "install it with: pip install lmkit-example" in done.stderr


def test_load_plugins_leaves_the_third_party_out(lmkit_with):
    result = lmkit_with("plugins", "--json", env={"LMKIT_LOAD_PLUGINS": "core,gpt"})
    plugins = {p["name"]: p for p in json.loads(result.out)}
    assert plugins["example"]["status"] == plugins["broken"]["status"] == "skipped"
    assert "bigram" not in lmkit_with("components", env={"LMKIT_LOAD_PLUGINS": "core,gpt"}).out


@pytest.fixture(scope="module")
def bigram_corpus(tmp_path_factory, lmkit_with):
    """A character tokenizer of at most 64 tokens (the bigram preset's vocabulary) and text for it."""
    root = tmp_path_factory.mktemp("bigram")
    text = root / "corpus.txt"
    text.write_text("".join(f"the cat {w} sat on the mat\n" for w in ("ran", "hid", "ate", "saw") * 40))
    result = lmkit_with("tokenizer", "train", "--kind", "char", "--vocab-size", 40, text, "--out", root / "tok")
    assert result.code == 0, result.err
    return root


def test_the_third_party_optimizer_and_schedule_train_a_model(lmkit_with, bigram_corpus, tmp_path):
    out = tmp_path / "m"
    assert lmkit_with("compose", "bigram-tiny", "--set", f"tokenizer={bigram_corpus / 'tok'}", "--out", out).code == 0
    result = lmkit_with("train", out, "--data", bigram_corpus / "corpus.txt", "--steps", 3, "--batch-size", 2,
                        "--seq-len", 8, "--optimizer", "adagrad", "--optimizer-set", "lr_decay=0.01",
                        "--schedule", "constant", "--warmup", 0, "--lr", 0.1)
    assert result.code == 0, result.err
    state = json.loads((out / "trainer_state.json").read_text())
    assert (state["arguments"]["optimizer"], state["arguments"]["schedule"]) == ("adagrad", "constant")
    assert state["arguments"]["optimizer_options"] == {"lr_decay": 0.01}
    rates = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"lr"' in line]
    assert rates and all(rate == pytest.approx(0.1) for rate in rates)  # constant, not cosine
    fresh = tmp_path / "fresh"
    assert lmkit_with("compose", "bigram-tiny", "--set", f"tokenizer={bigram_corpus / 'tok'}", "--out", fresh).code == 0
    bad = lmkit_with("train", fresh, "--data", bigram_corpus / "corpus.txt", "--steps", 3,
                     "--batch-size", 2, "--seq-len", 8, "--optimizer", "adagrad", "--optimizer-set", "momentum=1")
    assert bad.code == 1 and "--optimizer adagrad: unknown option 'momentum'" in bad.err


def test_the_third_party_importer_reads_its_model_type(lmkit_with, bigram_corpus, tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    source = tmp_path / "hf-bigram"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "bigram", "vocab_size": 64}))
    table = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    save_file({"logits.weight": table}, str(source / "model.safetensors"))
    (source / "tokenizer.json").write_text((bigram_corpus / "tok" / "tokenizer.json").read_text())
    result = lmkit_with("import-hf", source, "--out", tmp_path / "imported")
    assert result.code == 0, result.err
    from safetensors.numpy import load_file

    weights = load_file(str(tmp_path / "imported" / "model.safetensors"))
    assert np.array_equal(weights["decoder.next_token_logits.weight"], table)


def test_the_third_party_task_recipe_fine_tunes_its_stack(lmkit_with, bigram_corpus, tmp_path):
    model = tmp_path / "m"
    assert lmkit_with("compose", "bigram-tiny", "--set", f"tokenizer={bigram_corpus / 'tok'}", "--out", model).code == 0
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"text": f"the cat {w}", "label": w[0]}) + "\n" for w in ("ran", "hid") * 8))
    result = lmkit_with("finetune", model, "--task", "classification", "--train", task, "--out", tmp_path / "tuned",
                        "--steps", 2, "--batch-size", 4)
    assert result.code == 0, result.err
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["spec"]["objectives"][0]["recipe"] == "mean-pool"
