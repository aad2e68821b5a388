"""A real Triton Inference Server serves `lmkit export --format triton`'s python-backend model.

The server is the `tritonserver` binary that nvidia-pytriton ships (CPU, python backend only), on
127.0.0.1; the clients are tritonclient over HTTP and gRPC. The answers must be `lmkit generate`'s.
It needs an environment with nvidia-pytriton (which pins numpy below 2) and lmkit with its `serve`
extra: LMKIT_TRITON_PYTHON names that environment's python, else the test makes one in a temporary
folder from the package index (minutes: the pytriton wheel is large). Runs with LMKIT_SLOW_TESTS=1.
"""
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
         "TOP_P": ("FP32", np.float32)}

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
    result = client.infer("tiny_text", inputs, outputs=[module.InferRequestedOutput("COMPLETION")])
    return [row[0].decode() for row in result.as_numpy("COMPLETION")]

http, grpc, asks = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
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


def test_triton_serves_the_text_model_with_lmkit_generates_answers(triton_python, tiny_gpt2, tmp_path):
    repository = tmp_path / "repo"
    result = run_cli("export", tiny_gpt2, "--out", repository, "--format", "triton", "--name", "tiny")
    assert result.code == 0, result.err
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
         "--model-control-mode", "explicit", "--load-model", "tiny_text", "--backend-directory", str(backends),
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
        asks = [["http", PROMPTS, {"MAX_TOKENS": 8}],
                ["grpc", PROMPTS, {"MAX_TOKENS": 8}],
                ["http", PROMPTS[:2], {"MAX_TOKENS": 10, "TEMPERATURE": 0.9, "SEED": 3}],
                ["grpc", PROMPTS[1:], {"MAX_TOKENS": 6, "TEMPERATURE": 0.7, "TOP_P": 0.9, "SEED": 4}]]
        client = tmp_path / "client.py"
        client.write_text(CLIENT)
        done = subprocess.run([triton_python, str(client), f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", json.dumps(asks)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        answers = json.loads(done.stdout)
    finally:
        server.terminate()
        server.wait(60)
        log.close()

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
