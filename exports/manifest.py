"""The manifest of an export directory (`lmkit-onnx.json`), and the checks that make it safe to load.

An export directory is untrusted input: it may come from anywhere, and the manifest in it was
written by whoever wrote the rest. So before anything is parsed or run:

- every name the manifest gives must stay inside the directory (no absolute paths, no `..`, no
  symbolic link that leads out);
- every file it lists must have the size and sha256 it records (a changed file is refused);
- every external-data reference inside an ONNX graph must name a file the manifest lists, which
  rules out both escaping the directory and reading a file that was not hashed.

Nothing here imports torch; onnx is used to look inside graphs when it is installed (see check_graphs).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator

from lmkit.errors import ArtifactError, MissingDependency
from lmkit.opening import EXPORT_MANIFEST, exports_inside_hint

from .graphs import DTYPES

MANIFEST = EXPORT_MANIFEST  # lmkit-onnx.json, named where is_export (which imports no numpy) reads it
FORMAT = "lmkit-onnx"
FORMAT_VERSION = 1
CHUNK = 1 << 20
# The key of the external-data entry that names a tensor's file (onnx.external_data_helper).
EXTERNAL_DATA_KEY = b"location"


def safe_path(directory: str, name: object, what: str) -> str:
    """The path of `name` inside `directory`, or a one-line refusal if it could lead anywhere else."""
    if not isinstance(name, str) or not name:
        raise ArtifactError(f"{directory}: {what} must be a file name, got {name!r}; the export is damaged")
    parts = name.split("/")
    # Backslashes and drive letters are path syntax on Windows; refusing them keeps one rule everywhere.
    if (name.startswith("/") or "\\" in name or ":" in name or "\0" in name
            or any(part in ("", ".", "..") for part in parts)):
        raise ArtifactError(f"{directory}: {what} {name!r} points outside the export directory; "
                            "refusing to load it")
    root = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, path]) != root:  # a symbolic link inside that leads out
        raise ArtifactError(f"{directory}: {what} {name!r} resolves to {path}, outside the export "
                            "directory; refusing to load it")
    return path


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(directory: str) -> dict[str, dict]:
    """name -> {"sha256", "size"} for every file under `directory` but the manifest, '/'-separated."""
    files = {}
    for root, folders, names in os.walk(directory):
        folders.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory).replace(os.sep, "/")
            if relative != MANIFEST:
                files[relative] = {"sha256": sha256(path), "size": os.path.getsize(path)}
    return files


def read_manifest(directory: str) -> dict:
    """The manifest of an export directory, checked for form and for names that leave the directory."""
    if not os.path.isdir(directory):
        raise ArtifactError(f"{directory} is not a directory; give an export directory made by lmkit export")
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(directory, "config.json")):
            hint = f" (it is a model directory: lmkit export {directory} --out DIR makes an export of it)"
        else:
            hint = exports_inside_hint(directory)
        raise ArtifactError(f"{directory} has no {MANIFEST}: it is not an lmkit export{hint}")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); export the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an lmkit export manifest (no \"format\": \"{FORMAT}\")")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format version {manifest.get('format_version')!r}; this lmkit reads "
                            f"version {FORMAT_VERSION}: export the model again or use a matching lmkit")
    files = manifest.get("files")
    graphs = manifest.get("graphs")
    if not isinstance(files, dict) or not isinstance(graphs, dict) or not graphs:
        raise ArtifactError(f"{path} lacks its \"files\" or \"graphs\" table; export the model again")
    for name, entry in files.items():
        safe_path(directory, name, "the manifest's file")
        if (not isinstance(entry, dict) or not isinstance(entry.get("size"), int)
                or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256")))):
            raise ArtifactError(f"{path}: the entry of {name!r} needs a size and a sha256; export the model again")
    for graph_name, graph in graphs.items():
        file = graph.get("file") if isinstance(graph, dict) else None
        safe_path(directory, file, f"graph {graph_name!r}'s file")
        if file not in files:
            raise ArtifactError(f"{path}: graph {graph_name!r} is {file!r}, which the manifest does not list "
                                "with a hash; refusing to load it")
        _check_signature(path, graph_name, graph)
    if manifest.get("tokenizer") is not None:
        safe_path(directory, manifest["tokenizer"], "the tokenizer file")
        if manifest["tokenizer"] not in files:
            raise ArtifactError(f"{path}: the tokenizer {manifest['tokenizer']!r} is not listed with a hash; "
                                "refusing to load it")
    _check_settings(path, manifest)
    return manifest


def _check_signature(path: str, graph_name: str, graph: dict) -> None:
    """The inputs, outputs and cache pairs of a graph are what the runtime will index and allocate by."""
    names = set()
    for side in ("inputs", "outputs"):
        tensors = graph.get(side)
        if not isinstance(tensors, list) or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and t.get("dtype") in DTYPES
                and isinstance(t.get("shape"), list)
                and all(isinstance(size, (int, str)) and not isinstance(size, bool) for size in t["shape"])
                for t in tensors):
            raise ArtifactError(f"{path}: graph {graph_name!r} has malformed {side} (each needs a name, a dtype "
                                f"among {', '.join(DTYPES)} and a shape); export the model again")
        names.update(t["name"] for t in tensors)
    cache = graph.get("cache", [])
    if not isinstance(cache, list) or not all(
            isinstance(pair, dict) and pair.get("input") in names and pair.get("output") in names for pair in cache):
        raise ArtifactError(f"{path}: graph {graph_name!r} has a cache pair naming no input or output of it; "
                            "export the model again")


def _check_settings(path: str, manifest: dict) -> None:
    """What the runtime reads besides the graphs: the context length, special tokens, decoding, the ids an
    encoder-decoder appends to every source."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    dimensions = manifest.get("dimensions", {})
    special = manifest.get("special_tokens", {})
    generation = manifest.get("generation", {})
    if (not isinstance(dimensions, dict) or not (dimensions.get("max_length") is None or whole(dimensions["max_length"]))
            or not isinstance(special, dict) or not all(v is None or whole(v) for v in special.values())
            or not isinstance(generation, dict) or not isinstance(generation.get("strategy"), str)
            or not isinstance(generation.get("options"), dict)
            or not (isinstance(manifest.get("source_suffix", []), list)
                    and all(whole(v) for v in manifest.get("source_suffix", [])))):
        raise ArtifactError(f"{path}: malformed dimensions, special_tokens, generation or source_suffix; export the model again")


def verify_files(directory: str, manifest: dict) -> None:
    """Refuse, in one line, the first listed file that is missing or differs from its recorded hash."""
    for name, expected in manifest["files"].items():
        problem = file_problem(directory, name, expected)
        if problem:
            raise ArtifactError(f"{directory}: {name} {problem}; refusing to load a changed export "
                                "(export the model again, or restore the file)")


def file_problem(directory: str, name: str, expected: dict) -> str | None:
    """Why a listed file does not match the manifest, or None when it does."""
    path = safe_path(directory, name, "the manifest's file")
    if not os.path.isfile(path):
        return "is missing"
    size = os.path.getsize(path)
    if size != expected["size"]:
        return f"has {size} bytes, the manifest says {expected['size']}"
    if sha256(path) != expected["sha256"]:
        return "does not match its sha256 in the manifest"
    return None


def check_graphs(directory: str, manifest: dict) -> dict[str, dict[str, int]]:
    """Refuse a graph that reads external data from a file the manifest does not list; return opsets.

    With the onnx package, every tensor of every graph is looked at. Without it (a serving install
    is onnxruntime, numpy and tokenizers), a graph whose bytes never spell "location", the key every
    external-data reference needs, has no external data, so it is safe; one that does is refused
    unless onnx is installed to look closer. Returns graph name -> {opset domain: version}, empty
    for a graph that was not parsed.
    """
    try:
        import onnx
    except ImportError:
        onnx = None
    opsets = {}
    for graph_name, graph in manifest["graphs"].items():
        path = safe_path(directory, graph["file"], f"graph {graph_name!r}'s file")
        if onnx is None:
            if _mentions(path, EXTERNAL_DATA_KEY):
                raise MissingDependency(f"{directory}: {graph['file']} may keep tensors in external data files, which "
                                        "only the onnx package can check before loading; install it with: "
                                        "pip install onnx")
            opsets[graph_name] = {}
            continue
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and whatever onnx adds
            raise ArtifactError(f"{directory}: {graph['file']} is not an ONNX model that onnx {onnx.__version__} "
                                f"can read ({type(error).__name__}: {str(error)[:200]}); export the model again") from None
        opsets[graph_name] = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
        folder = os.path.dirname(graph["file"])
        for tensor in _tensors(model):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
            # ONNX resolves a location against the graph's own folder.
            name = f"{folder}/{location}" if folder else location
            safe_path(directory, name, f"the external data of tensor {tensor.name!r} in {graph['file']}")
            if name not in manifest["files"]:
                raise ArtifactError(f"{directory}: tensor {tensor.name!r} in {graph['file']} reads external data "
                                    f"from {location!r}, which the manifest does not list with a hash; "
                                    "refusing to load it")
    return opsets


def _mentions(path: str, word: bytes) -> bool:
    """Whether the bytes of the file contain `word`, read in chunks."""
    tail = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            if word in tail + chunk[:len(word) - 1] or word in chunk:
                return True
            tail = chunk[-(len(word) - 1):]
    return False


def _tensors(model) -> Iterator:
    """Every tensor of an ONNX model: initializers and attribute tensors, in subgraphs and functions."""
    graphs = [model.graph]
    nodes = [node for function in model.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield sparse.values
                yield sparse.indices
            nodes.extend(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            for sparse in attribute.sparse_tensors:
                yield sparse.values
                yield sparse.indices
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            graphs.extend(attribute.graphs)
