"""One graph of an export plan to an ONNX file, with torch.onnx's dynamo exporter.

Why dynamo (torch.export) and not the legacy TorchScript tracer: it is torch's default and the only
exporter still developed, it keeps a tied embedding as one initializer (the tracer stores GPT-2's
wte twice), and with every symbolic axis marked Dim.AUTO it traces the cache concatenation with
symbolic lengths instead of the example's. What it does not do is name the axes our way or promise
that none was specialised, so this module renames them and checks (see `name_dimensions`).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings

from lmkit.errors import LmkitError

from .graphs import Graph

# ONNX opset 18: read by onnxruntime >= 1.14 and Triton's onnxruntime backend, and the opset the
# exporter's op library is written in, so no version conversion runs. Opset 23 would turn SDPA into
# the fused Attention op, which only the newest runtimes have.
DEFAULT_OPSET = 18
# A protobuf file stops at 2 GiB: past 1 GiB of weights, they go to one file beside the graph.
EXTERNAL_DATA_BYTES = 1 << 30


class ExportError(LmkitError):
    """A graph could not be exported, or came out with an axis fixed that should vary."""


def export_graph(graph: Graph, path: str, opset: int = DEFAULT_OPSET) -> None:
    """Write `graph` to `path` (weights beside it, in `<file>.data`, past 1 GiB)."""
    import onnx
    import torch
    from torch.export import Dim

    if graph.exporter == "legacy":
        _export_legacy(graph, path, opset)
        model = onnx.load(path)
        name_dimensions(model, graph)
        strip_node_metadata(model)
        share_transposed_initializers(model)
        onnx.save(model, path)
        return
    dynamic = _dynamic_shapes(graph.module, [
        {axis: Dim.AUTO for axis, size in enumerate(t.shape) if isinstance(size, str)} for t in graph.inputs])
    weights = sum(p.numel() * p.element_size() for p in graph.module.parameters())
    # torch.onnx reports its progress on stdout and logs optional ops it skips; lmkit says what it does.
    with contextlib.redirect_stdout(io.StringIO()), quiet_loggers("torch.onnx", "onnxscript"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                graph.module, graph.example, dynamo=True, opset_version=opset, optimize=True,
                input_names=[t.name for t in graph.inputs], output_names=[t.name for t in graph.outputs],
                dynamic_shapes=dynamic, verbose=False, custom_translation_table=graph.translations,
            )
        except Exception as error:  # noqa: BLE001 - torch.export raises many kinds; all mean the same here
            _raise_if_interrupted(error)
            cause = error.__cause__ or error  # torch.onnx wraps torch.export's error in advice
            message = " ".join(str(cause).split("\n", 1)[0].split())[:300]
            raise ExportError(f"torch.onnx could not export graph '{graph.name}': {type(cause).__name__}: "
                              f"{message} (LMKIT_DEBUG=1 shows the traceback)") from error
        program.save(path, external_data=weights > EXTERNAL_DATA_BYTES)
    model = onnx.load(path, load_external_data=False)
    name_dimensions(model, graph)
    strip_node_metadata(model)
    onnx.save(model, path)  # external tensors, if any, stay as references to the data file written above


def _raise_if_interrupted(error: BaseException) -> None:
    """Ctrl-C inside torch.onnx can surface as another error (a trial's: an AttributeError of a module whose
    import it cut short): an interrupt anywhere in the chain is the interrupt, not a failed export."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            raise error from None  # the same interrupt: Ctrl-C, or SIGTERM (lmkit.cli.Terminated)
        seen.add(id(error))
        error = error.__cause__ or error.__context__


def _export_legacy(graph: Graph, path: str, opset: int) -> None:
    """The TorchScript tracer (dynamo=False), its dynamic axes named by the plan directly."""
    import torch

    axes = {t.name: {axis: size for axis, size in enumerate(t.shape) if isinstance(size, str)}
            for t in [*graph.inputs, *graph.outputs]}
    symbolics = graph.translations or {}
    with contextlib.redirect_stdout(io.StringIO()), quiet_loggers("torch.onnx"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, symbolic in symbolics.items():
            torch.onnx.register_custom_op_symbolic(name, symbolic, opset)
        try:
            torch.onnx.export(graph.module, graph.example, path, dynamo=False, opset_version=opset,
                              input_names=[t.name for t in graph.inputs], output_names=[t.name for t in graph.outputs],
                              dynamic_axes=axes, do_constant_folding=True)
        except Exception as error:  # noqa: BLE001
            _raise_if_interrupted(error)
            message = " ".join(str(error).split("\n", 1)[0].split())[:300]
            raise ExportError(f"torch.onnx (legacy) could not export graph '{graph.name}': {type(error).__name__}: "
                              f"{message}") from error
        finally:
            for name in symbolics:
                torch.onnx.unregister_custom_op_symbolic(name, opset)


def share_transposed_initializers(model) -> int:
    """Store a weight once where the tracer stored it twice, as itself and transposed; returns how many.

    The TorchScript tracer folds the transpose of a tied embedding into a second initializer (T5-small's
    32,128 x 512: 66 MB of a 220 MB decoder). Here that copy becomes Transpose(embedding), the form the
    dynamo exporter writes: onnxruntime folds it once when a session opens, and the int8 converter
    quantizes it as dynamo's (lmkit.exports.precision).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    matrices = {init.name: init for init in graph.initializer if len(init.dims) == 2 and init.dims[0] != init.dims[1]}
    by_shape: dict[tuple, list[str]] = {}
    for name, init in matrices.items():
        by_shape.setdefault((tuple(init.dims), init.data_type), []).append(name)
    arrays: dict[str, object] = {}

    def array(name: str):
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(matrices[name])
        return arrays[name]

    replaced: dict[str, str] = {}
    for name, init in matrices.items():
        if name in replaced:
            continue
        for other in by_shape.get((tuple(reversed(init.dims)), init.data_type), []):
            if other in replaced or other in replaced.values():  # each matrix is kept or replaced, never both
                continue
            if (array(name)[:4, :4].T == array(other)[:4, :4]).all() and (array(name).T == array(other)).all():
                replaced[other] = name
    if not replaced:
        return 0
    kept = [init for init in graph.initializer if init.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    transposes = [helper.make_node("Transpose", [source], [copy], name=f"{copy}/shared", perm=[1, 0])
                  for copy, source in replaced.items()]
    nodes = [*transposes, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(replaced)


@contextlib.contextmanager
def quiet_loggers(*loggers: str):
    """Only errors from these loggers ("" is the root logger) while the block runs."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _dynamic_shapes(module, per_input: list[dict]) -> tuple:
    """The dynamic axes of the inputs, nested as forward's parameters are (`*past` takes a tuple)."""
    shapes, rest = [], list(per_input)
    for parameter in inspect.signature(module.forward).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            if rest:  # an empty *past (a decoder without a cache) is no input at all
                shapes.append(tuple(rest))
            rest = []
        elif rest:
            shapes.append(rest.pop(0))
    return tuple(shapes)


def name_dimensions(model, graph: Graph) -> None:
    """Give the symbolic axes the plan's names, refusing an axis the exporter fixed to a number.

    torch.export calls its symbols s0, s1, ...; an input axis declared "batch_size" maps its symbol
    to that name everywhere in the graph. Two names landing on one symbol, or a declared name on a
    fixed size (the example's sequence length baked in, say), mean the graph would only run at the
    example's shapes, so the export stops.
    """
    symbols: dict[str, str] = {}
    for declared, values, side in ((graph.inputs, model.graph.input, "input"),
                                   (graph.outputs, model.graph.output, "output")):
        values = {value.name: value for value in values}
        for info in declared:
            if info.name not in values:
                raise ExportError(f"graph '{graph.name}' has no {side} '{info.name}'; "
                                  f"it has {', '.join(values) or 'none'}")
            dims = values[info.name].type.tensor_type.shape.dim
            if len(dims) != len(info.shape):
                raise ExportError(f"{side} '{info.name}' has {len(dims)} axes in the graph, the plan says "
                                  f"{len(info.shape)}")
            for axis, (size, dim) in enumerate(zip(info.shape, dims)):
                if isinstance(size, int):
                    if side == "output" and dim.dim_param and not dim.dim_value:
                        # Left symbolic where ONNX's shape inference loses track (the outputs of a Loop, as
                        # a TorchScript time loop exports): the plan's size is the one validation checks.
                        dim.dim_value = size
                        continue
                    if dim.dim_value != size:
                        raise ExportError(f"{side} '{info.name}' axis {axis} is {dim.dim_value or dim.dim_param} "
                                          f"in the graph, the plan says {size}")
                    continue
                if not dim.dim_param:
                    raise ExportError(f"{side} '{info.name}' axis {axis} ({size}) was fixed to {dim.dim_value} "
                                      "by the exporter: the graph would only run at the example's shape")
                if side == "input":
                    if symbols.setdefault(dim.dim_param, size) != size:
                        raise ExportError(f"the exporter gave '{size}' and '{symbols[dim.dim_param]}' one "
                                          f"symbol in graph '{graph.name}': they would have to be equal")
                dim.dim_param = size
    # The symbols inside the graph (shapes it inferred for intermediate values), renamed to match.
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, symbols)) + r")\b") if symbols else None
    for value in model.graph.value_info:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param and pattern is not None:
                dim.dim_param = pattern.sub(lambda match: symbols[match.group(1)], dim.dim_param)


def strip_node_metadata(model) -> None:
    """Drop the exporter's per-node notes: source paths and stack traces of the machine that exported."""
    for node in model.graph.node:
        del node.metadata_props[:]
