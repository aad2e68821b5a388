"""`lmkit export`: a model directory to a validated ONNX export directory (or Triton repository).

    load the model -> its exporter's plan -> torch.onnx per graph -> fp16 / int8 -> validation
    against PyTorch -> tokenizer, Triton config -> manifest with the hash of every file

Everything is written into a staging directory that becomes `out` only at the end, so an export
that fails (validation included) leaves nothing behind.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import tempfile
from collections.abc import Callable

from lmkit import __version__
from lmkit.artifacts import atomic_write, atomic_write_json, check_out, staged_directory
from lmkit.errors import LmkitError, MissingDependency, PluginError
from lmkit.opening import generation_settings
from lmkit.registry import Component, PluginHost, get_host

from . import triton, triton_python
from .convert import DEFAULT_OPSET, export_graph
from .graphs import ExportPlan
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, describe_files
from .precision import PRECISIONS, Int4Options, int8_description, to_fp16, to_int4, to_int8
from .validation import THRESHOLDS, Threshold, validate

LAYOUTS = ("onnx", "triton")
# The decoder-only cache layouts (lmkit.exports.decoder_only), by what they are for: fast, onnxruntime's
# fused attention over buffers written in place, where the exporter offers it; genai, the concatenating
# layout onnxruntime-genai reads. An exporter offers a choice with a `cache_layout` keyword.
CACHE_LAYOUTS = {"fast": "buffer", "genai": "concat"}
# What exporting imports (module and distribution names alike); the `torch` extra brings all of them.
EXPORT_NEEDS = ("torch", "onnx", "onnxruntime", "onnxscript")


def find_exporter(spec, host: PluginHost) -> Component:
    """The exporter of a composition: its decoder's if it has one (it drives generation), else its encoder's."""
    kind, part = ("decoder", spec.decoder) if spec.decoder is not None else ("encoder", spec.encoder)
    if part is None:
        raise LmkitError("the model has neither an encoder nor a decoder: there is nothing to export")
    name = f"{kind}.{part.type}"
    if name not in host.components["exporter"]:
        available = ", ".join(sorted(host.components["exporter"])) or "none"
        plugin = host.describe(part.component.plugin) if part.component.plugin else "an unknown plugin"
        raise PluginError(f"the {kind} '{part.type}' of {plugin} cannot be exported yet: no plugin registers an "
                          f"exporter '{name}' (exporters available: {available}); the plugin adds one with the "
                          "register_exporters hook, see docs/export.md")
    return host.component("exporter", name)


def export_model(model_dir: str, out: str, *, precision: str = "fp32", layout: str = "onnx",
                 name: str | None = None, opset: int = DEFAULT_OPSET, threshold: Threshold | None = None,
                 force: bool = False, host: PluginHost | None = None,
                 progress: Callable[[str], None] | None = None, int4: Int4Options | None = None,
                 license: str = "other", cache_layout: str = "fast") -> dict:
    """Export the model in `model_dir` to `out`; returns the manifest that was written.

    precision: fp32, fp16, int8 or int4 (weight-only, blockwise, 8 or 4 bits; `int4` says
    what else is quantized, by default Int4Options()). layout: onnx (an export directory) or
    triton (a model repository whose model folder `name` is the export directory). threshold: the
    parity the export must reach, by default THRESHOLDS[precision]. progress: told, in one line,
    what is being exported once the model and its exporter are found (the slow part follows).
    license: the model card's license (a Hugging Face license id; "other" when not given).
    cache_layout: a decoder's cache, "fast" or "genai" (see CACHE_LAYOUTS); the manifest's
    dimensions say `cache_layout: buffer` where the fast one was written.
    """
    _require(*EXPORT_NEEDS)
    from lmkit.model import load_model

    if precision not in PRECISIONS:
        raise LmkitError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if layout not in LAYOUTS:
        raise LmkitError(f"unknown format '{layout}'; choose one of {', '.join(LAYOUTS)}")
    if cache_layout not in CACHE_LAYOUTS:
        raise LmkitError(f"unknown cache layout '{cache_layout}'; choose one of {', '.join(CACHE_LAYOUTS)}")
    check_out(out, force, inputs=(model_dir,))  # refused before the minutes an export takes, not after
    host = host or get_host()
    name = triton.check_name(name or _default_name(model_dir)) if layout == "triton" else None
    model, tokenizer, config = load_model(model_dir, host)
    model.eval()
    exporter = find_exporter(model.spec, host)
    if progress is not None:
        progress(f"exporting {model_dir} ({precision}) with {exporter.name} of {host.describe(exporter.plugin)} ...")
    target = exporter.load()
    accepts_layout = "cache_layout" in inspect.signature(target).parameters
    plan: ExportPlan = target(model, cache_layout=CACHE_LAYOUTS[cache_layout]) if accepts_layout else target(model)
    runtimes = host.components["export-runtime"]
    if plan.architecture not in runtimes:
        raise LmkitError(f"exporter '{exporter.name}' made a '{plan.architecture}' export, which no installed "
                         f"export runtime serves (installed: {', '.join(sorted(runtimes)) or 'none'}); its plugin "
                         "registers one with the register_export_runtimes hook")
    if precision not in plan.precisions:
        raise LmkitError(f"exporter '{exporter.name}' cannot export this model in {precision} (it supports "
                         f"{', '.join(plan.precisions)}): export with --dtype fp32 and no --quantize, or in one of those")
    token_inputs = None if tokenizer is None else model.feature_stack.token_inputs(tokenizer)
    if token_inputs is not None:  # what the runtime computes from text beside the ids (lmkit.token_inputs)
        plan.dimensions = {**plan.dimensions, "token_inputs": token_inputs}
    if (plan.layout is not None) != (model.kind == "encoder-decoder"):
        raise LmkitError(f"exporter '{exporter.name}' must give an encoder-decoder model's plan a layout "
                         "(lmkit.exports.graphs.EncoderDecoderLayout), and no other model's")

    from .heads import layers_graph, validation_head

    head = validation_head(model, config["spec"])  # before anything is written: a head it cannot export stops here
    # The Triton configuration is made before anything is written: a plan it cannot lay out stops here.
    config_pbtxt = None
    if name:  # an encoder-decoder's model is lmkit's loop over its two graphs (lmkit.exports.triton_python)
        config_pbtxt = (triton_python.config_pbtxt(name, ".", translation=True) if plan.layout is not None
                        else triton.config_pbtxt(name, plan.graphs, precision))
    layers = layers_graph(model, config["spec"], plan)  # a task model between the encoder and the head's layer
    if layers is not None:
        plan.graphs = [*plan.graphs, layers]

    with staged_directory(out, force=force, inputs=(model_dir,)) as stage:
        root = os.path.join(stage, name) if name else stage
        files = {graph.name: triton.graph_file(graph) if name else f"{graph.name}.onnx" for graph in plan.graphs}
        dynamic: list[str] = []  # nodes an int8 export quantized dynamically (precision.to_int8)
        with tempfile.TemporaryDirectory(prefix=".lmkit-export-", dir=os.path.dirname(stage)) as work:
            for graph in plan.graphs:
                target = os.path.join(root, files[graph.name])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                dynamic += _write_graph(graph, target, precision, opset, work, int4 or Int4Options())
        report = validate([(graph, os.path.join(root, files[graph.name])) for graph in plan.graphs],
                          precision, threshold or THRESHOLDS[precision], head=head,
                          head_graph=None if layers is None else layers.name, opset=opset)
        if tokenizer is not None:
            tokenizer.save(root)
        from lmkit.model import TARGET_TOKENIZER, load_target_tokenizer

        target_tokenizer = load_target_tokenizer(model_dir)  # an encoder-decoder's own target side
        if target_tokenizer is not None:
            target_tokenizer.save(os.path.join(root, TARGET_TOKENIZER))
        special = _special_tokens(tokenizer)
        if plan.layout is not None and (target_tokenizer or tokenizer) is not None:
            # The decoder says which token the target side starts from (<s> for LSTM NMT, pad for T5).
            special["decoder_start"] = model.decoder.decoder_start_token_id(target_tokenizer or tokenizer)
        suffix = []
        if plan.layout is not None and tokenizer is not None:
            from lmkit.seq2seq import source_suffix_ids

            suffix = source_suffix_ids(model.encoder, tokenizer)  # T5's </s>, which the runtime appends too
        from .heads import save_head

        task_head = save_head(model, config["spec"], root, layers)  # a fine-tuned encoder's head runs beside its graph
        if config_pbtxt:
            with atomic_write(os.path.join(root, "config.pbtxt")) as handle:
                handle.write(config_pbtxt)
            if plan.layout is not None:
                triton_python.write_model_py(root)
            elif _continues_prompts(model, config["spec"], host):  # beside the raw graph: lmkit's own loop as a model
                triton_python.write_text_model(stage, name)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "lmkit_version": __version__,
            "created_with": _versions(),
            "source": {**{key: config.get(key) for key in ("lmkit_version", "spec", "components", "plugins")},
                       **({"imported_from": config["imported_from"]} if "imported_from" in config else {})},
            "exporter": {"name": exporter.name, "plugin": exporter.plugin},
            "architecture": plan.architecture,
            "opset": opset,
            "dtype": precision,
            "quantization": {"int8": int8_description(dynamic), "int4": (int4 or Int4Options()).describe()}.get(precision),
            "dimensions": plan.dimensions,
            "graphs": {graph.name: graph.describe(files[graph.name]) for graph in plan.graphs},
            **({"encoder_decoder": plan.layout.to_dict()} if plan.layout is not None else {}),
            **({"source_suffix": suffix} if suffix else {}),
            "tokenizer": "tokenizer.json" if tokenizer is not None else None,
            **({"target_tokenizer": f"{TARGET_TOKENIZER}/tokenizer.json"} if target_tokenizer is not None else {}),
            "special_tokens": special,
            "generation": generation_settings(config["spec"]),
            "validation": report,
            "triton": {"name": name, "config": "config.pbtxt"} if name else None,
            **({"task_head": task_head} if task_head is not None else {}),
        }
        # genai reads an export directory, not a Triton repository's model folder.
        _write_serving_files(root, manifest, None if name else runtimes[plan.architecture], progress)
        from .card import MODEL_CARD, model_card

        # The card lists the files it sits beside; the manifest then hashes it with them.
        card = model_card({**manifest, "files": describe_files(root)}, license=license)
        with atomic_write(os.path.join(root, MODEL_CARD)) as handle:
            handle.write(card)
        manifest["files"] = describe_files(root)
        atomic_write_json(os.path.join(root, MANIFEST), manifest)
    return manifest


def _continues_prompts(model, spec: dict, host) -> bool:
    """A decoder-only model that continues its prompts (lmkit serve's kind), not one that fills blanks (GLM)."""
    return model.kind == "decoder" and (spec.get("decoder") or {}).get("type") not in host.components["generator"]


def _write_serving_files(root: str, manifest: dict, runtime: Component | None, progress) -> None:
    """What other tools read beside lmkit's own: genai_config.json for a generating export that
    onnxruntime-genai can run (else the reason, in the manifest and one line to `progress`), and
    tokenizer_config.json's model_input_names (the inputs the graph reads, so transformers' tokenizer
    gives no token_type_ids to a GPT)."""
    from lmkit.artifacts import read_json

    from .genai import GENAI_CONFIG, genai_config, model_input_names

    if runtime is not None and runtime.load().kind == "decoder":
        config, reason = genai_config(manifest)
        if config is not None:
            atomic_write_json(os.path.join(root, GENAI_CONFIG), config)
        elif progress is not None and manifest.get("dimensions", {}).get("cache_layout") != "buffer":
            # The default fast layout is not genai's by choice (--layout genai is); other reasons are news.
            progress(f"no {GENAI_CONFIG}: onnxruntime-genai cannot run this export: {reason}")
        manifest["genai"] = {"config": GENAI_CONFIG if config is not None else None,
                             **({"reason": reason} if reason else {})}
    names = model_input_names(manifest)
    tokenizer_config = os.path.join(root, "tokenizer_config.json")
    if names and os.path.isfile(tokenizer_config):
        atomic_write_json(tokenizer_config, {**read_json(tokenizer_config, "export the model again"),
                                             "model_input_names": names})


def _special_tokens(tokenizer) -> dict:
    if tokenizer is None:
        return {"bos": None, "eos": None, "pad": None}
    return {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}


def _require(*modules: str) -> None:
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingDependency(f"exporting needs {', '.join(missing)}, not installed here; install with: "
                                "pip install -c constraints.txt 'lmkit-toolkit[torch]'")


def _write_graph(graph, target: str, precision: str, opset: int, work: str, int4: Int4Options) -> list[str]:
    """Export `graph` to `target` in `precision`; an fp16, int8 or int4 graph is converted from fp32 in `work`.
    Returns the nodes an int8 conversion quantized dynamically (precision.to_int8)."""
    if precision == "fp32":
        export_graph(graph, target, opset)
        return []
    fp32 = os.path.join(work, f"{graph.name}.fp32.onnx")
    export_graph(graph, fp32, opset)
    if precision == "fp16":
        to_fp16(fp32, target, graph.fp32_ops)
    elif precision == "int4":
        to_int4(fp32, target, int4)
    else:
        return to_int8(fp32, target)
    return []


def _default_name(model_dir: str) -> str:
    """A Triton model name from the model directory's name (runs/m0 -> m0)."""
    base = os.path.basename(os.path.normpath(model_dir)) or "model"
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in base).lstrip(".-") or "model"


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
