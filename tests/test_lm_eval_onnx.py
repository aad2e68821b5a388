"""lm-eval's own ONNX models score an lmkit export as it is, without torch: `--model onnxruntime` (a plain
onnxruntime session over the graph genai_config.json names) and `--model onnxruntime-genai`.

lm-eval 0.4.13 reads the export directory as a Model Builder output: genai_config.json (context length,
special tokens, the graph's file and tensor names), the graph, and the tokenizer through transformers'
AutoTokenizer (tokenizer.json and tokenizer_config.json, no torch). Its log-likelihoods, accuracy and word
perplexity must be the model's own, computed here with PyTorch. It runs with LMKIT_SLOW_TESTS=1, in the
Python of LMKIT_LM_EVAL_PYTHON (or this one) when that has lm-eval, onnxruntime and transformers
(onnxruntime-genai for the second model).
"""
import json
import math
import os
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_serve import MC_TASK, PPL_TASK, lm_eval_python  # noqa: E402


def has_modules(python: str, *modules: str) -> bool:
    code = "import importlib.util, sys; sys.exit(0 if all(importlib.util.find_spec(m) for m in sys.argv[1:]) else 1)"
    return subprocess.run([python, "-c", code, *modules], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LMKIT_SLOW_TESTS") != "1", reason="runs lm-eval; set LMKIT_SLOW_TESTS=1")
@pytest.mark.parametrize("lm_eval_model, module", [("onnxruntime", "onnxruntime"),
                                                   ("onnxruntime-genai", "onnxruntime_genai")])
def test_lm_eval_scores_the_export_with_the_models_own_log_likelihoods(lm_eval_model, module, tiny_gpt2,
                                                                      tiny_gpt2_genai_export, tmp_path):
    from lmkit.model import load_model

    python = lm_eval_python()
    if python is None or not has_modules(python, "lm_eval", "transformers", module):
        pytest.skip(f"needs a Python with lm-eval, transformers and {module} (LMKIT_LM_EVAL_PYTHON)")
    model, tokenizer, _ = load_model(tiny_gpt2)
    decoder = model.eval().decoder
    rng = np.random.default_rng(0)
    words = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "far", "home"]
    questions = [{"context": " ".join(rng.choice(words, 5)), "choices": [" ".join(rng.choice(words, 2)) for _ in
                                                                            range(3)], "label": int(rng.integers(3))}
                 for _ in range(12)]
    documents = [{"text": " ".join(rng.choice(words, int(rng.integers(4, 12))))} for _ in range(6)]
    for name, rows, task in (("mc", questions, MC_TASK), ("ppl", documents, PPL_TASK)):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        (tmp_path / f"{name}.yaml").write_text(task.format(data=data))
    environment = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "ORT_DISABLE_TELEMETRY": "1"}
    done = subprocess.run(
        [python, "-m", "lm_eval", "--model", lm_eval_model, "--model_args",
         f"pretrained={tiny_gpt2_genai_export},execution_provider=cpu", "--tasks", "lmkit_serve_mc,lmkit_serve_ppl",
         "--include_path", str(tmp_path), "--output_path", str(tmp_path / "out"), "--log_samples"],
        capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]

    def log_likelihood(context: list[int], continuation: list[int]) -> float:
        ids = context + continuation
        with torch.no_grad():
            log_probs = torch.log_softmax(decoder(torch.tensor([ids]))[0], dim=-1)
        return float(sum(log_probs[t - 1, ids[t]] for t in range(len(context), len(ids))))

    samples = {}
    for path in (tmp_path / "out").rglob("samples_*.jsonl"):
        task = "mc" if "lmkit_serve_mc" in path.name else "ppl"
        samples[task] = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])
    correct = 0
    for sample, question in zip(samples["mc"], questions, strict=True):
        expected = []
        for choice in question["choices"]:  # lm-eval's pair encoding: the whole, then the context's length
            context = tokenizer.encode(question["context"])
            whole = tokenizer.encode(question["context"] + " " + choice)
            expected.append(log_likelihood(context, whole[len(context):]))
        got = [float(response[0]) for response in sample["filtered_resps"]]
        np.testing.assert_allclose(got, expected, atol=1e-4)
        correct += int(np.argmax(expected) == question["label"])
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    assert results["lmkit_serve_mc"]["acc,none"] == pytest.approx(correct / len(questions))
    prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id  # genai_config's bos_token_id
    total, n_words = 0.0, 0
    for sample, document in zip(samples["ppl"], documents, strict=True):  # each fits one window of the context
        expected = log_likelihood([prefix], tokenizer.encode(document["text"]))
        assert float(sample["filtered_resps"][0]) == pytest.approx(expected, abs=1e-4)
        total, n_words = total + expected, n_words + len(document["text"].split())
    assert results["lmkit_serve_ppl"]["word_perplexity,none"] == pytest.approx(math.exp(-total / n_words), rel=1e-5)
