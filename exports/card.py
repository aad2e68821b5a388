"""The model card (`README.md`) of an export directory, written from its manifest.

An export is a deliverable: whoever receives the directory (or finds it on a model hub) reads what it
is, what it is for, how far it was checked against PyTorch, how it was quantized and how it was made,
without lmkit. The front matter is the Hugging Face model-card metadata (license, library_name,
pipeline_tag, tags, base_model when the weights were imported with `lmkit import-hf`). Everything in
the card comes from the manifest, so the card says nothing the export does not record; the manifest
hashes the card like every other file. Nothing here imports torch or onnx.
"""
from __future__ import annotations

import json

MODEL_CARD = "README.md"
# The pipeline a model hub lists an export under, by what its runtime does (lmkit.contract.ModelRuntime.kind).
PIPELINES = {"decoder-only": "text-generation", "encoder-only": "feature-extraction",
             "encoder-decoder": "text2text-generation"}
TASK_PIPELINES = {"classification": "text-classification", "regression": "text-classification",
                  "similarity": "sentence-similarity", "multiple-choice": "multiple-choice",
                  "token-classification": "token-classification", "question-answering": "question-answering"}


def model_card(manifest: dict, license: str = "other") -> str:
    """README.md's text for the export whose manifest (with its "files" table, the card left out) is given."""
    source = manifest.get("source", {})
    spec = source.get("spec") or {}
    imported = source.get("imported_from")
    stacks = {key: (spec.get(key) or {}).get("type") for key in ("encoder", "decoder") if spec.get(key)}
    name = spec.get("name") or "lmkit model"
    head = manifest.get("task_head")
    pipeline = (TASK_PIPELINES.get(head.get("task", "classification"), "text-classification") if head
                else PIPELINES.get(manifest.get("architecture"), "text-generation" if "decoder" in stacks else
                                   "feature-extraction"))
    quantization = manifest.get("quantization")
    genai = (manifest.get("genai") or {}).get("config")
    tags = ["lmkit", "onnx", *sorted(set(stacks.values())), manifest["dtype"]]
    if genai:
        tags.append("onnxruntime-genai")
    front = [f"license: {license}", "library_name: onnx", f"pipeline_tag: {pipeline}",
             "tags:", *(f"- {_yaml(tag)}" for tag in tags)]
    if imported:
        front.append(f"base_model: {_yaml(imported['name'])}")
    validation = manifest.get("validation", {})
    created = manifest.get("created_with", {})
    dimensions = manifest.get("dimensions", {})
    lines = ["---", *front, "---", "", f"# {name} (ONNX, {manifest['dtype']})", ""]
    what = ", ".join(f"{kind} `{kind_type}`" for kind, kind_type in stacks.items())
    lines += [f"An ONNX export of the lmkit model `{name}` ({what}; exporter `{manifest['exporter']['name']}` of the "
              f"`{manifest['exporter']['plugin']}` plugin), architecture `{manifest['architecture']}`, opset "
              f"{manifest['opset']}. It runs on onnxruntime with numpy and the tokenizer, without PyTorch."]
    sizes = ", ".join(f"{key} {value}" for key, value in dimensions.items() if isinstance(value, (int, str)))
    if sizes:
        lines += ["", f"Sizes: {sizes}."]
    if imported:
        lines += ["", f"The weights were imported from the transformers checkpoint `{imported['name']}` "
                      f"(model_type `{imported['model_type']}`) with `lmkit import-hf`"
                      + (", then fine-tuned with `lmkit finetune`." if head else ".")]
    lines += ["", "## Intended use", ""]
    uses = {"text-generation": "Continuing text: greedy, beam search or sampling, with the generation settings "
                               "below as defaults.",
            "text2text-generation": "Turning a source text into a target text (translation, text-to-text tasks).",
            "feature-extraction": "Token and sentence vectors for downstream models."}
    lines.append(uses.get(pipeline, f"The fine-tuned task head: {pipeline.replace('-', ' ')}."))
    lines += ["It does what the model it was exported from does, no more: this card records how the export was "
              "checked against that model, not how well the model does its task."]
    generation = manifest.get("generation")
    if generation and manifest.get("architecture") != "encoder-only":
        lines += ["", f"Generation settings: `{generation['strategy']}` {json.dumps(generation.get('options', {}))}."]
    lines += ["", "## Parity with PyTorch", ""]
    threshold = validation.get("threshold", {})
    agreement = validation.get("top1_agreement")
    lines.append(f"Checked at export against {validation.get('reference', 'PyTorch')} on "
                 f"{validation.get('runtime', 'onnxruntime')}, at {len(validation.get('shape_sets', []))} shape sets "
                 f"(batch size, new and past tokens): largest |difference| {validation.get('max_abs_diff', 0):.3g}"
                 + (f", top-1 agreement {agreement:.1%}" if agreement is not None else "")
                 + (f", least feature cosine {validation['feature_cosine']:.4f}"
                    if agreement is None and validation.get("feature_cosine") is not None else "")
                 + f"; required: {_threshold(threshold)}.")
    lines += ["", "## Quantization", ""]
    if quantization:
        lines.append(", ".join(f"{key}: {value}" for key, value in quantization.items()) + ".")
    else:
        lines.append(f"None: {manifest['dtype']} weights.")
    lines += ["", "## How to use", "", "```",
              "pip install 'lmkit-toolkit[serve]'   # onnxruntime, numpy, tokenizers; no torch"]
    usage = {"text-generation": 'lmkit generate DIR --prompt "..."',
             "text2text-generation": 'lmkit translate DIR --text "..."',
             "feature-extraction": 'lmkit embed DIR --text "..."'}
    lines += [usage.get(pipeline, "lmkit predict DIR --data test.tsv"), "```"]
    if genai:
        lines += ["", f"`{genai}` lets onnxruntime-genai run the directory as it is (`og.Model(DIR)`)."]
    lines += ["", "## How it was made", "",
              f"`lmkit export` (lmkit {manifest['lmkit_version']}) with "
              + ", ".join(f"{package} {version}" for package, version in created.items())
              + f"; the model directory was written by lmkit {source.get('lmkit_version')} with the plugins "
              + ", ".join(f"{plugin} {info.get('version')}" for plugin, info in (source.get("plugins") or {}).items())
              + f". `{'lmkit-onnx.json'}` records the spec, every input and output, the validation per shape set and "
                "the sha256 of every file, this card included; lmkit's runtime refuses a file that differs.",
              "", "| file | bytes |", "| --- | --- |"]
    lines += [f"| {file} | {entry['size']:,} |" for file, entry in sorted(manifest.get("files", {}).items())
              if file != MODEL_CARD]
    return "\n".join(lines) + "\n"


def _threshold(threshold: dict) -> str:
    parts = []
    if threshold.get("max_abs_diff") is not None:
        relative = threshold.get("max_rel_diff")
        parts.append(f"|difference| at most {threshold['max_abs_diff']:g}"
                     + (f" (or {relative:g} of the output's largest |value|)" if relative else ""))
    if threshold.get("min_top1_agreement") is not None:
        parts.append(f"top-1 agreement at least {threshold['min_top1_agreement']:.0%}")
    if threshold.get("min_feature_cosine") is not None:
        parts.append(f"the features' cosine to PyTorch's at least {threshold['min_feature_cosine']:g} at every position")
    return " and ".join(parts) or "none"


def _yaml(value: str) -> str:
    """A YAML scalar: quoted when it could be read as something else."""
    text = str(value)
    plain = text and all(c.isalnum() or c in "-_./" for c in text) and text[0] not in "-." and text.lower() not in (
        "true", "false", "null", "yes", "no", "on", "off")
    return text if plain and not text.replace(".", "").isdigit() else json.dumps(text)
