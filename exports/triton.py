"""A Triton Inference Server model repository: `<name>/config.pbtxt` and `<name>/1/model.onnx`.

The model's folder is also a complete lmkit export (manifest and tokenizer beside config.pbtxt), so
`lmkit inspect repo/<name>` and `lmkit.exports.load("repo/<name>")` read it as they read any export.
"""
from __future__ import annotations

import re

from lmkit.errors import LmkitError

from .graphs import Graph

VERSION = "1"  # Triton serves the numbered folders; an export is its first version
TRITON_TYPES = {"int64": "TYPE_INT64", "int32": "TYPE_INT32", "bool": "TYPE_BOOL",
                "float32": "TYPE_FP32", "float16": "TYPE_FP16"}
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise LmkitError(f"--name {name!r} cannot name a Triton model: use letters, digits, '_', '.' and '-'")
    return name


def graph_file(graph: Graph) -> str:
    return f"{VERSION}/{graph.name}.onnx"


def config_pbtxt(name: str, graphs: list[Graph], precision: str) -> str:
    """The model configuration, its inputs and outputs taken from the graph the manifest describes."""
    if len(graphs) != 1:
        raise LmkitError(f"this export has {len(graphs)} graphs; a Triton layout of more than one (an "
                         "ensemble) is not supported yet: export with --format onnx")
    graph = graphs[0]
    # An int8 graph's products (MatMulNBits at accuracy level 4) compute in int8 on CPUs; fp32 and fp16
    # are for GPU serving.
    kind = "KIND_CPU" if precision == "int8" else "KIND_GPU"
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f'default_model_filename: "{graph.name}.onnx"',
        "# The batch axis is part of every dims below (max_batch_size 0): each request carries its own",
        "# key/value cache, whose past length differs between requests, so Triton cannot batch them.",
        "max_batch_size: 0",
    ]
    for section, tensors in (("input", graph.inputs), ("output", graph.outputs)):
        entries = []
        for tensor in tensors:
            dims = ", ".join(str(size) if isinstance(size, int) else "-1" for size in tensor.shape)
            symbolic = ", ".join(str(size) for size in tensor.shape)
            entries.append(f'  {{\n    name: "{tensor.name}"\n    data_type: {TRITON_TYPES[tensor.dtype]}\n'
                           f"    dims: [ {dims} ]  # {symbolic}\n  }}")
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    lines.append(f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]")
    return "\n".join(lines) + "\n"
