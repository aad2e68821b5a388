"""Where a model's weights came from survives every rewrite of its config.json: an imported GPT-2 that is
fine-tuned, trained on into a new directory or fine-tuned again still names its transformers checkpoint,
and the model card of its export says so (base_model)."""
import json
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

from test_model_card import front_matter  # noqa: E402

from lmkit.exports.card import MODEL_CARD  # noqa: E402


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from conftest import run_cli
    from test_export_hf import save_source

    root = tmp_path_factory.mktemp("provenance")
    save_source("gpt2", root / "source")
    result = run_cli("import-hf", root / "source", "--out", root / "imported")
    assert result.code == 0, result.err
    return root / "imported"


def imported_from(directory) -> dict | None:
    return json.load(open(os.path.join(directory, "config.json"))).get("imported_from")


def test_finetune_and_train_out_keep_the_base_model_and_the_export_card_names_it(run, imported, tmp_path):
    base = imported_from(imported)
    assert base is not None and base["model_type"] == "gpt2" and base["name"]
    task = tmp_path / "train.jsonl"
    task.write_text("".join(json.dumps({"text": text, "label": label}) + "\n"
                            for text, label in [("the cat sat", "pos"), ("a dog ran away", "neg")] * 4))
    tuned = tmp_path / "tuned"
    result = run("finetune", imported, "--task", "classification", "--train", task, "--dev", task, "--out", tuned,
                 "--steps", "2", "--batch-size", "4", "--eval-every", "2")
    assert result.code == 0, result.err
    assert imported_from(tuned) == base
    assert imported_from(tuned / "best") == base  # the best checkpoint is written by save_model too

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog ran far away home\n" * 20)
    further = tmp_path / "further"
    result = run("train", imported, "--data", corpus, "--out", further, "--steps", "2", "--batch-size", "2",
                 "--seq-len", "8", "--eval-every", "0", "--log-every", "1")
    assert result.code == 0, result.err
    assert imported_from(further) == base
    again = tmp_path / "again"  # a model two rewrites away from the import
    result = run("finetune", further, "--task", "classification", "--train", task, "--out", again,
                 "--steps", "1", "--batch-size", "4")
    assert result.code == 0, result.err
    assert imported_from(again) == base

    exported = tmp_path / "exported"
    result = run("export", tuned, "--out", exported)
    assert result.code == 0, result.err
    card = open(exported / MODEL_CARD).read()
    meta = front_matter(card)
    assert meta["base_model"] == base["name"] and meta["pipeline_tag"] == "text-classification"
    assert f"imported from the transformers checkpoint `{base['name']}`" in card
    assert "then fine-tuned" in card


def test_a_composed_model_has_no_base_model_after_finetuning(run, tiny_gpt2, tmp_path):
    task = tmp_path / "train.jsonl"
    task.write_text("".join(json.dumps({"text": text, "label": label}) + "\n"
                            for text, label in [("the cat sat", "pos"), ("a dog ran away", "neg")] * 4))
    result = run("finetune", tiny_gpt2, "--task", "classification", "--train", task, "--out", tmp_path / "tuned",
                 "--steps", "1", "--batch-size", "4")
    assert result.code == 0, result.err
    assert imported_from(tmp_path / "tuned") is None
