"""fp16 and int8 versions of an fp32 graph, with onnxruntime's own converters.

    fp16  weights and most arithmetic in half precision, for GPU serving. Inputs and outputs stay
          fp32 (as optimum's O4 level does), so the runtime and its clients are the same for every
          dtype. LayerNorm, Softmax and Pow stay fp32: accumulating a variance or a softmax sum in
          fp16 overflows (microsoft/onnxruntime#29034, #11384).
    int8  dynamic quantization: weights stored as int8, one scale per output channel, activations
          quantized on the fly: a smaller model for CPUs and edge devices.
"""
from __future__ import annotations

from .convert import quiet_loggers

PRECISIONS = ("fp32", "fp16", "int8")
FP32_OPS = ("LayerNormalization", "Softmax", "Pow")


def to_fp16(source: str, target: str) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(source), keep_io_types=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS])
    onnx.save(model, target)


def to_int8(source: str, target: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic suggests its pre-processing on the root logger at WARNING; what that adds
    # (inferred shapes of intermediate values) the exported graph already carries.
    with quiet_loggers(""):
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
