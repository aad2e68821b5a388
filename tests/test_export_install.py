"""The serving installs of docs/export.md, run for real in fresh virtual environments.

An edge CPU gets `pip install 'dist/lmkit_toolkit-...whl[serve]'`: onnxruntime (CPU), numpy and tokenizers,
no torch, and generates from an export with the same tokens as PyTorch. A GPU server gets the wheel with
`[serve-gpu]`: onnxruntime-gpu and not onnxruntime (resolved with --dry-run: the GPU wheel is large and
needs a GPU to run). The wheel is this checkout's (distribution lmkit-toolkit), built without network access
under the name the docs give it;
everything else comes from the package index, so these tests run only with LMKIT_SLOW_TESTS=1
(about 30 s with a nearby index). Nothing is installed outside the test's temporary directory.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

# The tests that install: slow, and they need the package index.
installs = pytest.mark.skipif(os.environ.get("LMKIT_SLOW_TESTS") != "1",
                              reason="installs from the package index; set LMKIT_SLOW_TESTS=1 to run")

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from test_export import make_tiny_gpt2  # noqa: E402

from lmkit.exports.export import export_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("toolkit", "plugins", "exports", "pyproject.toml", "setup.py", "README.md")
WHEEL = "dist/lmkit_toolkit-0.1.0-py3-none-any.whl"  # what `pip wheel --no-deps --wheel-dir dist .` builds
EDGE = f"pip install '{WHEEL}[serve]'"
GPU_SERVER = f"pip install '{WHEEL}[serve-gpu]'"
RUNTIMES = {"onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn"}
PROMPTS = ["--prompt", "the cat sat on", "--prompt", "dog", "--max-new-tokens", "8", "--json"]


def test_the_install_commands_are_documented():
    for page in ("docs/export.md", "README.md"):
        with open(os.path.join(ROOT, page), encoding="utf-8") as handle:
            text = handle.read()
        assert EDGE in text and GPU_SERVER in text, page


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """The wheel of this checkout, built from a copy (no build/ or egg-info left in the tree): the file the docs name."""
    root = tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        source = os.path.join(ROOT, name)
        if os.path.isdir(source):
            shutil.copytree(source, root / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / "src" / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--wheel-dir", str(root / "dist"), str(root / "src")],
                   check=True, capture_output=True, timeout=300)
    (built,) = os.listdir(root / "dist")
    assert built == os.path.basename(WHEEL), f"the docs install {WHEEL}; this checkout builds {built}: update them"
    return str(root / "dist" / built)


def make_venv(path) -> str:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True, timeout=300)
    return os.path.join(str(path), "bin", "python")


def pip(python: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and re.search(r"No matching distribution|Could not find a version|connection",
                                          done.stderr, re.I):
        pytest.skip(f"the package index is not reachable: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    return done


def command(documented: str, wheel: str) -> list[str]:
    """The documented `pip install 'dist/lmkit_toolkit-...whl[extra]'`, with the wheel just built in its place."""
    path, extra = re.fullmatch(r"pip install '([^'\[]+)\[([\w,-]+)\]'", documented).groups()
    assert path == WHEEL
    return ["install", f"{wheel}[{extra}]"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model_dir = make_tiny_gpt2(tmp_path_factory)
    out = str(tmp_path_factory.mktemp("exports") / "m0")
    export_model(model_dir, out)
    return model_dir, out


@pytest.mark.slow
@installs
def test_an_edge_install_is_torch_free_and_generates_from_an_export(wheel, exported, tmp_path):
    model_dir, export_dir = exported
    python = make_venv(tmp_path / "edge")
    pip(python, "--quiet", *command(EDGE, wheel))
    installed = {entry["name"].lower() for entry in json.loads(pip(python, "list", "--format", "json").stdout)}
    assert "torch" not in installed and installed & RUNTIMES == {"onnxruntime"}
    assert {"lmkit-toolkit", "numpy", "tokenizers", "starlette", "uvicorn"} <= installed and "lmkit" not in installed
    pip(python, "check")
    lmkit = os.path.join(os.path.dirname(python), "lmkit")

    on_edge = subprocess.run([lmkit, "generate", export_dir, *PROMPTS], capture_output=True, text=True, timeout=120)
    assert on_edge.returncode == 0, on_edge.stderr
    on_torch = subprocess.run([sys.executable, "-m", "lmkit", "generate", model_dir, *PROMPTS], capture_output=True,
                              text=True, timeout=120)
    assert on_torch.returncode == 0, on_torch.stderr
    assert [r["tokens"] for r in json.loads(on_edge.stdout)] == [r["tokens"] for r in json.loads(on_torch.stdout)]

    inspected = subprocess.run([lmkit, "inspect", export_dir], capture_output=True, text=True, timeout=120)
    assert inspected.returncode == 0 and "model.onnx" in inspected.stdout, inspected.stderr
    no_torch = subprocess.run([lmkit, "generate", model_dir, *PROMPTS], capture_output=True, text=True, timeout=120)
    assert no_torch.returncode == 1
    assert no_torch.stderr.startswith("error: lmkit generate on a model directory needs PyTorch")


@pytest.mark.slow
@installs
def test_a_gpu_server_install_has_onnxruntime_gpu_and_not_onnxruntime(wheel, tmp_path):
    python = make_venv(tmp_path / "gpu")
    report = tmp_path / "report.json"
    pip(python, *command(GPU_SERVER, wheel)[:1], "--dry-run", "--quiet", "--report", str(report),
        *command(GPU_SERVER, wheel)[1:])
    names = {entry["metadata"]["name"].lower() for entry in json.loads(report.read_text())["install"]}
    assert "torch" not in names and names & RUNTIMES == {"onnxruntime-gpu"}
