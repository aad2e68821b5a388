"""The model card (README.md) of an export: Hugging Face front matter and the manifest's figures, hashed."""
import json
import os
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from lmkit.exports.card import MODEL_CARD, model_card  # noqa: E402
from lmkit.exports.manifest import MANIFEST  # noqa: E402


def front_matter(text: str) -> dict:
    """The card's metadata block as {key: value or [items]} (the flat YAML the card writes)."""
    lines = text.split("---\n")[1].splitlines()
    meta, key = {}, None
    for line in lines:
        if line.startswith("- "):
            meta[key].append(line[2:])
        else:
            key, _, value = line.partition(": ")
            key = key.rstrip(":")
            meta[key] = value if value else []
    return meta


def test_the_genai_layout_is_tagged_for_onnxruntime_genai(tiny_gpt2_export, tiny_gpt2_genai_export):
    tags = {directory: set(front_matter(open(os.path.join(directory, MODEL_CARD)).read())["tags"])
            for directory in (tiny_gpt2_export, tiny_gpt2_genai_export)}
    assert "onnxruntime-genai" in tags[tiny_gpt2_genai_export]
    assert "onnxruntime-genai" not in tags[tiny_gpt2_export]  # the fast layout: genai cannot run it


def test_every_export_has_a_hashed_card_from_its_manifest(tiny_gpt2_export):
    manifest = json.load(open(os.path.join(tiny_gpt2_export, MANIFEST)))
    assert MODEL_CARD in manifest["files"]
    text = open(os.path.join(tiny_gpt2_export, MODEL_CARD)).read()
    meta = front_matter(text)
    assert meta["license"] == "other" and meta["library_name"] == "onnx"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"lmkit", "onnx", "gpt2", "fp32"} <= set(meta["tags"])
    assert "base_model" not in meta  # composed by lmkit, not imported
    validation = manifest["validation"]
    assert f"largest |difference| {validation['max_abs_diff']:.3g}" in text
    assert f"top-1 agreement {validation['top1_agreement']:.1%}" in text
    assert "None: fp32 weights." in text
    for name, entry in manifest["files"].items():
        if name != MODEL_CARD:
            assert f"| {name} | {entry['size']:,} |" in text


def test_an_imported_model_names_its_base_and_quantization_is_described(tiny_gpt2_export):
    manifest = json.load(open(os.path.join(tiny_gpt2_export, MANIFEST)))
    manifest["source"]["imported_from"] = {"format": "transformers", "model_type": "gpt2", "name": "openai-community/gpt2",
                                           "architectures": ["GPT2LMHeadModel"]}
    manifest["quantization"] = {"weights": "int4", "output_projection": "int8"}
    text = model_card(manifest, license="mit")
    meta = front_matter(text)
    assert meta["base_model"] == "openai-community/gpt2" and meta["license"] == "mit"
    assert "weights: int4, output_projection: int8." in text
    assert "imported from the transformers checkpoint `openai-community/gpt2`" in text


def test_a_changed_card_is_refused(tiny_gpt2_export, tmp_path, run):
    copy = tmp_path / "export"
    shutil.copytree(tiny_gpt2_export, copy)
    with open(copy / MODEL_CARD, "a") as handle:
        handle.write("\nbetter than it is\n")
    result = run("generate", copy, "--prompt", "the cat", "--max-new-tokens", "2")
    assert result.code != 0 and "README.md" in result.err and len(result.err.strip().splitlines()) == 1
