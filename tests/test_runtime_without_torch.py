"""An export runs where PyTorch is not installed: lmkit.exports, lmkit generate, and the torch-free loop in docs/export.md.

The children below run as on a serving install (lmkit[serve]: onnxruntime, numpy, tokenizers): any
import of torch or onnx fails in them.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


from conftest import NO_TORCH  # noqa: E402

from lmkit.decoding.greedy import Greedy  # noqa: E402
from lmkit.decoding.options import GreedyOptions  # noqa: E402
from lmkit.decoding.torch_backend import TorchBackend  # noqa: E402
from lmkit.model import load_model  # noqa: E402

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "export.md")
PROMPTS = ["the cat sat on", "dog"]


@pytest.fixture(scope="module")
def model_dir(tiny_gpt2):
    return tiny_gpt2


@pytest.fixture(scope="module")
def exported(tiny_gpt2_export):
    return tiny_gpt2_export


def torch_greedy(model_dir, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    model, tokenizer, _ = load_model(model_dir)
    greedy = Greedy(GreedyOptions(max_new_tokens=max_new_tokens))
    return [g.tokens for g in greedy.generate(TorchBackend(model.eval().decoder, max_new_tokens), prompts,
                                              eos_id=tokenizer.eos_id, pad_id=None)]


def run_without_torch(code: str, check: bool = True):
    done = subprocess.run([sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, timeout=120)
    if not check:
        return done
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_export_loads_and_generates_without_torch(exported, model_dir):
    out = run_without_torch(textwrap.dedent(f"""
        import json
        import lmkit.exports
        from lmkit.decoding.greedy import Greedy
        from lmkit.decoding.options import GreedyOptions

        model = lmkit.exports.load({exported!r})
        prompts = [model.tokenizer.encode(text) for text in {PROMPTS!r}]
        greedy = Greedy(GreedyOptions(max_new_tokens=10))
        generations = greedy.generate(model.backend(), prompts, eos_id=model.tokenizer.eos_id, pad_id=None)
        texts = model.generate({PROMPTS!r}, max_new_tokens=10)
        assert sys.modules["torch"] is None and sys.modules["onnx"] is None, "torch or onnx was imported"
        print(json.dumps({{"prompts": prompts, "tokens": [g.tokens for g in generations], "texts": texts}}))
    """))
    result = json.loads(out)
    expected = torch_greedy(model_dir, result["prompts"], 10)
    assert result["tokens"] == expected
    _, tokenizer, _ = load_model(model_dir)
    assert result["texts"] == [tokenizer.decode(tokens) for tokens in expected]


def test_the_torch_free_loop_in_the_docs_runs_and_matches_greedy(exported, model_dir):
    with open(DOCS, encoding="utf-8") as handle:
        blocks = re.findall(r"```python\n(.*?)```", handle.read(), re.S)
    (loop,) = [block for block in blocks if block.startswith("# torch-free greedy loop")]
    out = run_without_torch(loop.replace('"exp/m0"', repr(exported)))
    _, tokenizer, _ = load_model(model_dir)
    prompt = tokenizer.encode("the cat sat")
    (tokens,) = torch_greedy(model_dir, [prompt], 20)
    assert out.rstrip("\n") == tokenizer.decode(prompt + tokens)


def test_lmkit_generate_runs_an_export_without_torch(exported, model_dir, run):
    args = ["--prompt", "the cat sat on", "--prompt", "dog", "--strategy", "beam", "--num-beams", "4",
            "--max-new-tokens", "6", "--json"]
    done = run_without_torch(textwrap.dedent(f"""
        from lmkit import cli
        try:
            cli.main(["generate", {exported!r}, *{args!r}])
        finally:
            assert sys.modules["torch"] is None and sys.modules["onnx"] is None, "torch or onnx was imported"
    """), check=False)
    assert done.returncode == 0, done.stderr
    on_torch = run("generate", model_dir, *args)
    assert on_torch.code == 0, on_torch.err
    assert [r["tokens"] for r in json.loads(done.stdout)] == [r["tokens"] for r in json.loads(on_torch.out)]

    on_model = run_without_torch(f"from lmkit import cli\ncli.main(['generate', {model_dir!r}, '--prompt', 'x'])",
                                 check=False)
    assert on_model.returncode == 1
    assert on_model.stderr.startswith("error: lmkit generate on a model directory needs PyTorch, which is not installed")


def test_without_onnx_a_graph_with_external_data_is_refused(exported, tmp_path):
    import shutil

    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    from lmkit.exports.manifest import MANIFEST, describe_files

    copy = tmp_path / "external"
    shutil.copytree(exported, copy)
    graph = onnx.load(str(copy / "model.onnx"))
    convert_model_to_external_data(graph, all_tensors_to_one_file=True, location="model.onnx.data")
    onnx.save(graph, str(copy / "model.onnx"))
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"] = describe_files(str(copy))  # listed and hashed: with onnx, this export loads
    (copy / MANIFEST).write_text(json.dumps(manifest))
    import lmkit.exports

    assert lmkit.exports.load(str(copy)).generate(["the cat"], max_new_tokens=2)
    done = run_without_torch(f"import lmkit.exports\nlmkit.exports.load({str(copy)!r})", check=False)
    assert done.returncode == 1
    assert "model.onnx may keep tensors in external data files, which only the onnx package can check" in done.stderr
