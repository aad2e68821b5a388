"""A fine-tuned encoder's task head runs on its export without torch and predicts what PyTorch predicts."""
import json
import random
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from conftest import NO_TORCH  # noqa: E402
from test_finetune import conll_sentences  # noqa: E402
from test_finetune_bert import mood_pair, pretrained, squad_file  # noqa: E402, F401  (the bert-tiny fixture)

from lmkit.exports.export import export_model  # noqa: E402
from lmkit.tasks.finetune import TaskOptions, finetune  # noqa: E402
from lmkit.tasks.predict import predict  # noqa: E402


def tasks(tmp_path):
    """(kind, train file, test file) of a sequence, a token and a span task."""
    rng = random.Random(7)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"text_a": a, "text_b": b, "label": int(good >= 3)}) + "\n"
                             for a, b, good in (mood_pair(rng) for _ in range(48))))
    conll = tmp_path / "ner.conll"
    conll.write_text(conll_sentences(rng, 32))
    squad = squad_file(tmp_path / "squad.json", rng, 32, impossible_share=0.25)
    return [("similarity", pairs), ("token-classification", conll), ("question-answering", squad)]


SCORES = ("probabilities", "score")  # floats: the export's are PyTorch's within float error


def decision(output: dict) -> dict:
    """What an output of lmkit predict decides, without its scores."""
    return {key: value for key, value in output.items() if key not in SCORES}


def close(expected: list[dict], got: list[dict], tolerance: float = 1e-4) -> bool:
    """Same decisions, and scores within `tolerance`."""
    def flat(output):
        values = [output.get(key) for key in SCORES if key in output]
        values = [v for value in values for v in (value.values() if isinstance(value, dict) else
                                                  value if isinstance(value, list) else [value])]
        return np.array(values, dtype=np.float64)

    return all(decision(a) == decision(b) and np.abs(flat(a) - flat(b)).max(initial=0) <= tolerance
               for a, b in zip(expected, got)) and len(expected) == len(got)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_predictions_on_the_export_match_pytorch(pretrained, tmp_path, precision):  # noqa: F811
    for kind, path in tasks(tmp_path):
        tuned, exported = tmp_path / f"{kind}-model", tmp_path / f"{kind}-{precision}"
        finetune(pretrained, str(tuned), str(path), None, TaskOptions(kind=kind), steps=12, batch_size=16, lr=2e-3,
                 progress=False)
        manifest = export_model(str(tuned), str(exported), precision=precision)
        assert manifest["task_head"]["type"] in ("sequence-head", "token-head", "span-head")
        assert "task_head.safetensors" in manifest["files"]  # hashed like the graph
        expected, _ = predict(str(tuned), str(path), progress=False)
        got, _ = predict(str(exported), str(path), progress=False)
        agreement = sum(decision(a) == decision(b) for a, b in zip(expected, got)) / len(expected)
        assert agreement >= (1.0 if precision == "fp32" else 0.85), (kind, agreement)
        if precision == "fp32":
            assert close(expected, got), kind
        else:  # the int8 floor was measured on the head's choices, not left out
            assert manifest["validation"]["top1_agreement"] is not None, kind


def test_lmkit_predict_on_an_export_runs_without_torch(pretrained, tmp_path):  # noqa: F811
    kind, path = tasks(tmp_path)[0]
    finetune(pretrained, str(tmp_path / "tuned"), str(path), None, TaskOptions(kind=kind), steps=4, progress=False)
    export_model(str(tmp_path / "tuned"), str(tmp_path / "exported"))
    expected, _ = predict(str(tmp_path / "tuned"), str(path), progress=False)
    child = NO_TORCH + "from lmkit.cli import main\nmain()\n"
    result = subprocess.run([sys.executable, "-c", child, "predict", str(tmp_path / "exported"), "--data", str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert close(expected, [json.loads(line) for line in result.stdout.splitlines()])
    assert "accuracy" in result.stderr  # labelled: the metrics follow


@pytest.mark.parametrize("family", ["albert", "roberta"])
def test_albert_and_roberta_fine_tune_and_serve_their_heads(family, tmp_path):
    """The pair template, padding id and pooled state of each family reach the head, in torch and on the export."""
    from lmkit.model import compose
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions, Unigram, UnigramOptions

    rng = random.Random(8)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(a.split() + b.split()) for a, b, _ in (mood_pair(rng) for _ in range(200))))
    if family == "albert":
        tokenizer = Unigram.train([str(corpus)], UnigramOptions(
            vocab_size=100, lowercase=True, special_tokens=("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")),
            progress=False)
    else:
        tokenizer = ByteLevelBPE.train([str(corpus)], ByteLevelBPEOptions(
            vocab_size=300, special_tokens=("<s>", "<pad>", "</s>", "<unk>", "<mask>")), progress=False)
    tokenizer.save(str(tmp_path / "tok"))
    compose(f"{family}-tiny", [f"tokenizer={tmp_path / 'tok'}", f"encoder.vocab_size={tokenizer.vocab_size}"],
            str(tmp_path / "model"))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "label": int(good >= 3)}) + "\n"
                             for a, b, good in (mood_pair(rng) for _ in range(48))))
    finetune(str(tmp_path / "model"), str(tmp_path / "tuned"), str(pairs), None, TaskOptions(), steps=4,
             progress=False)
    export_model(str(tmp_path / "tuned"), str(tmp_path / "exported"))
    expected, metrics = predict(str(tmp_path / "tuned"), str(pairs), progress=False)
    assert metrics is not None and {"accuracy", "f1", "mcc"} <= set(metrics)
    assert close(predict(str(tmp_path / "exported"), str(pairs), progress=False)[0], expected)
