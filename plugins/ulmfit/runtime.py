"""The export runtime of recurrent language models ("recurrent-lm"), torch-free (lmkit.contract.ExportRuntime).

The graph (export.py) reads tokens after a state and returns the logits and the state after them.
A prompt batch is left-padded; a padded position must leave a row's state as it was, which the
graph cannot know, so the columns up to the last one with padding are fed one at a time and each
row keeps its old state where it is padded (as lmkit.nn.recurrent.masked_steps does in PyTorch);
the rest of the prompt goes in one run. Every generated token is one run of the same graph.
"""
from __future__ import annotations

import numpy as np

from lmkit.errors import LmkitError
from lmkit.exports.encoder_runtime import single_graph
from lmkit.exports.graphs import batch_axis, empty_input

ARCHITECTURE = "recurrent-lm"  # the manifest's architecture; export.py writes it


class RecurrentRuntime:
    kind = "decoder"
    max_positions = None

    def __init__(self, export):
        self.export = export
        self.graph = single_graph(export, ARCHITECTURE, "input_ids", "logits")
        self.session = export.session("model")

    def backend(self, max_new_tokens: int | None = None):
        return RecurrentBackend(self.session, self.graph)

    def features(self, input_ids, attention_mask, token_type_ids=None):
        raise LmkitError(f"{self.export.directory} is a {ARCHITECTURE} export, whose graph gives logits but not "
                         "features; embed with the model directory itself")


class RecurrentBackend:
    """lmkit.decoding's Backend over a recurrent-lm graph: the state is the cache, replaced every run."""

    max_length = None

    def __init__(self, session, graph: dict):
        self.session = session
        self.inputs = {tensor["name"]: tensor for tensor in graph["inputs"]}
        self.pairs = [(pair["input"], pair["output"]) for pair in graph["cache"]]
        self.outputs = ["logits", *(output for _, output in self.pairs)]
        self.state: dict[str, np.ndarray] = {}

    def _run(self, input_ids: np.ndarray) -> np.ndarray:
        logits, *state = self.session.run(self.outputs, {"input_ids": input_ids.astype(np.int64), **self.state})
        self.state = {name: value for (name, _), value in zip(self.pairs, state)}
        return logits[:, -1]

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        batch = input_ids.shape[0]
        self.state = {name: empty_input(self.inputs[name], batch) for name, _ in self.pairs}
        mask = attention_mask.astype(bool)
        padded = np.flatnonzero(~mask.all(0))
        split = int(padded[-1]) + 1 if len(padded) else 0
        last = np.zeros((batch, 0), dtype=np.float32)
        for t in range(split):
            before = self.state
            logits = self._run(input_ids[:, t:t + 1])
            keep = mask[:, t]
            self.state = {name: np.where(keep[:, None], value, before[name]) for name, value in self.state.items()}
            last = logits if last.shape[1] == 0 else np.where(keep[:, None], logits, last)
        if split < input_ids.shape[1]:
            last = self._run(input_ids[:, split:])
        return np.array(last, dtype=np.float32)

    def merge(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """lmkit.decoding.backend.Backend.merge: the new rows' states, prefilled alone, join the running ones'
        (a state has no positions to align)."""
        running = self.state
        logits = self.prefill(input_ids, attention_mask)
        if running:
            self.state = {name: np.concatenate([running[name], value], axis=batch_axis(self.inputs[name]))
                          for name, value in self.state.items()}
        return logits

    def step(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is not None:
            self.state = {name: np.take(value, rows, axis=batch_axis(self.inputs[name]))
                          for name, value in self.state.items()}
        return np.array(self._run(np.asarray(tokens).reshape(-1, 1)), dtype=np.float32)
