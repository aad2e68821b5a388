"""Which onnxruntime runs an export, on which execution providers, and opening its graphs' sessions.

onnxruntime is imported only when a session is opened, and every refusal (a device this build lacks,
a provider that fell back to the CPU, an opset it cannot run) is one line with what to do.
"""
from __future__ import annotations

import logging
import re

from lmkit.errors import ArtifactError, LmkitError, MissingDependency

from .manifest import safe_path

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
# The onnxruntime package that brings an execution provider, for the error when it is missing.
PACKAGES = {CUDA: "onnxruntime-gpu", "TensorrtExecutionProvider": "onnxruntime-gpu",
            "DmlExecutionProvider": "onnxruntime-directml", "OpenVINOExecutionProvider": "onnxruntime-openvino",
            "QNNExecutionProvider": "onnxruntime-qnn"}
# The distributions that install the `onnxruntime` module; two of them overwrite each other's files.
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                         "onnxruntime-qnn", "onnxruntime-training")
# Where the cache stays between steps (IO binding), by the session's first provider; else the host.
BINDING_DEVICES = {CUDA: "cuda", "TensorrtExecutionProvider": "cuda"}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("running an export needs onnxruntime, which is not installed; install one of "
                                "pip install 'lmkit-toolkit[serve]' (CPU) or pip install 'lmkit-toolkit[serve-gpu]' (CUDA)") from None
    return onnxruntime


def installed_runtimes() -> list[str]:
    """The installed distributions that provide the onnxruntime module (one, unless the install is broken)."""
    from importlib import metadata

    found = []
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def _check_one_runtime() -> None:
    runtimes = installed_runtimes()
    if len(runtimes) > 1:
        log.warning("%s are all installed and overwrite each other's files in the onnxruntime module, so its "
                    "providers may be missing or broken; keep one: pip uninstall -y %s, then pip install the "
                    "one you want", " and ".join(runtimes), " ".join(runtimes))


def _device(device: str) -> tuple[str, int]:
    """("auto" | "cpu" | "cuda", card index) from auto, cpu, cuda or cuda:N."""
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise LmkitError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    return kind, int(index or 0)


def providers_for(device: str = "auto", provider: str | None = None) -> list:
    """The providers to ask onnxruntime for: a device (auto, cpu, cuda, cuda:N) or one provider by name.

    auto is CUDA when this onnxruntime build has it, else the CPU. A named provider must be one this
    build has; it is followed by the CPU provider, which runs the operators it lacks.
    """
    ort = _onnxruntime()
    kind, index = _device(device)
    available = ort.get_available_providers()
    if provider is not None:
        if kind != "auto":
            raise LmkitError(f"give a device ('{device}') or a provider ('{provider}'), not both")
        if provider not in available:
            raise LmkitError(_unavailable(ort, provider, available))
        return [provider] if provider == CPU else [provider, CPU]
    if kind == "cuda" and CUDA not in available:
        raise LmkitError(f"device '{device}' was asked for, but {_runtime_name(ort)} has no {CUDA} (it has "
                         f"{', '.join(available)}); install onnxruntime-gpu in place of onnxruntime, or use "
                         "device 'cpu'")
    if kind == "cpu" or CUDA not in available:
        return [CPU]
    return [(CUDA, {"device_id": index}), CPU]


def _unavailable(ort, provider: str, available: list[str]) -> str:
    """Why `provider` cannot be had, in one line, with the providers that can."""
    from lmkit.errors import did_you_mean

    have = f"this onnxruntime has {', '.join(available)}"
    if provider not in ort.get_all_providers():
        return (f"unknown execution provider '{provider}'{did_you_mean(provider, ort.get_all_providers())}; "
                f"{have}")
    package = PACKAGES.get(provider)
    fix = f"; install {package} in place of {_runtime_name(ort).split()[0]}" if package else ""
    return f"execution provider {provider} is not available in {_runtime_name(ort)}: {have}{fix}"


def _runtime_name(ort) -> str:
    """"onnxruntime-gpu 1.32.0": the installed package and version."""
    runtimes = installed_runtimes()
    return f"{runtimes[0] if len(runtimes) == 1 else 'onnxruntime'} {ort.__version__}"


def _name(provider) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def _cannot_load(ort, file: str, opsets: dict[str, int], manifest: dict, error: Exception) -> str:
    """One line on why onnxruntime refused a graph: an opset or IR version it does not know, or its own words."""
    text = " ".join(str(error).split())
    runtime = _runtime_name(ort)
    opset = opsets.get("ai.onnx") or manifest.get("opset")
    newest = re.search(r"official support for domain ai\.onnx is till opset (\d+)", text)
    asked = re.search(r"Opset (\d+) is under development", text)
    if newest or asked:
        opset = int(asked.group(1)) if asked else opset
        limit = f" (it runs opsets up to {newest.group(1)})" if newest else ""
        return (f"{file} is ONNX opset {opset}, which {runtime} cannot run{limit}; upgrade onnxruntime, or export "
                "the model again with a lower --opset (the default, 18, runs on onnxruntime 1.14 and later)")
    ir = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text)
    if ir:
        return (f"{file} is ONNX IR version {ir.group(1)}, which {runtime} cannot read (it reads up to "
                f"{ir.group(2)}); upgrade onnxruntime, or export the model again with an older onnx")
    # onnxruntime's message starts with its error code and the C++ source line; the rest is the reason.
    reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    reason = re.sub(r"^Load model from \S+ failed:", "", reason)
    reason = re.sub(r"^/\S+:\d+ [^)]*\) ", "", reason)[:300]
    missing = re.search(r"Could not find an implementation for (\S+)", text)
    if missing:
        return (f"{runtime} has no kernel for {missing.group(1)} in {file} (ONNX opset {opset}); upgrade "
                "onnxruntime, or export the model again with --opset 18")
    if opset is not None and "opset" in text.lower():
        return f"{file} is ONNX opset {opset}, which {runtime} cannot run ({reason}); upgrade onnxruntime"
    return f"{runtime} could not load {file}: {reason}"


def open_session(directory: str, manifest: dict, graph_name: str, opsets: dict[str, int], wanted: list,
                 device: str, provider: str | None, session_options=None):
    """The onnxruntime InferenceSession of one graph of a checked export, on the providers `wanted`.

    onnxruntime falls back to the CPU, with only a log line, when a provider does not start (the CUDA
    libraries do not load, say): what runs is what get_providers() says, not what was asked. A
    provider or device asked for by name is then an error; with device auto it is a warning.
    """
    ort = _onnxruntime()
    graph = manifest["graphs"][graph_name]
    path = safe_path(directory, graph["file"], "graph file")
    try:
        session = ort.InferenceSession(path, sess_options=session_options, providers=wanted)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types (Fail, InvalidGraph, ...)
        raise ArtifactError(f"{directory}: " + _cannot_load(ort, graph["file"], opsets, manifest, error)) from None
    running, first = session.get_providers()[0], _name(wanted[0])
    if running != first:
        if provider is not None or device != "auto":
            raise LmkitError(f"onnxruntime could not start {first} for {path} and fell back to {running}"
                             + ("; check the CUDA and cuDNN libraries it needs" if first == CUDA else ""))
        log.warning("onnxruntime could not start %s; running %s on %s", first, path, running)
    return session


class HostBinding:
    """An IO binding over numpy memory on the CPU whose values stay bound from run to run: each run binds only
    the arrays that changed, by identity (a cache buffer written in place stays bound; a new array is bound).

    Binding a value makes an OrtValue over the array's memory (no copy), which this object keeps alive with
    the array. Against binding every value anew at every step, in turns: gpt-mini greedy 1.04x, T5-small
    1.00-1.06x (its 40 decoder inputs and outputs, most of them the same arrays at every step).
    """

    def __init__(self, session):
        self.session = session
        self.binding = session.io_binding()
        self.bound: dict[tuple[str, str], tuple] = {}  # (kind, name) -> (array, OrtValue)

    def _value(self, kind: str, name: str, array):
        held = self.bound.get((kind, name))
        if held is not None and held[0] is array:
            return None
        from onnxruntime import OrtValue

        value = OrtValue.ortvalue_from_numpy(array)
        self.bound[kind, name] = (array, value)
        return value

    def input(self, name: str, array) -> None:
        """Bind `array` (C-contiguous) as input `name`, unless it already is."""
        value = self._value("input", name, array)
        if value is not None:
            self.binding.bind_ortvalue_input(name, value)

    def output(self, name: str, array) -> None:
        """Let output `name` be written into `array` (C-contiguous, of the output's shape and type)."""
        value = self._value("output", name, array)
        if value is not None:
            self.binding.bind_ortvalue_output(name, value)

    def shared(self, input_name: str, output_name: str, array) -> None:
        """Bind `array` as both `input_name` and `output_name`: the graph writes its output into its input's memory."""
        value = self._value("shared", input_name, array)
        if value is not None:
            self.binding.bind_ortvalue_input(input_name, value)
            self.binding.bind_ortvalue_output(output_name, value)

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)
