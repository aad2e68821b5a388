"""Parity of an exported graph with the PyTorch model it came from, measured at export time.

Every graph runs in onnxruntime (CPU, default optimizations, as the runtime loads it) and in
PyTorch (fp32) on the shape sets its exporter chose, unlike the example it was traced with. The
figures go into the manifest; an export whose figures miss its dtype's threshold is not written.

    fp32  every output within 1e-4 of PyTorch's, or within 1e-5 of the output's largest |value| where that
          allows more: rounding grows with the numbers it rounds, and a model whose logits reach the
          hundreds (T5 checkpoints do) differs by ~1e-6 of them; a fault differs by far more
    fp16  top-1 agreement on the scores (logits) of at least 90%: half precision moves logits by
          ~1e-3 relative, which flips only near-ties; less agreement means a broken conversion
    int8  top-1 agreement of at least 50%: quantization error depends on the model, so the floor
          only catches a collapse; the figure itself says how good it is

An fp16 export whose fp32 reference has a matrix product (a Linear's output) beyond fp16's 65504 on
the validation inputs is refused, naming it: T5's feed-forward products overflow half precision, and
onnxruntime's CPU, which computes many fp16 ops in fp32, would not show it. And whatever the precision,
an output that holds inf or NaN where PyTorch's is finite refuses the export: NaN logits would
otherwise agree with PyTorch's top-1 by chance.

Top-1 agreement is taken over every graph's scores (a language model's logits, at real positions)
and over a fine-tuned encoder's task head applied to the graph's features (its label per example
or per token, an answer's start and end). An fp16 or int8 export with none of these (a plain
feature encoder, a regression head) cannot be checked against its floor and is refused. The
manifest's `top1_graphs` names the graphs the figure was measured on.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from lmkit.errors import LmkitError

from .convert import DEFAULT_OPSET
from .graphs import Graph, ShapeSet


@dataclass(frozen=True)
class Threshold:
    """max_abs_diff: every output within this of PyTorch's; max_rel_diff: or within this share of the output's
    largest |value|, where that allows more; min_top1_agreement: the share of positions picking PyTorch's top-1."""

    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    min_top1_agreement: float | None = None
    # Where there is no top-1 to take (a feature encoder): the least cosine of any real position's features
    # (last_hidden_state) to PyTorch's, held to this instead.
    min_feature_cosine: float | None = None

    def allowed(self, scale: float) -> float:
        """The largest difference an output whose largest |value| is `scale` may have."""
        return max(self.max_abs_diff, (self.max_rel_diff or 0.0) * scale)


THRESHOLDS = {
    "fp32": Threshold(max_abs_diff=1e-4, max_rel_diff=1e-5),
    "fp16": Threshold(min_top1_agreement=0.9, min_feature_cosine=0.99),
    "int8": Threshold(min_top1_agreement=0.5, min_feature_cosine=0.99),
    "int4": Threshold(min_top1_agreement=0.5, min_feature_cosine=0.99),
}


class ValidationError(LmkitError):
    """An export differs from PyTorch by more than its threshold allows."""


def validate(graphs: list[tuple[Graph, str]], precision: str, threshold: Threshold, head=None,
             head_graph: str | None = None, opset: int = DEFAULT_OPSET) -> dict:
    """Run each (graph, onnx file) on its shape sets; the report for the manifest, or ValidationError.

    head: a task head's choices (lmkit.exports.heads.head_choices), applied to the outputs of every
    graph that has the features it reads, in PyTorch and in onnxruntime: its top-1 choices count
    towards top-1 agreement, as a graph's own scores do; head_graph: the one graph whose outputs it reads
    (a task model's between the encoder and the head: lmkit.exports.heads.layers_graph). Every figure the threshold names must be
    measured: an fp16 or int8 export with nothing to take a top-1 of is refused. opset: the one the graphs
    were exported at, named in the error where onnxruntime cannot load them.
    """
    import onnxruntime as ort
    import torch

    results = []
    for graph, path in graphs:
        with _onnxruntime_errors(graph.name, precision, opset):
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [t.name for t in graph.outputs]
        for shape_set in graph.validation:
            with torch.no_grad(), _largest_products(graph.module, precision) as largest:
                expected = graph.module(*(torch.from_numpy(shape_set.inputs[t.name]) for t in graph.inputs))
            if largest and max(largest.values()) > FP16_MAX:
                name = max(largest, key=largest.get)
                label = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in shape_set.label.items())
                raise ValidationError(
                    f"the fp16 export overflows: {name} of graph '{graph.name}' reaches {largest[name]:.3g} ({label}), "
                    f"beyond fp16's largest value {FP16_MAX:g}, so half precision turns it into inf and NaN (on a "
                    "GPU; onnxruntime's CPU may hide it by computing in fp32); export in fp32 or int8; nothing "
                    "was written")
            if isinstance(expected, torch.Tensor):  # a graph of one output may return it bare
                expected = (expected,)
            with _onnxruntime_errors(graph.name, precision, opset):
                actual = (_run_shared(session, graph, names, shape_set.inputs) if graph.shared_cache
                          else session.run(names, shape_set.inputs))
            expected = [e.numpy() for e in expected]
            if shape_set.filled:  # a buffer's spare room is not the graph's to keep (ShapeSet.filled)
                expected, actual = ([value[:, :, :shape_set.filled[name]] if name in shape_set.filled else value
                                     for name, value in zip(names, values)] for values in (expected, actual))
            result = _compare(graph, shape_set, names, expected, actual)
            if FEATURES in names:
                at = names.index(FEATURES)
                result.cosine = _least_cosine(expected[at], actual[at], shape_set.inputs.get("attention_mask"))
            reads_head = graph.name == head_graph if head_graph else {"pooler_output", "last_hidden_state"} <= set(names)
            if head is not None and reads_head:
                want, got = (head(dict(zip(names, outputs)), shape_set.inputs) for outputs in (expected, actual))
                if want is not None:
                    same = want == got
                    agreed, counted = result.agreement or (0, 0)
                    result.agreement = (agreed + int(same.sum()), counted + int(same.size))
            results.append(result)
    agreed, counted = (sum(r.agreement[i] for r in results if r.agreement) for i in (0, 1))
    report = {
        "reference": f"PyTorch {torch.__version__} fp32",
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        # the floors that apply (min_feature_cosine only where no top-1 is measured: _check puts it in then)
        "threshold": {key: value for key, value in asdict(threshold).items()
                      if value is not None and key != "min_feature_cosine"},
        "max_abs_diff": max(r.worst for r in results),
        "top1_agreement": agreed / counted if counted else None,
        "feature_cosine": min((r.cosine for r in results if r.cosine is not None), default=None),
        "top1_graphs": sorted({r.graph for r in results if r.agreement and r.agreement[1]}),
        "shape_sets": [r.to_dict() for r in results],
    }
    _check(report, results, precision, threshold)
    return report


FP16_MAX = 65504.0
FEATURES = "last_hidden_state"  # a feature encoder's output, whose cosine to PyTorch's stands in for top-1


def _least_cosine(want: np.ndarray, got: np.ndarray, mask: np.ndarray | None) -> float | None:
    """The least cosine between PyTorch's and onnxruntime's vector at any real position: (B, T, D) each, mask
    (B, T) nonzero at real tokens; None when there is no real position with a nonzero vector."""
    want, got = want.astype(np.float64).reshape(-1, want.shape[-1]), got.astype(np.float64).reshape(-1, got.shape[-1])
    real = np.ones(len(want), dtype=bool) if mask is None else np.asarray(mask).reshape(-1) != 0
    norms = np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1)
    keep = real & (norms > 0)
    if not keep.any():
        return None
    return float(((want[keep] * got[keep]).sum(1) / norms[keep]).min())


def _past(diff: float, allowed: float) -> float:
    """How many times the allowed difference `diff` is (above 1: too far); --atol 0 allows none at all."""
    if allowed > 0:
        return diff / allowed
    return math.inf if diff > 0 else 0.0


def _run_shared(session, graph: Graph, names: list[str], inputs: dict) -> list[np.ndarray]:
    """Run with each cache output bound to a copy of its input's memory, as the runtime runs the graph."""
    from onnxruntime import OrtValue

    binding = session.io_binding()
    shared = {output: np.array(inputs[name]) for name, output in graph.cache}
    for name, value in inputs.items():
        if name not in dict(graph.cache):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for name in names:  # first, so that they come first from get_outputs
        if name not in shared:
            binding.bind_output(name, "cpu")
    for name, output in graph.cache:
        value = OrtValue.ortvalue_from_numpy(shared[output])  # CPU: the array's own memory
        binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(output, value)
    session.run_with_iobinding(binding)
    others = iter(value.numpy() for value in binding.get_outputs()[:len(names) - len(shared)])
    return [shared[name] if name in shared else next(others) for name in names]


@contextlib.contextmanager
def _largest_products(module, precision: str):
    """For an fp16 export: {Linear's name: largest |output|} of the fp32 reference's matrix products while the
    block runs (where activations outgrow half precision: T5's feed-forward products, transformers#9295);
    empty for other precisions."""
    import torch

    largest: dict[str, float] = {}
    handles = []
    if precision == "fp16":
        for name, child in module.named_modules():
            if isinstance(child, torch.nn.Linear):
                def hook(_, __, output, name=name):
                    if isinstance(output, torch.Tensor) and output.is_floating_point() and output.numel():
                        largest[name] = max(largest.get(name, 0.0), float(output.detach().abs().max()))
                handles.append(child.register_forward_hook(hook))
    try:
        yield largest
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _onnxruntime_errors(graph: str, precision: str, opset: int):
    """A graph onnxruntime cannot load or run becomes a one-line ValidationError, not an internal error,
    whose advice fits what was asked: another opset than the default, another precision than fp32."""
    try:
        yield
    except Exception as error:  # onnxruntime raises its own types (Fail, InvalidGraph, NotImplemented, ...)
        import torch

        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        # onnxruntime's code and the staging folder's path say nothing to the user
        reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from \S+ failed:)?", "", reason)
        if opset != DEFAULT_OPSET:  # torch 2.13 wrote opset 18's Gelu into graphs asked for at 26 to 28
            fix = (f"export it again with a lower --opset (the default is {DEFAULT_OPSET}): at opset {opset}, "
                   f"torch {torch.__version__.split('+')[0]}'s exporter can write ops the graph's opset lacks")
        elif precision != "fp32":
            fix = "export it in fp32, or in another precision the model supports"
        else:
            fix = "this is a fault in lmkit's export of this model: please report it with the command that made it"
        raise ValidationError(f"onnxruntime cannot run the {precision} graph '{graph}' ({reason}); {fix}") from None


@dataclass
class _Result:
    graph: str
    label: dict[str, int]
    max_abs_diff: dict[str, float]  # by output, those that differ only by a layer number together
    agreement: tuple[int, int] | None  # (positions whose top-1 token agrees, positions counted)
    overflow: str | None = None  # the first output with inf/NaN where PyTorch's is finite
    cosine: float | None = None  # the least cosine of a real position's features to PyTorch's (FEATURES)
    scale: dict[str, float] = field(default_factory=dict)  # by output as above: PyTorch's largest |value|

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())

    def to_dict(self) -> dict:
        out = {"graph": self.graph, **self.label, "max_abs_diff": self.max_abs_diff}
        if self.agreement is not None:
            out["top1_agreement"] = self.agreement[0] / max(1, self.agreement[1])
        return out

    def describe(self) -> str:
        return ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in self.label.items())


def _compare(graph: Graph, shape_set: ShapeSet, names: list[str], expected: list[np.ndarray],
             actual: list[np.ndarray]) -> _Result:
    result = _Result(graph.name, shape_set.label, {}, None)
    for name, want, got in zip(names, expected, actual):
        if want.shape != got.shape:
            raise ValidationError(f"output '{name}' of graph '{graph.name}' has shape {list(got.shape)} in "
                                  f"onnxruntime and {list(want.shape)} in PyTorch ({result.describe()})")
        diff = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
        if not np.isfinite(diff):  # NaN or inf in one of them: as far off as can be
            diff = float("inf")
            if result.overflow is None and np.isfinite(want).all():
                result.overflow = name
        group = re.sub(r"\.\d+\.", ".*.", name)  # present.0.key, present.1.key -> present.*.key
        result.max_abs_diff[group] = max(result.max_abs_diff.get(group, 0.0), diff)
        scale = float(np.abs(want).max()) if want.size and np.isfinite(want).all() else 0.0
        result.scale[group] = max(result.scale.get(group, 0.0), scale)
    if graph.scores is not None:
        index = names.index(graph.scores)
        same = expected[index].argmax(-1) == actual[index].argmax(-1)
        if shape_set.scored is not None:
            same = same[shape_set.scored]
        result.agreement = (int(same.sum()), int(same.size))
    return result


def _check(report: dict, results: list[_Result], precision: str, threshold: Threshold) -> None:
    overflowed = next((r for r in results if r.overflow is not None), None)
    if overflowed is not None:  # whatever the thresholds: a NaN's argmax agrees by chance, not by computing
        limit = " (fp16's largest value is 65504)" if precision == "fp16" else ""
        raise ValidationError(
            f"the {precision} export overflows: output {overflowed.overflow} of graph '{overflowed.graph}' holds "
            f"inf or NaN where PyTorch's is finite ({overflowed.describe()}): the model's activations exceed the "
            f"precision's range{limit}; export in fp32 (or int8); nothing was written")
    if threshold.max_abs_diff is not None:
        # The output furthest past what it may differ by (its share of its largest value, where that allows more).
        over, result, output = max(((_past(diff, threshold.allowed(r.scale.get(name, 0.0))), r, name)
                                    for r in results for name, diff in r.max_abs_diff.items()), key=lambda t: t[0])
        if over > 1:
            diff, allowed = result.max_abs_diff[output], threshold.allowed(result.scale.get(output, 0.0))
            relative = (f", or {threshold.max_rel_diff:g} of its largest |value| {result.scale.get(output, 0.0):.3g}"
                        if threshold.max_rel_diff else "")
            raise ValidationError(
                f"the {precision} export differs from PyTorch by {diff:.3g} on {output} ({result.describe()}), more "
                f"than the {allowed:.3g} allowed"
                + (f" ({threshold.max_abs_diff:g}{relative})" if relative else "") + "; nothing was written; if the "
                "PyTorch model is right and this much rounding is expected of it, allow more with --atol")
    agreement = report["top1_agreement"]
    cosine = report.get("feature_cosine")
    if threshold.min_top1_agreement is not None and agreement is None and threshold.min_feature_cosine is not None \
            and cosine is not None:
        # A feature encoder: what it gives is its features, held to PyTorch's by their cosine.
        report["threshold"] = {"min_feature_cosine": threshold.min_feature_cosine}
        if cosine < threshold.min_feature_cosine:
            raise ValidationError(
                f"the {precision} export's features point away from PyTorch's: a cosine of {cosine:.4f} at the worst "
                f"position, below the {threshold.min_feature_cosine:g} required; nothing was written; export fp32")
        return
    if threshold.min_top1_agreement is not None and agreement is None:
        raise ValidationError(
            f"the {precision} export has no output whose top-1 choice can be compared with PyTorch's (no "
            "language-model logits or classifying task head) and no features to compare by cosine (a regression "
            "head; or --min-top1 asked for top-1), so its "
            f"{threshold.min_top1_agreement:.0%} top-1 floor cannot be checked; export fp32, held to "
            f"{THRESHOLDS['fp32'].max_abs_diff:g} of PyTorch; nothing was written")
    if threshold.min_top1_agreement is not None:
        if agreement < threshold.min_top1_agreement:
            raise ValidationError(
                f"the {precision} export picks PyTorch's top-1 token at {agreement:.1%} of positions, "
                f"below the {threshold.min_top1_agreement:.0%} required; nothing was written"
            )
