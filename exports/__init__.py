"""ONNX export and the torch-free runtime.

    lmkit.exports.load(directory)      an export directory, checked and opened (runtime.py)
    lmkit.exports.export.export_model  a model directory to an export directory (needs torch)

Importing this package imports neither torch nor onnxruntime.
"""
from .manifest import MANIFEST
from .runtime import ExportedModel, OrtBackend, load

__all__ = ["MANIFEST", "ExportedModel", "OrtBackend", "load"]
