"""What an exporter hands over: the graphs of a model, each with its inputs, outputs and test inputs.

An exporter is registered through the `register_exporters` hook under the name "<part>.<type>" of
the component it exports (`decoder.gpt2`, `encoder.bert`, ...). Its target is a callable that takes
the composed model (a torch module, in eval mode) and returns an `ExportPlan`. lmkit does the rest
the same way for every family: torch.onnx, naming the symbolic dimensions, precision conversion,
validation against PyTorch, the manifest and the Triton layout.

This module imports neither torch nor onnx: the runtime reads the same names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The architectures lmkit's own runtimes serve (registered through register_export_runtimes in
# lmkit.builtins); a family that brings a new architecture registers its exporter and its runtime.
DECODER_ONLY = "decoder-only"  # one graph, token ids + cache in, logits + cache out (GPT, LSTM LMs)
ENCODER = "encoder-only"  # one graph, token ids + mask in, token states + pooled vector out (BERT family)
# an encoder graph run once per batch of sources (or once per source), and a decoder-step graph whose
# state is fed back step to step, wired as the plan's EncoderDecoderLayout says (Seq2Seq, NMT, T5)
ENCODER_DECODER = "encoder-decoder"

# The symbolic dimensions, named as optimum and onnxruntime-genai name them.
BATCH = "batch_size"
SEQUENCE = "sequence_length"
PAST = "past_sequence_length"
TOTAL = f"{PAST} + {SEQUENCE}"
SOURCE = "source_length"  # an encoder-decoder's source positions (optimum: encoder_sequence_length)
# A cache buffer's positions, of which the first past + new are filled (an encoder-decoder's buffer layout):
# the runtime sizes it (its own past included) and binds it as the input and the output of its layer.
CAPACITY = "max_sequence_length"

# Tensor element types, as numpy spells them.
DTYPES = ("int64", "int32", "bool", "float32", "float16")


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a graph: its name, element type and shape.

    shape: an int for a fixed axis, a name from above for a symbolic one.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class ShapeSet:
    """Inputs to validate a graph on, with what they stand for (e.g. batch 3, 1 new token, 9 past).

    scored: bool, the shape of the score output's leading axes (B, T): the positions whose top-1
        token counts for agreement (padding does not); None counts every position.
    filled: for cache outputs that are buffers with room to spare (B, nh, positions, hs), how many positions
        hold the cache after the step; the rest is compared to nothing. The spare room holds random numbers,
        which the graph must not read (the other outputs would differ), and may change: an fp16 graph writes
        its cache through casts into a new buffer, whose spare room is whatever memory it got.
    """

    label: dict[str, int]
    inputs: dict[str, np.ndarray]
    scored: np.ndarray | None = None
    filled: dict[str, int] | None = None


def right_padded_shape_set(rng: np.random.Generator, vocab_size: int, batch: int, tokens: int) -> ShapeSet:
    """Random input_ids (batch, tokens) and an attention_mask whose first and last rows are right-padded
    (by up to 3 and 1 tokens) when batch > 1: what an encoder that reads each row's real tokens only (a
    backward LSTM starts at the last real one) is validated on."""
    ids = rng.integers(0, vocab_size, size=(batch, tokens)).astype(np.int64)
    mask = np.ones((batch, tokens), dtype=np.int64)
    if batch > 1:
        mask[0, tokens - min(3, tokens - 1):] = 0
        mask[-1, tokens - min(1, tokens - 1):] = 0
    return ShapeSet({"batch_size": batch, "tokens": tokens}, {"input_ids": ids, "attention_mask": mask})


@dataclass
class Graph:
    """One ONNX graph to write: `module(*inputs)` returns the outputs, in the order listed here.

    module: a torch module in eval mode whose forward takes the inputs positionally.
    example: the torch tensors to trace with; symbolic axes should have distinct sizes of at least
        2, so that the exporter cannot mistake one for another or specialise a size of 0 or 1.
    cache: (input, output) pairs: the runtime feeds each output back as that input at the next step.
    scores: the output whose argmax is compared for top-1 agreement (None: no such output).
    validation: at least three shape sets, unlike `example`, so dynamic axes are really tested.
    """

    name: str  # the file stem: model -> model.onnx
    module: Any
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    example: tuple
    validation: list[ShapeSet]
    cache: list[tuple[str, str]] = field(default_factory=list)
    scores: str | None = "logits"
    # dynamo (torch.export) or legacy (the TorchScript tracer, dynamo=False): dynamo fixes the time
    # axis of a bidirectional LSTM to the example's length (pytorch/pytorch#191855), the tracer does not.
    exporter: str = "dynamo"
    # Operator types kept in fp32 when the graph is converted to fp16, beside lmkit.exports.precision.FP32_OPS:
    # where fp16 is unsafe for this graph or an onnxruntime optimizer breaks on it (the exporter says why).
    fp32_ops: tuple[str, ...] = ()
    # Custom torch ops the module calls, as ONNX nodes (lmkit.exports.fused_attention's fused attention): for
    # dynamo, torch.onnx's custom_translation_table; for legacy, {"namespace::op": symbolic function}, registered
    # with torch.onnx.register_custom_op_symbolic while the graph is exported.
    translations: dict | None = None
    # Each cache output is written into its input's memory when the runtime binds one buffer as both
    # (onnxruntime's past_present_share_buffer): validation runs the graph that way too.
    shared_cache: bool = False

    def describe(self, file: str) -> dict:
        """The graph's entry in the manifest."""
        return {
            "file": file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "cache": [{"input": i, "output": o} for i, o in self.cache],
        }


# Where a decoder input's value comes from before the first step (EncoderDecoderLayout.feeds).
FEED_SOURCES = ("encoder", "source_mask", "zeros", "target_mask")
# How an encoder-decoder's self-attention cache goes from step to step (EncoderDecoderLayout.cache_layout).
SEQ2SEQ_CACHE_LAYOUTS = ("concat", "buffer")
# How the encoder graph reads a batch of sources (EncoderDecoderLayout.batching).
BATCHINGS = ("padded", "one-by-one")


@dataclass(frozen=True)
class Feed:
    """One decoder-step input and its value before the first step.

    source: "encoder": the encoder graph's output `output` (constant for the whole generation, unless
        the decoder graph's cache feeds it back); "source_mask": the sources' mask (B, S), 1 at real
        tokens, in the input's dtype; "zeros": zeros of the input's shape, with the batch axis the
        batch size and the past axis (past_sequence_length) 0 (an empty key/value cache, a zero state);
        in the buffer layout, a buffer's max_sequence_length axis is sized by the runtime; "target_mask":
        int64 ones (B, P + t) over the target positions so far, the new one included (P: a prefix's),
        given anew at every step (the fused attention reads the cache's length from it).
    """

    input: str
    source: str
    output: str | None = None

    def to_dict(self) -> dict:
        return {"input": self.input, "source": self.source, **({"output": self.output} if self.output else {})}


@dataclass
class EncoderDecoderLayout:
    """How the runtime wires an encoder graph to a decoder-step graph (the manifest's "encoder_decoder").

    batching: "padded": the encoder graph reads a right-padded batch (B, S) with `encoder_mask` (1 at
        real tokens); "one-by-one": it reads one source (1, S_i) at a time (the ONNX LSTM op would read
        padding) and the runtime pads each output along its source_length axis and joins the rows on
        its batch_size axis.
    encoder_ids / encoder_mask: the encoder graph's inputs for the source ids and (padded) the mask.
    decoder_ids / logits: the decoder graph's token input (B, 1) and its next-token logits output,
        (B, V) or (B, 1, V).
    feeds: every other decoder input, and where its first value comes from. Each step's values come
        from the decoder graph's cache pairs (output -> input); an input no pair names keeps its
        first value (encoder states, cross-attention keys/values, the mask). Beam search reorders
        every one of them along the axis its shape names batch_size.
    prefix_cache: the decoder inputs (keys, values), each (layers, batch, heads, past, head_dim), of the
        self-attention cache a prefix (lmkit.prefix) starts instead of empty; None: the export takes none.
        In the buffer layout, the first inputs of layer 0's keys and values.
    target_padding: the decoder graph hides the target positions its target_mask feed marks 0, so rows whose
        targets have different lengths decode in one batch, left-padded (rows that join a running batch,
        lmkit serve); False: the graph reads the mask for its length alone, and every row must be as long.
    cache_layout: "concat": each cache output is the input and the new positions, fed back at the next
        step; "buffer": every cache pair is one buffer (B, heads, max_sequence_length, head_dim) of which
        the first positions are filled, which onnxruntime's fused attention writes the new positions into
        when the runtime binds it as both the input and the output (lmkit.exports.fused_attention).
    """

    feeds: list[Feed]
    batching: str = "padded"
    encoder_ids: str = "input_ids"
    encoder_mask: str | None = "attention_mask"
    decoder_ids: str = "input_ids"
    logits: str = "logits"
    encoder: str = "encoder"  # the graphs' names
    decoder: str = "decoder"
    prefix_cache: tuple[str, str] | None = None
    cache_layout: str = "concat"
    target_padding: bool = False

    def to_dict(self) -> dict:
        return {"batching": self.batching, "encoder": self.encoder, "decoder": self.decoder,
                "encoder_ids": self.encoder_ids, "encoder_mask": self.encoder_mask,
                "decoder_ids": self.decoder_ids, "logits": self.logits,
                "feeds": [feed.to_dict() for feed in self.feeds],
                **({"prefix_cache": list(self.prefix_cache)} if self.prefix_cache else {}),
                **({"cache_layout": self.cache_layout} if self.cache_layout != "concat" else {}),
                **({"target_padding": True} if self.target_padding else {})}


@dataclass
class ExportPlan:
    """Everything an exporter says about a model.

    architecture: the export runtime that serves it, by its registered name (register_export_runtimes).
    dimensions: what the runtime needs to know that the graphs do not say (e.g. max_length, the
        most positions the model reads, None for no limit; vocab_size), written to the manifest.
    layout: an encoder-decoder's wiring of its two graphs (EncoderDecoderLayout), None otherwise.
    precisions: those onnxruntime runs these graphs in; `lmkit export` refuses the others before it
        writes anything (ELMo's char-CNN LSTM graph in fp16 and int8, for one).
    """

    architecture: str
    graphs: list[Graph]
    dimensions: dict[str, Any] = field(default_factory=dict)
    layout: EncoderDecoderLayout | None = None
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")


# -- what the runtimes read of a graph's entry in the manifest ---------------------------------------


def batch_axis(tensor: dict) -> int:
    """The axis of a manifest tensor ({"name", "dtype", "shape"}) that its shape names batch_size."""
    if tensor["shape"].count(BATCH) != 1:
        from lmkit.errors import ArtifactError

        raise ArtifactError(f"tensor '{tensor['name']}' has {tensor['shape'].count(BATCH)} axes named {BATCH}; the "
                            "runtime reorders rows on exactly one: export the model again")
    return tensor["shape"].index(BATCH)


def empty_input(tensor: dict, batch: int) -> np.ndarray:
    """A manifest tensor's value before the first step: zeros with `batch` rows and no past positions.

    An empty key/value cache (batch, heads, 0, head_dim) and a zero recurrent state (batch, hidden)
    alike; an axis of another symbolic name cannot be sized and is a one-line error.
    """
    shape = []
    for size in tensor["shape"]:
        if size not in (BATCH, PAST) and not isinstance(size, int):
            from lmkit.errors import ArtifactError

            raise ArtifactError(f"input '{tensor['name']}' has an axis '{size}' the runtime cannot size before the "
                                f"first step (it sizes {BATCH}, {PAST} and fixed axes)")
        shape.append(batch if size == BATCH else 0 if size == PAST else size)
    return np.zeros(shape, dtype=np.dtype(tensor["dtype"]))
