"""fp16 and int8 versions of an fp32 graph, with onnxruntime's own converters.

    fp16  weights and most arithmetic in half precision, for GPU serving. Inputs and outputs stay
          fp32 (as optimum's O4 level does), so the runtime and its clients are the same for every
          dtype. LayerNorm, Softmax and Pow stay fp32: accumulating a variance or a softmax sum in
          fp16 overflows (microsoft/onnxruntime#29034, #11384).
    int8  dynamic quantization: weights stored as int8, one scale per output channel, activations
          quantized on the fly: a smaller model for CPUs and edge devices. A weight the graph uses
          transposed (a tied embedding as the output projection: MatMul(x, Transpose(wte))) gets a
          transposed copy first, so its matrix product is quantized per channel like the others
          instead of dequantizing the whole table to fp32 at every step. A product whose weight has
          more than two axes (stacked matrices, as ELMo's two directions are run together) is
          quantized per tensor: onnxruntime's MatMulInteger takes per-channel zero points for a 2-D
          weight only ("b zero point is not valid" at run time otherwise).
"""
from __future__ import annotations

from .convert import quiet_loggers

PRECISIONS = ("fp32", "fp16", "int8")
FP32_OPS = ("LayerNormalization", "Softmax", "Pow")


def to_fp16(source: str, target: str, keep_fp32: tuple[str, ...] = ()) -> None:
    """keep_fp32: more operator types left in fp32 (a graph's own, lmkit.exports.graphs.Graph.fp32_ops)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(source), keep_io_types=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS, *keep_fp32])
    onnx.save(model, target)


def to_int8(source: str, target: str) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(source)
    untie_transposed_weights(model)
    stacked = stacked_weight_products(model)
    # quantize_dynamic suggests its pre-processing on the root logger at WARNING; what that adds
    # (inferred shapes of intermediate values) the exported graph already carries.
    with quiet_loggers(""):
        if not stacked:
            quantize_dynamic(model, target, weight_type=QuantType.QInt8, per_channel=True)
            return
        quantize_dynamic(model, target, weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=stacked)
        quantize_dynamic(target, target, weight_type=QuantType.QInt8, per_channel=False, nodes_to_quantize=stacked)


def stacked_weight_products(model) -> list[str]:
    """The names of the graph's MatMuls whose weight is an initializer of more than two axes."""
    ranks = {tensor.name: len(tensor.dims) for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and len(node.input) == 2 and ranks.get(node.input[1], 0) > 2]


def untie_transposed_weights(model) -> int:
    """MatMul(x, Transpose(W)), W a 2-D initializer, becomes MatMul(x, W_T) with W_T an initializer of its own.

    quantize_dynamic quantizes a MatMul whose weight is an initializer; behind a Transpose, the
    weight stays as it is (an embedding quantized per tensor for its lookup), and onnxruntime
    dequantizes all of it before every product. Returns how many products were changed.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    changed = 0
    for node in graph.node:
        transpose = producers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[transpose.input[0]])
        perm = next((list(helper.get_attribute_value(a)) for a in transpose.attribute if a.name == "perm"), [1, 0])
        if weight.ndim != 2 or perm != [1, 0]:
            continue
        name = f"{transpose.input[0]}_transposed"
        if name not in initializers:
            initializers[name] = numpy_helper.from_array(weight.T.copy(), name)
            graph.initializer.append(initializers[name])
        node.input[1] = name
        changed += 1
    used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    unused = [node for node in graph.node if node.op_type == "Transpose" and not set(node.output) & used]
    for node in unused:
        graph.node.remove(node)
    return changed
