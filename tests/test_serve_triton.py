"""A real Triton Inference Server serves `lmkit export --format triton`'s python-backend models: a decoder's
text model and an encoder-decoder's (T5) translating model.

The server is the `tritonserver` binary that nvidia-pytriton ships (CPU, python backend only), on
127.0.0.1; the clients are tritonclient over HTTP and gRPC. The answers must be `lmkit generate`'s (`lmkit translate`'s).
It needs an environment with nvidia-pytriton (which pins numpy below 2) and lmkit with its `serve`
extra: LMKIT_TRITON_PYTHON names that environment's python, else the test makes one in a temporary
folder from the package index (minutes: the pytriton wheel is large). Runs with LMKIT_SLOW_TESTS=1.
"""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("LMKIT_SLOW_TESTS") != "1",
                                                   reason="starts Triton (and may install it); set LMKIT_SLOW_TESTS=1")]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["the cat", "a dog sat on the", "quickly"]

CLIENT = r'''
import json, sys, threading
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

KINDS = {"MAX_TOKENS": ("INT32", np.int32), "TEMPERATURE": ("FP32", np.float32), "SEED": ("INT64", np.int64),
         "TOP_P": ("FP32", np.float32), "NUM_BEAMS": ("INT32", np.int32)}

def ask(module, url, texts, options):
    client = module.InferenceServerClient(url)
    text = module.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    inputs = [text]
    for name, value in options.items():
        kind, dtype = KINDS[name]
        tensor = module.InferInput(name, [len(texts), 1], kind)
        tensor.set_data_from_numpy(np.full((len(texts), 1), value, dtype=dtype))
        inputs.append(tensor)
    result = client.infer(model, inputs, outputs=[module.InferRequestedOutput("COMPLETION")])
    return [row[0].decode() for row in result.as_numpy("COMPLETION")]

http, grpc, model, asks = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
answers = [None] * len(asks)

def run(i):  # all at once: Triton's dynamic batcher may hand them to lmkit together
    protocol, texts, options = asks[i]
    answers[i] = ask(httpclient if protocol == "http" else grpcclient, http if protocol == "http" else grpc,
                     texts, options)

threads = [threading.Thread(target=run, args=(i,)) for i in range(len(asks))]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(answers))
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def triton_python(tmp_path_factory) -> str:
    given = os.environ.get("LMKIT_TRITON_PYTHON")
    if given:
        return given
    env = tmp_path_factory.mktemp("triton-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    python = str(env / "bin" / "python")
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "-c", os.path.join(REPO, "constraints.txt"),
                           "nvidia-pytriton", "numpy<2", f"{REPO}[serve]"], capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        pytest.skip(f"nvidia-pytriton does not install here: {done.stderr.strip().splitlines()[-1:]}")
    return python


def environment_of(python: str) -> dict:
    """What the server needs from that Python: its site-packages, library folder and version."""
    code = ("import json, os, sys, sysconfig, pytriton; print(json.dumps({'libdir': sysconfig.get_config_var("
            "'LIBDIR'), 'pytriton': os.path.dirname(pytriton.__file__), 'version': f'{sys.version_info[0]}."
            "{sys.version_info[1]}', 'bin': os.path.dirname(sys.executable)}))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


@contextlib.contextmanager
def triton_server(triton_python: str, repository, model: str, tmp_path):
    """A tritonserver on 127.0.0.1 serving `model` of `repository`, ready: yields its (http, grpc) addresses."""
    found = environment_of(triton_python)
    server_dir = os.path.join(found["pytriton"], "tritonserver")
    backends = tmp_path / "backends"  # the python backend, with the stub built for this Python's version
    shutil.copytree(os.path.join(server_dir, "backends"), backends)
    shutil.copy(os.path.join(server_dir, "python_backend_stubs", found["version"], "triton_python_backend_stub"),
                backends / "python" / "triton_python_backend_stub")
    libraries = os.path.join(os.path.dirname(found["pytriton"]), "nvidia_pytriton.libs")
    environment = {**os.environ, "PATH": found["bin"] + os.pathsep + os.environ["PATH"],
                   "LD_LIBRARY_PATH": os.pathsep.join([found["libdir"], libraries]), "ORT_DISABLE_TELEMETRY": "1"}
    http, grpc = free_port(), free_port()
    log = open(tmp_path / "triton.log", "w")
    server = subprocess.Popen(
        [os.path.join(server_dir, "bin", "tritonserver"), "--model-repository", str(repository),
         "--model-control-mode", "explicit", "--load-model", model, "--backend-directory", str(backends),
         "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--http-port", str(http),
         "--grpc-port", str(grpc), "--allow-metrics", "false", "--cache-directory", str(tmp_path / "cache")],
        stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "triton.log").read_text()[-3000:]
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=5).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Triton did not become ready in 180 s"
            time.sleep(1)
        yield f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
    finally:
        server.terminate()
        server.wait(60)
        log.close()


def ask_all(triton_python: str, addresses, model: str, asks: list, tmp_path) -> list:
    """Every ask ([protocol, texts, options]) sent at once by tritonclient; the answers, in order."""
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    done = subprocess.run([triton_python, str(client), *addresses, model, json.dumps(asks)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_triton_serves_the_text_model_with_lmkit_generates_answers(triton_python, tiny_gpt2, tmp_path):
    repository = tmp_path / "repo"
    result = run_cli("export", tiny_gpt2, "--out", repository, "--format", "triton", "--name", "tiny")
    assert result.code == 0, result.err
    asks = [["http", PROMPTS, {"MAX_TOKENS": 8}],
            ["grpc", PROMPTS, {"MAX_TOKENS": 8}],
            ["http", PROMPTS[:2], {"MAX_TOKENS": 10, "TEMPERATURE": 0.9, "SEED": 3}],
            ["grpc", PROMPTS[1:], {"MAX_TOKENS": 6, "TEMPERATURE": 0.7, "TOP_P": 0.9, "SEED": 4}]]
    with triton_server(triton_python, repository, "tiny_text", tmp_path) as addresses:
        answers = ask_all(triton_python, addresses, "tiny_text", asks, tmp_path)

    def generated(prompts, *flags):
        result = run_cli("generate", repository / "tiny", *[a for p in prompts for a in ("--prompt", p)], "--json",
                         *flags)
        assert result.code == 0, result.err
        return [record["text"] for record in json.loads(result.out)]

    greedy = generated(PROMPTS, "--max-new-tokens", "8")
    assert answers[0] == greedy and answers[1] == greedy
    assert answers[2] == generated(PROMPTS[:2], "--strategy", "sample", "--max-new-tokens", "10",
                                   "--temperature", "0.9", "--seed", "3")
    assert answers[3] == generated(PROMPTS[1:], "--strategy", "sample", "--max-new-tokens", "6",
                                   "--temperature", "0.7", "--top-p", "0.9", "--seed", "4")


def test_triton_serves_an_encoder_decoder_with_lmkit_translates_answers(triton_python, tmp_path):
    """T5 imported from transformers: its repository's one model runs lmkit's loop over both graphs."""
    import transformers
    from test_t5_hf import SOURCES, hf_model, t5_tokenizer

    from lmkit.commands.import_hf import import_hf

    checkpoint, model_dir, repository = tmp_path / "hf", tmp_path / "t5", tmp_path / "repo"
    transformers.PreTrainedTokenizerFast(tokenizer_object=t5_tokenizer(), eos_token="</s>", pad_token="<pad>",
                                         unk_token="<unk>").save_pretrained(checkpoint)
    hf_model("v1.1").save_pretrained(checkpoint)
    import_hf(str(checkpoint), str(model_dir))
    result = run_cli("export", model_dir, "--out", repository, "--format", "triton", "--name", "t5")
    assert result.code == 0, result.err
    asks = [["http", SOURCES, {"MAX_TOKENS": 8, "NUM_BEAMS": 1}],
            ["grpc", SOURCES, {"MAX_TOKENS": 8, "NUM_BEAMS": 4}],
            ["http", SOURCES[1:], {"MAX_TOKENS": 6, "TEMPERATURE": 0.8, "SEED": 3}]]
    with triton_server(triton_python, repository, "t5", tmp_path) as addresses:
        answers = ask_all(triton_python, addresses, "t5", asks, tmp_path)

    def translated(sources, *flags):
        result = run_cli("translate", model_dir, *[a for s in sources for a in ("--text", s)], "--json", *flags)
        assert result.code == 0, result.err
        return [record["text"] for record in json.loads(result.out)]

    assert answers[0] == translated(SOURCES, "--strategy", "greedy", "--max-new-tokens", "8")
    assert answers[1] == translated(SOURCES, "--strategy", "beam", "--num-beams", "4", "--max-new-tokens", "8")
    assert answers[2] == translated(SOURCES[1:], "--strategy", "sample", "--temperature", "0.8", "--seed", "3",
                                    "--max-new-tokens", "6")
