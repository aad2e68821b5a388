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

# The architectures an export can have. The runtime serves those it has a backend for; a family that
# brings a new one brings its exporter (a plugin) and the runtime backend that runs it (in exports/).
DECODER_ONLY = "decoder-only"  # one graph, token ids + cache in, logits + cache out (GPT, LSTM LMs)
ENCODER = "encoder-only"  # one graph, token ids + mask in, token states + pooled vector out (BERT family)
# an encoder graph run once per source, and a decoder-step graph with its recurrent state in and out
# (Seq2Seq, attentional NMT); served by lmkit.exports.seq2seq_runtime
ENCODER_DECODER = "encoder-decoder"
ARCHITECTURES = (DECODER_ONLY, ENCODER, ENCODER_DECODER)

# The symbolic dimensions, named as optimum and onnxruntime-genai name them.
BATCH = "batch_size"
SEQUENCE = "sequence_length"
PAST = "past_sequence_length"
TOTAL = f"{PAST} + {SEQUENCE}"

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
    """

    label: dict[str, int]
    inputs: dict[str, np.ndarray]
    scored: np.ndarray | None = None


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

    def describe(self, file: str) -> dict:
        """The graph's entry in the manifest."""
        return {
            "file": file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "cache": [{"input": i, "output": o} for i, o in self.cache],
        }


@dataclass
class ExportPlan:
    """Everything an exporter says about a model.

    dimensions: what the runtime needs to know that the graphs do not say (e.g. max_length, the
        most positions the model reads, None for no limit; vocab_size), written to the manifest.
    """

    architecture: str
    graphs: list[Graph]
    dimensions: dict[str, Any] = field(default_factory=dict)
