"""ULMFiT's classifier: concat pooling, BPT3C, the batch-norm head, and `lmkit finetune --recipe ulmfit`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from conftest import NO_TORCH, run_cli  # noqa: E402

from lmkit.contract import EncoderOutput  # noqa: E402
from lmkit.plugins.ulmfit.classifier import ULMFiTRecipe  # noqa: E402
from lmkit.plugins.ulmfit.config import AWDLSTMConfig  # noqa: E402
from lmkit.plugins.ulmfit.model import AWDLSTMDecoder  # noqa: E402


def test_concat_pooling_reads_the_last_real_state_and_pools_over_real_tokens_only():
    states = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    states[0, 3:] = 100.0  # padding: must not win the max or count in the mean
    features = ULMFiTRecipe().features(EncoderOutput(states, mask), torch.tensor([2, 4]))
    assert features.shape == (2, 9)
    torch.testing.assert_close(features[0], torch.cat([states[0, 2], states[0, :3].max(0).values,
                                                       states[0, :3].mean(0)]))
    torch.testing.assert_close(features[1], torch.cat([states[1, 4], states[1].max(0).values, states[1].mean(0)]))


def test_bpt3c_reads_a_long_document_in_chunks_with_the_state_carried():
    torch.manual_seed(0)
    decoder = AWDLSTMDecoder(AWDLSTMConfig(vocab_size=40, d_embed=6, hidden_size=10, n_layers=3)).eval()

    class Composed:
        pass

    model = Composed()
    model.decoder = model.feature_stack = decoder
    recipe = ULMFiTRecipe()
    recipe.bptt = 4  # 11 tokens: chunks of 4, 4 and 3
    ids = torch.randint(0, 40, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        chunked = recipe.run(model, ids, mask, None)
        whole = decoder.hidden_states(ids)
    torch.testing.assert_close(chunked.last_hidden_state, whole)  # as if read in one pass
    assert torch.equal(chunked.attention_mask, mask)


def test_the_head_is_batch_norm_dropout_linear_blocks():
    from lmkit.objectives.heads import SequenceHead
    from lmkit.objectives.options import SequenceHeadOptions

    head = SequenceHead(SequenceHeadOptions(recipe="ulmfit", num_labels=3), d_model=8)
    kinds = [type(layer).__name__ for layer in head.pooler] + ["Dropout", "Linear"]
    assert kinds == ["BatchNorm1d", "Dropout", "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert head.pooler[0].num_features == 24 and head.score.in_features == 50 and head.score.out_features == 3
    assert head.output_layer() is head.score


def test_long_documents_keep_their_end():
    class Tokenizer:
        eos_id = 9

        def encode(self, text):
            return [int(word) for word in text.split()]

    inputs = ULMFiTRecipe().inputs(Tokenizer(), 4)
    assert inputs.encode(("1 2 3 4 5 6",)) == ([3, 4, 5, 6], [0] * 4, 3, 2)
    assert inputs.encode(("1 2", "3 4 5"))[0] == [2, 9, 4, 5]  # the longer text cut first, each keeps its end


# -- from the CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("ulmfit-classifier")
    words = "alpha beta gamma delta eps zeta eta theta iota kappa".split()
    rng = __import__("random").Random(0)
    lines, rows = [], []
    for _ in range(32):
        text = " ".join(rng.choice(words) for _word in range(rng.randint(4, 12)))
        label = "yes" if "alpha" in text.split() else "no"
        lines.append(text)
        rows.append({"text": text, "label": label})
    (root / "text.txt").write_text("\n".join(lines * 2) + "\n")
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    specials = json.dumps(["<unk>", "<pad>", "</s>"])
    assert run_cli("tokenizer", "train", "--kind", "bpe", "--vocab-size", 80, "--set", f"special_tokens={specials}",
                   str(root / "text.txt"), "--out", str(root / "tok")).code == 0
    out = str(root / "lm")
    result = run_cli("compose", "awd-lstm-tiny", "--set", f"tokenizer={root / 'tok'}", "--set", "decoder.vocab_size=80",
                     "--out", out)
    assert result.code == 0, result.err
    assert run_cli("train", out, "--data", str(root / "text.txt"), "--steps", 4, "--batch-size", 4, "--seq-len", 12,
                   "--recipe", "ulmfit-lm", "--eval-every", 0).code == 0
    return {"root": root, "lm": out, "task": str(root / "task.jsonl")}


def test_finetune_with_the_ulmfit_recipe_then_predict(lm):
    out = str(lm["root"] / "clf")
    result = run_cli("finetune", lm["lm"], "--task", "classification", "--recipe", "ulmfit", "--train", lm["task"],
                     "--dev", lm["task"], "--out", out, "--epochs", 2, "--batch-size", 16, "--max-length", 8)
    assert result.code == 0, result.err
    assert "were cut to --max-length 8 tokens" in result.err  # documented truncation, with a warning
    arguments = json.loads(open(os.path.join(out, "trainer_state.json")).read())["arguments"]
    assert (arguments["optimizer"], arguments["schedule"], arguments["optimizer_options"]) == (
        "ulmfit", "stlr", {"unfreeze_every": 2})  # one more group each epoch of 32 / 16 steps
    predicted = run_cli("predict", os.path.join(out, "best"), "--data", lm["task"])
    assert predicted.code == 0, predicted.err
    rows = [json.loads(line) for line in predicted.out.splitlines() if line.startswith("{")]
    assert len(rows) == 32 and {row["label"] for row in rows} <= {"yes", "no"}

    # The classifier exported, and predicting without torch: the same labels, the same probabilities.
    exported = str(lm["root"] / "exp-clf")
    result = run_cli("export", os.path.join(out, "best"), "--out", exported)
    assert result.code == 0, result.err
    manifest = json.loads(open(os.path.join(exported, "lmkit-onnx.json")).read())
    assert manifest["architecture"] == "encoder-only" and manifest["validation"]["max_abs_diff"] < 1e-4
    code = NO_TORCH + "from lmkit.cli import main\nmain()\n"
    done = subprocess.run([sys.executable, "-c", code, "predict", exported, "--data", lm["task"]],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    served = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["label"] for r in served] == [r["label"] for r in rows]
    for a, b in zip(served, rows):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_the_ulmfit_recipe_on_another_model_says_what_it_needs(lm, tmp_path):
    gpt = str(tmp_path / "gpt")
    assert run_cli("compose", "gpt2-tiny", "--set", f"tokenizer={lm['root'] / 'tok'}", "--set",
                   "decoder.vocab_size=80", "--out", gpt).code == 0
    result = run_cli("finetune", gpt, "--task", "classification", "--recipe", "ulmfit", "--train", lm["task"],
                     "--out", str(tmp_path / "clf"), "--steps", 1)
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert result.code != 0 and len(errors) == 1 and "AWD-LSTM language model" in errors[0], result.err
    assert not os.path.exists(tmp_path / "clf")


def test_the_lm_exports_in_fp16_with_its_lstms_in_fp32_and_generates_as_the_model_does(lm):
    """fp16 with the LSTMs and the transposes around them in fp32 (plugins/ulmfit/export.py says why): the
    embedding and the output projection in half precision, validated against PyTorch at export time."""
    import onnx

    out = str(lm["root"] / "lm-fp16")
    result = run_cli("export", lm["lm"], "--out", out, "--dtype", "fp16")
    assert result.code == 0, result.err
    manifest = json.loads(open(os.path.join(out, "lmkit-onnx.json")).read())
    assert manifest["validation"]["max_abs_diff"] < 5e-3 and manifest["validation"]["top1_agreement"] == 1.0
    graph = onnx.load(os.path.join(out, "model.onnx")).graph
    kinds = {node.op_type: node for node in graph.node}
    assert {"LSTM", "Transpose", "Cast"} <= set(kinds)
    halves = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT16}
    lstm_weights = {name for node in graph.node if node.op_type == "LSTM" for name in node.input[1:4]}
    assert halves and not halves & lstm_weights  # the embedding and the output layer in fp16, the LSTMs in fp32
    prompts = ["--prompt", "alpha beta", "--prompt", "gamma", "--max-new-tokens", 6]
    exported, torch_run = run_cli("generate", out, *prompts), run_cli("generate", lm["lm"], *prompts)
    assert exported.code == 0 and torch_run.code == 0, exported.err + torch_run.err
    assert exported.out == torch_run.out
