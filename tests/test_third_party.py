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
    assert example["components"] == ["decoder:bigram", "preset:bigram-tiny"]
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
