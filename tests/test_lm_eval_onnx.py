"""lm-eval's own ONNX models score an lmkit export as it is, without torch: `--model onnxruntime` (a plain
onnxruntime session over the graph genai_config.json names) and `--model onnxruntime-genai`.

lm-eval 0.4.13 reads the export directory as a Model Builder output: genai_config.json (context length,
special tokens, the graph's file and tensor names), the graph, and the tokenizer through transformers'
AutoTokenizer (tokenizer.json and tokenizer_config.json, no torch). Its log-likelihoods, accuracy and word
perplexity must be the model's own, computed here with PyTorch. It runs with LMKIT_SLOW_TESTS=1, in the
Python of LMKIT_LM_EVAL_PYTHON (or this one) when that has lm-eval, onnxruntime and transformers
(onnxruntime-genai for the second model).
"""
import os
import subprocess

import pytest

torch = pytest.importorskip("torch")

from test_serve import check_lm_eval_scores, lm_eval_python  # noqa: E402


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
    check_lm_eval_scores(python, lm_eval_model, f"pretrained={tiny_gpt2_genai_export},execution_provider=cpu",
                         tokenizer, decoder, tmp_path, ORT_DISABLE_TELEMETRY="1")
