"""ONNX export and the torch-free runtime.

    lmkit.exports.load(directory)      an export directory, checked and opened (runtime.py; the
                                       same object lmkit.open_model gives for it)
    lmkit.exports.export.export_model  a model directory to an export directory (needs torch)

    providers.py        onnxruntime, execution providers, opening a graph's session
    decoder_runtime.py  decoder-only exports: OrtBackend             (registered as "decoder-only")
    encoder_runtime.py  encoder-only exports: features               (registered as "encoder-only")
    seq2seq_runtime.py  encoder-decoder exports, wired by the manifest (registered as "encoder-decoder")

Importing this package imports neither torch nor onnxruntime.
"""
from .decoder_runtime import OrtBackend
from .manifest import MANIFEST
from .runtime import ExportedModel, load

__all__ = ["MANIFEST", "ExportedModel", "OrtBackend", "load"]
