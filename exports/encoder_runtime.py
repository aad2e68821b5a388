"""The encoder-only runtime (BERT family): one graph, token ids and a mask in, token states and a pooled
vector (and a fine-tuned model's logits) out; registered as "encoder-only"."""
from __future__ import annotations

import numpy as np

from lmkit.errors import ArtifactError, LmkitError

from .graphs import ENCODER


def single_graph(export, architecture: str, needs: str, gives: str) -> dict:
    """The manifest entry of a one-graph export's "model" graph, which must take `needs` and give `gives` (a
    fine-tuned export may carry its task head's own graph beside it, lmkit.exports.heads)."""
    graphs = export.manifest["graphs"]
    head_layers = ((export.manifest.get("task_head") or {}).get("layers") or {}).get("graph")
    if set(graphs) - {head_layers} != {"model"}:  # a task model's graph beside it: lmkit.exports.heads
        raise ArtifactError(f"{export.directory}: a {architecture} export has one graph, 'model'; this one has "
                            f"{', '.join(graphs)}")
    graph = graphs["model"]
    inputs, outputs = ({t["name"] for t in graph[side]} for side in ("inputs", "outputs"))
    if needs not in inputs or gives not in outputs:
        raise ArtifactError(f"{export.directory}: a {architecture} graph takes {needs} and returns {gives}; this one "
                            "does not")
    return graph


def run_features(session, graph: dict, input_ids: np.ndarray, attention_mask: np.ndarray,
                 token_type_ids: np.ndarray | None = None, names: dict[str, str] | None = None) -> dict:
    """Every output of an encoder graph by name, for right-padded ids (B, T) and their mask (B, T).

    names: the graph's input for each role (input_ids, attention_mask, token_type_ids) when it is
    named otherwise; inputs the graph does not take are left out, each cast to the graph's dtype.
    """
    names = names or {}
    values = {"input_ids": input_ids, "attention_mask": attention_mask,
              "token_type_ids": np.zeros_like(input_ids) if token_type_ids is None else token_type_ids}
    inputs = {t["name"]: t for t in graph["inputs"]}
    feeds = {}
    for role, value in values.items():
        name = names.get(role, role)
        if name in inputs:
            feeds[name] = np.ascontiguousarray(value, dtype=inputs[name]["dtype"])
    outputs = [t["name"] for t in graph["outputs"]]
    return dict(zip(outputs, session.run(outputs, feeds)))


class EncoderRuntime:
    """lmkit.contract.ExportRuntime of an encoder-only export: features (embeddings, task heads)."""

    kind = "encoder"
    graphs = ("model",)

    def __init__(self, export):
        self.export = export
        self.graph = single_graph(export, ENCODER, "input_ids", "last_hidden_state")
        self.session = export.session("model")
        self.max_positions = export.manifest.get("dimensions", {}).get("max_length")

    def backend(self, max_new_tokens: int | None = None):
        raise LmkitError(f"{self.export.directory} is an {ENCODER} export: it embeds (features(), embed()) but does "
                         "not generate")

    def features(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 token_type_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The graph's outputs by name: last_hidden_state (B, T, D), pooler_output (B, D), a head's logits."""
        return run_features(self.session, self.graph, input_ids, attention_mask, token_type_ids)
