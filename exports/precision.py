"""fp16 and int8 versions of an fp32 graph, with onnxruntime's own converters.

    fp16  weights and most arithmetic in half precision, for GPU serving. Inputs and outputs stay
          fp32 (as optimum's O4 level does), so the runtime and its clients are the same for every
          dtype. LayerNorm, Softmax and Pow stay fp32: accumulating a variance or a softmax sum in
          fp16 overflows (microsoft/onnxruntime#29034, #11384). A Loop's carried values lose the
          shapes the exporter declared for them (loose_loop_state_shapes).
    int8  weight-only blockwise quantization (MatMulNBits, 8 bits, 32 weights per scale, int8 compute
          per row and block), the embedding tables in 8 bits with one scale per row: a smaller model
          for CPUs and edge devices whose rows do not depend on their batch (see to_int8). A weight the
          graph uses transposed (a tied embedding as the output projection: MatMul(x, Transpose(wte)))
          gets a transposed copy first, so its product is quantized like the others instead of
          dequantizing the whole table to fp32 at every step. Products of stacked weights and
          convolutions keep dynamic quantization (to_int8).
    int4  blockwise quantization (MatMulNBits, 32 weights per scale, int8 compute per row and block):
          the transformer blocks in 4 bits, the output projection in 8 (4 on request), the embeddings
          in 4 on request (GatherBlockQuantized); see to_int4.
"""
from __future__ import annotations

from dataclasses import dataclass

from .convert import quiet_loggers

PRECISIONS = ("fp32", "fp16", "int8", "int4")
FP32_OPS = ("LayerNormalization", "Softmax", "Pow")


def to_fp16(source: str, target: str, keep_fp32: tuple[str, ...] = ()) -> None:
    """keep_fp32: more operator types left in fp32 (a graph's own, lmkit.exports.graphs.Graph.fp32_ops)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(source), keep_io_types=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS, *keep_fp32])
    loose_loop_state_shapes(model.graph)
    onnx.save(model, target)


def loose_loop_state_shapes(graph) -> int:
    """Drop the shapes a Loop body declares for the values it carries from one iteration to the next; how many.

    The legacy exporter types a TorchScript loop's carried tensors with shared symbolic dims: an LSTM's cell
    (2, B, 32) and projection (2, B, 16) both as (c_dim_0, c_dim_1, c_dim_2) (lmkit.nn.projected_lstm). In fp32
    nothing reads them, but onnxruntime's CPU provider wraps fp16 nodes in Casts it inserts, and its memory
    planner then gives the cell's buffer to the projection: "Shape mismatch attempting to re-use buffer
    {2,2,16} != {2,2,32}" at the first run. Without the declared shapes onnxruntime infers them per run.
    """
    import onnx

    dropped = 0
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type != onnx.AttributeProto.GRAPH:
                continue
            body = attribute.g
            if node.op_type == "Loop":
                for value in body.input[2:]:  # after the iteration number and the condition
                    if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
                        value.type.tensor_type.ClearField("shape")
                        dropped += 1
            dropped += loose_loop_state_shapes(body)
    return dropped


# What `--quantize int8` does, for the manifest. Products and lookups quantize their weights alone, so a
# row's values never depend on the other rows of its batch; what is quantized dynamically is counted.
INT8 = {"method": "weight-only, blockwise", "weights": "int8", "block_size": 32, "symmetric": False,
        "accuracy_level": 4, "activations": "int8 per row and block at run time (MatMulNBits accuracy_level 4)",
        "embeddings": "int8, one scale per row",
        "tool": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer"}


def int8_description(dynamic: list[str]) -> dict:
    """The manifest's "quantization" entry of an int8 export; dynamic: the nodes to_int8 quantized dynamically."""
    if not dynamic:
        return dict(INT8)
    return {**INT8, "dynamic": {"nodes": len(dynamic), "activations": "uint8 per tensor at run time: these "
                                "products' values depend on the other rows of their batch",
                                "tool": "onnxruntime.quantization.quantize_dynamic"}}


def to_int8(source: str, target: str) -> list[str]:
    """Weight-only int8 (INT8): every product with a 2-D weight becomes MatMulNBits with 8-bit weights, one scale
    and zero point per 32 along the input axis, computing in int8 per row and block of its input; each
    embedding table an int8 copy with one scale per row (quantize_embedding_tables). Each row of a batch gets
    the values it gets alone, which dynamic quantization (one activation scale for the whole batch, padding
    included) did not give: served requests changed tokens with what they were batched with.

    What MatMulNBits cannot take keeps dynamic quantization (onnxruntime.quantization.quantize_dynamic):
    products whose weight has more than two axes (ELMo's two directions run together; per tensor, as
    MatMulInteger takes per-channel zero points for a 2-D weight only) and convolutions (per channel).
    Returns those nodes' names (none in a transformer's graph).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(source)
    untie_transposed_weights(model)
    model = blockwise_products(model, bits=8, block_size=INT8["block_size"])
    quantize_embedding_tables(model)
    stacked, convolutions = stacked_weight_products(model), weighted_convolutions(model)
    onnx.save(model, target)
    # quantize_dynamic suggests its pre-processing on the root logger at WARNING; what that adds
    # (inferred shapes of intermediate values) the exported graph already carries.
    with quiet_loggers(""):
        if convolutions:
            quantize_dynamic(target, target, weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_quantize=convolutions, op_types_to_quantize=["Conv"])
        if stacked:
            quantize_dynamic(target, target, weight_type=QuantType.QInt8, per_channel=False,
                             nodes_to_quantize=stacked, op_types_to_quantize=["MatMul"])
    return convolutions + stacked


def blockwise_products(model, bits: int, block_size: int, **options):
    """The model with its MatMuls of a 2-D weight initializer as MatMulNBits (onnxruntime's MatMulNBitsQuantizer,
    asymmetric, computing at ACCURACY_LEVEL); options go to the quantizer (nodes_to_exclude, ...)."""
    import logging

    # Importing the quantizer calls logging.basicConfig(level=INFO): the root logger of the whole process
    # would print every library's INFO lines from then on (onnx_ir's, at the next export).
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.handlers[:], root.level = handlers, level
    options.setdefault("op_types_to_quantize", ("MatMul",))
    with quiet_loggers("", "onnxruntime"):
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=False,
                                         accuracy_level=ACCURACY_LEVEL, **options)
        quantizer.process()
    return quantizer.model.model


def quantize_embedding_tables(model) -> int:
    """Gather(table, ids) on a 2-D float32 initializer becomes the same lookup in an int8 copy of the table,
    times the looked-up rows' scales (one per row, symmetric: max |row| / 127): values (..., D) within half a
    step of the row's scale. Plain ONNX operators (Gather, Cast, Mul), so every provider runs it;
    onnxruntime's GatherBlockQuantized quantizer takes 4 bits only. A table nothing else reads is dropped.
    Returns how many lookups changed."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    made: set[str] = set()
    changed = 0
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        table = initializers.get(node.input[0]) if node.op_type == "Gather" and axis == 0 else None
        if table is None or len(table.dims) != 2 or table.data_type != TensorProto.FLOAT:
            continue
        name = table.name
        if name not in made:
            values = numpy_helper.to_array(table)
            scale = np.abs(values).max(axis=1, keepdims=True) / 127
            scale[scale == 0] = 1  # an all-zero row (padding) stays zero
            graph.initializer.extend([
                numpy_helper.from_array(np.clip(np.round(values / scale), -127, 127).astype(np.int8), f"{name}_int8"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}_row_scale")])
            made.add(name)
        ids, out = node.input[1], node.output[0]
        stem = node.name or out
        lookup = [helper.make_node("Gather", [f"{name}_int8", ids], [f"{stem}_int8_rows"], name=f"{stem}_int8"),
                  helper.make_node("Cast", [f"{stem}_int8_rows"], [f"{stem}_rows"], to=TensorProto.FLOAT,
                                   name=f"{stem}_cast"),
                  helper.make_node("Gather", [f"{name}_row_scale", ids], [f"{stem}_scales"], name=f"{stem}_scales"),
                  helper.make_node("Mul", [f"{stem}_rows", f"{stem}_scales"], [out], name=f"{stem}_scaled")]
        graph.node.remove(node)
        for offset, new in enumerate(lookup):
            graph.node.insert(index + offset, new)
        changed += 1
    used = names_read(graph)
    for tensor in [tensor for tensor in graph.initializer if tensor.name in made and tensor.name not in used]:
        graph.initializer.remove(tensor)
    return changed


def names_read(graph) -> set[str]:
    """Every value name a node of the graph or of its subgraphs (a Loop's body) reads, and the graph's outputs."""
    from onnx import AttributeProto

    read = {output.name for output in graph.output}
    for node in graph.node:
        read.update(node.input)
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                read |= names_read(attribute.g)
    return read


def weighted_convolutions(model) -> list[str]:
    """The names of the graph's Conv nodes whose weight is an initializer."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in initializers]


def stacked_weight_products(model) -> list[str]:
    """The names of the graph's MatMuls whose weight is an initializer of more than two axes."""
    ranks = {tensor.name: len(tensor.dims) for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and len(node.input) == 2 and ranks.get(node.input[1], 0) > 2]


def untie_transposed_weights(model) -> int:
    """MatMul(x, Transpose(W)), W a 2-D initializer, becomes MatMul(x, W_T) with W_T an initializer of its own.

    The quantizers take a MatMul whose weight is an initializer; behind a Transpose, the weight
    stays as it is (an embedding quantized for its lookup), and onnxruntime dequantizes all of it
    before every product. Returns how many products were changed.
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


# MatMulNBits' compute: 4 multiplies int8 activations (quantized per row and block of the input at run
# time) by the int8-widened weights. The default (fp32 compute) dequantizes the weights at every call:
# on gpt-mini's decoding step (2 threads, onnxruntime 1.32) 33 ms against 6.3 with 4, and fp32's 17.
ACCURACY_LEVEL = 4


@dataclass(frozen=True)
class Int4Options:
    """What `--quantize int4` makes 4-bit: the blocks' matrix products always; the output projection
    in 8 bits unless output_bits is 4 (a wrong top-1 costs the most there); the token embeddings on request.

    block_size: weights per scale along the input axis (MatMulNBits' block_size, a power of 2, >= 16).
    """

    output_bits: int = 8
    embeddings: bool = False
    block_size: int = 32

    def describe(self) -> dict:
        """The manifest's "quantization" entry."""
        return {"method": "weight-only, blockwise", "weights": "int4", "block_size": self.block_size,
                "symmetric": False, "output_projection": f"int{self.output_bits}",
                "embeddings": "int4" if self.embeddings else "fp32", "accuracy_level": ACCURACY_LEVEL,
                "activations": "int8 per row and block at run time (MatMulNBits accuracy_level 4)",
                "tool": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer"}


def to_int4(source: str, target: str, options: Int4Options = Int4Options()) -> None:
    """Blockwise weight-only int4 (MatMulNBits), the output projection in options.output_bits, with
    onnxruntime's MatMulNBitsQuantizer. A tied output projection gets its own transposed copy first,
    as for int8 (untie_transposed_weights); with options.embeddings, the embedding lookups become
    GatherBlockQuantized (4-bit rows)."""
    import onnx

    model = onnx.load(source)
    untie_transposed_weights(model)
    heads = output_projections(model)
    quantizers = {"MatMul": 0, **({"Gather": 1} if options.embeddings else {})}
    model = blockwise_products(model, 4, options.block_size, nodes_to_exclude=heads,
                               op_types_to_quantize=tuple(quantizers), quant_axes=tuple(quantizers.items()))
    if heads:  # what is left with a weight initializer is the output projection
        model = blockwise_products(model, options.output_bits, options.block_size, nodes_to_include=heads)
    onnx.save(model, target)


def output_projections(model) -> list[str]:
    """The names of the MatMul nodes with a weight initializer that the graph's first output is computed
    from with no other such MatMul in between (the language-model head, or a tagger's classifier)."""
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    found, seen = [], set()
    pending = [graph.output[0].name]
    while pending:
        node = producers.get(pending.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in initializers:
            found.append(node.name)
            continue
        pending.extend(node.input)
    return found
