import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from lmkit import cli
from lmkit.registry import reset_host

# onnxruntime (1.32) and onnxruntime-genai write a device id and an event queue under ~/.cache/Microsoft
# unless this is set; the tests, and every child process they start, run without it.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_PLUGINS = os.path.join(HERE, "plugins")


@dataclass
class Result:
    code: int
    out: str
    err: str


# A child Python in which any import of torch or onnx fails, as on a serving install (lmkit[serve]).
NO_TORCH = "import sys\nsys.modules['torch'] = None\nsys.modules['onnx'] = None\n"


def run_cli(*args) -> Result:
    """Run the CLI in-process, as `lmkit ARGS...`: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    reset_host()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main([str(a) for a in args])
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        finally:
            reset_host()
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def run(monkeypatch):
    """run_cli, with environment variables set for the one test (env={...})."""

    def invoke(*args, env: dict | None = None) -> Result:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        return run_cli(*args)

    return invoke


def run_subprocess(*args, env: dict | None = None, python_path: str | None = None, **kwargs) -> Result:
    """Run `python -m lmkit ARGS...` in a fresh interpreter (start-up, entry points, isolation)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LMKIT_")}
    if python_path:
        environment["PYTHONPATH"] = python_path + os.pathsep + environment.get("PYTHONPATH", "")
    environment.update(env or {})
    done = subprocess.run([sys.executable, "-m", "lmkit", *map(str, args)], capture_output=True, text=True,
                          env=environment, timeout=300, **kwargs)
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def third_party_site(tmp_path_factory):
    """The test plugins pip-installed (for real, with their entry points) into a private directory."""
    target = tmp_path_factory.mktemp("site")
    for name in ("lmkit-example", "lmkit-broken"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
             "--no-index", "--target", str(target), os.path.join(TEST_PLUGINS, name)],
            check=True, capture_output=True, timeout=300,
        )
    return str(target)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    """The tiny GPT-2 model directory the export tests share (see test_export.make_tiny_gpt2)."""
    from test_export import make_tiny_gpt2

    return make_tiny_gpt2(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_gpt2_export(tiny_gpt2, tmp_path_factory) -> str:
    """Its fp32 export; tests that damage an export work on a copy."""
    from lmkit.exports.export import export_model

    out = str(tmp_path_factory.mktemp("exports") / "m0")
    export_model(tiny_gpt2, out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_genai_export(tiny_gpt2, tmp_path_factory) -> str:
    """Its fp32 export in the layout onnxruntime-genai reads (`--layout genai`: the concatenating cache)."""
    from lmkit.exports.export import export_model

    out = str(tmp_path_factory.mktemp("exports") / "m0-genai")
    export_model(tiny_gpt2, out, cache_layout="genai")
    return out


@pytest.fixture(scope="session")
def translation_task(tmp_path_factory) -> dict:
    """The synthetic translation task's files and tokenizer (see test_seq2seq.make_task)."""
    from test_seq2seq import make_task

    return make_task(tmp_path_factory)


@pytest.fixture(scope="session")
def trained_nmt(translation_task) -> tuple:
    """(model directory, last metrics record) of a tiny NMT model trained on it, shared by the seq2seq,
    CoVe and export tests."""
    from test_seq2seq import train_nmt

    return train_nmt(translation_task)


@pytest.fixture(scope="session")
def t5_directories(tmp_path_factory) -> tuple[str, str]:
    """A T5 v1.1 from transformers (random weights) imported into lmkit, and its export; shared by the serving
    tests."""
    transformers = pytest.importorskip("transformers")
    from test_t5_hf import hf_model, t5_tokenizer

    from lmkit.commands.import_hf import import_hf

    root = tmp_path_factory.mktemp("t5-serve")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=t5_tokenizer(), eos_token="</s>",
                                                     pad_token="<pad>", unk_token="<unk>")
    tokenizer.save_pretrained(root / "hf")
    hf_model("v1.1").save_pretrained(root / "hf")
    import_hf(str(root / "hf"), str(root / "t5"))
    assert run_cli("export", root / "t5", "--out", root / "export").code == 0
    return str(root / "t5"), str(root / "export")


# -- Triton's python backend, stood in for (lmkit.exports.triton_python) -------------------------------


class TritonStandIn:
    """What lmkit's python-backend model calls of Triton's triton_python_backend_utils."""

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    class TritonError:
        def __init__(self, message):
            self.message = message

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return request.get(name)


def triton_request(texts, **options) -> dict:
    """A request as the stand-in hands it over: TEXT (b, 1) and each option (b, 1) in its Triton type."""
    import numpy as np

    kinds = {"MAX_TOKENS": np.int32, "NUM_BEAMS": np.int32, "TEMPERATURE": np.float32, "TOP_P": np.float32,
             "SEED": np.int64}
    fields = {"TEXT": TritonStandIn.Tensor("TEXT", np.array([[t.encode()] for t in texts], dtype=np.object_))}
    for name, value in options.items():
        fields[name] = TritonStandIn.Tensor(name, np.full((len(texts), 1), value, dtype=kinds[name]))
    return fields


def triton_text_model(folder, monkeypatch, export: str = "."):
    """lmkit's TritonPythonModel of the model folder `folder`, initialized under the stand-in."""
    from lmkit.exports.triton_python import TritonPythonModel

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", TritonStandIn)
    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps({"parameters": {"export": {"string_value": export}}}),
                      "model_repository": str(folder), "model_name": os.path.basename(str(folder))})
    return model
