"""A fine-tuned model's task head, run on an encoder export without torch (any family's: BERT's, ELMo's).

Every task head is one linear layer on what the encoder graph already returns (the pooled [CLS]
state, or each token's state), so the export keeps the graph as it is and stores the layer beside
it, `task_head.safetensors`, hashed in the manifest like every other file. A head whose recipe scores
the labels with the language model itself (GLM's cloze) has no layer: the recipe scores them over the
export's generating graph (its backend_label_scores), the same way on any backend. These are the numpy
twins of lmkit.objectives.heads; tests/test_finetune_export.py checks that they agree.

A token head whose recipe puts a task model between the encoder and the linear layer (ELMo's BiLSTM
tagger, lmkit.objectives.heads.TokenHead.layers) exports that model as a graph of its own,
`task_layers`: input_ids, attention_mask and the encoder graph's outputs it names in, its `states` (B,
T, width) out; the manifest's task_head says so under "layers", and the linear layer reads them.
"""
from __future__ import annotations

import os

import numpy as np

from lmkit.errors import ArtifactError

from .manifest import safe_path

HEAD_FILE = "task_head.safetensors"
HEAD_TYPES = ("sequence-head", "token-head", "span-head")
LAYERS_GRAPH, LAYERS_OUTPUT = "task_layers", "states"


def head_part(spec: dict) -> dict | None:
    """The spec's task-head objective, if it has one."""
    return next((o for o in spec.get("objectives", []) if o.get("type") in HEAD_TYPES), None)


def layers_graph(model, spec: dict, plan):
    """The Graph of the task model between the encoder and the head's linear layer (see above), or None when the
    head has none; LmkitError, before anything is written, when that model cannot be exported."""
    part = head_part(spec)
    layers = None if part is None else getattr(model.objectives[part["type"]], "layers", None)
    if layers is None:
        return None
    import torch

    from lmkit.errors import LmkitError

    from .graphs import BATCH, SEQUENCE, Graph, ShapeSet, TensorInfo

    # Optional: a recipe's task model exports when it says how (TokenHead's docstring).
    reads, export_module = getattr(layers, "encoder_outputs", None), getattr(layers, "export_module", None)
    encoder = next((g for g in plan.graphs if set(reads or ()) <= {t.name for t in g.outputs}), None)
    if export_module is None or reads is None or encoder is None:
        raise LmkitError(f"the {part.get('recipe')} recipe's task model ({type(layers).__name__}) runs between the "
                         "encoder and the tag layer, and does not say how to export it; predict with the model directory")
    outputs = {t.name: t for t in encoder.outputs}
    width = model.objectives[part["type"]].output_layer().in_features
    vocab = plan.dimensions.get("vocab_size")
    module = export_module().eval()
    rng = np.random.default_rng(1)

    def shape_set(encoder_set: ShapeSet) -> ShapeSet:
        """The encoder's outputs on one of its shape sets, with ids of the same shape."""
        with torch.no_grad():
            got = encoder.module(*(torch.from_numpy(encoder_set.inputs[t.name]) for t in encoder.inputs))
        got = dict(zip(outputs, (g.numpy() for g in got)))
        mask = encoder_set.inputs["attention_mask"]
        ids = encoder_set.inputs.get("input_ids")
        ids = rng.integers(0, vocab, size=mask.shape).astype(np.int64) if ids is None else ids
        return ShapeSet(encoder_set.label, {"input_ids": ids, "attention_mask": mask, **{n: got[n] for n in reads}})

    sets = [shape_set(s) for s in encoder.validation]
    return Graph(LAYERS_GRAPH, module,
                 [TensorInfo("input_ids", "int64", (BATCH, SEQUENCE)), TensorInfo("attention_mask", "int64", (BATCH, SEQUENCE)),
                  *(outputs[name] for name in reads)],
                 [TensorInfo(LAYERS_OUTPUT, "float32", (BATCH, SEQUENCE, width))],
                 example=tuple(torch.from_numpy(sets[1].inputs[t]) for t in ("input_ids", "attention_mask", *reads)),
                 validation=sets, scores=None, exporter="legacy")


def save_head(model, spec: dict, directory: str, layers=None) -> dict | None:
    """Write the task head's linear layer into the export directory; its manifest entry, or None. layers: the
    layers_graph() the export carries, named in the entry."""
    part = head_part(spec)
    if part is None:
        return None
    from safetensors.numpy import save

    from lmkit.artifacts import atomic_write

    layer = model.objectives[part["type"]].output_layer()
    if layer is None:  # the language model scores the labels (a cloze recipe's backend_label_scores): no layer
        return dict(part)
    tensors = {"weight": layer.weight.detach().float().cpu().numpy(),
               "bias": layer.bias.detach().float().cpu().numpy()}
    with atomic_write(os.path.join(directory, HEAD_FILE), "wb") as handle:
        handle.write(save(tensors))
    reads = None if layers is None else [t.name for t in layers.inputs[2:]]
    return {"file": HEAD_FILE, **part, **({"layers": {"graph": layers.name, "reads": reads}} if layers else {})}


def head_choices(part: dict, weight: np.ndarray, bias: np.ndarray):
    """What the task head picks from an encoder graph's outputs, for export validation's top-1 agreement.

    Returns choices(outputs by name, inputs by name) -> the head's top-1 choice at each counted
    position (a label per example or per real token; an answer's start and end per example; for
    multiple choice the batch's rows taken as one item's choices), or None for a regression head,
    whose value has no top-1 choice.
    """
    kind, task = part["type"], part.get("task", "classification")

    def linear(features: np.ndarray) -> np.ndarray:
        return features.astype(np.float64) @ weight.T.astype(np.float64) + bias

    def choices(outputs: dict, inputs: dict) -> np.ndarray | None:
        mask = inputs["attention_mask"].astype(bool)
        if kind == "sequence-head":
            if task == "regression":
                return None
            scores = linear(outputs["pooler_output"])  # (B, labels), (B, 1) for multiple choice
            if task == "multiple-choice":
                return scores[:, 0].argmax()[None] if len(scores) > 1 else np.zeros(0, dtype=np.int64)
            return scores.argmax(-1)
        # (B, T, labels) or (B, T, 2), of a task model's states when the head reads them (layers_graph)
        scores = linear(outputs[LAYERS_OUTPUT] if LAYERS_OUTPUT in outputs else outputs["last_hidden_state"])
        if kind == "token-head":
            return scores.argmax(-1)[mask]
        scores = np.where(mask[:, :, None], scores, -np.inf)
        return np.concatenate([scores[..., 0].argmax(-1), scores[..., 1].argmax(-1)])  # start, end per row

    return choices


def validation_head(model, spec: dict):
    """head_choices() of the model's task head, or None when it has none."""
    part = head_part(spec)
    if part is None:
        return None
    layer = model.objectives[part["type"]].output_layer()
    if layer is None:  # scored by the language model, whose graph the export validates itself
        return None
    return head_choices(part, layer.weight.detach().float().cpu().numpy(), layer.bias.detach().float().cpu().numpy())


class ExportedHead:
    """The task head of an export, applied to its encoder's outputs: predict(exported, batch) as in torch."""

    def __init__(self, exported):
        info = exported.manifest.get("task_head")
        if info is None:
            raise ArtifactError(f"{exported.directory} has no task head; export a model made by lmkit finetune")
        self.info, self.recipe = info, None
        if "file" not in info:  # no layer: the recipe scores the labels over the export's own graph (GLM's cloze)
            from lmkit.registry import get_host

            self.recipe = get_host().instantiate("task-recipe", info["recipe"], info.get("recipe_options"))
            return
        if exported.kind != "encoder":  # any family's encoder export: its runtime gives the features a head reads
            raise ArtifactError(f"{exported.directory}: task heads run on encoder exports; predict with a "
                                f"{exported.kind}'s model directory instead")
        from safetensors.numpy import load_file

        tensors = load_file(safe_path(exported.directory, info["file"], "task head"))
        self.weight, self.bias = tensors["weight"], tensors["bias"]

    def _linear(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias

    def scores(self, exported, batch: dict[str, np.ndarray]) -> np.ndarray:
        """The head's scores, as its torch scores() gives them: (B, labels), (B,) for regression, (B, S)
        for multiple choice, (B, T, labels) per token, (B, T, 2) answer start and end."""
        if self.recipe is not None:
            return np.asarray(self.recipe.backend_label_scores(exported, batch), dtype=np.float32)
        layers = self.info.get("layers")
        session = None if layers is None else exported.export.session(layers["graph"])
        return self.apply(exported.encode, batch, session)

    def apply(self, encode, batch: dict[str, np.ndarray], layers=None) -> np.ndarray:
        """scores() with `encode(ids, mask, token_types, **per-token inputs)` giving the encoder's outputs by name;
        the batch's per-token inputs (lmkit.token_inputs: ELMo's char_ids) go to encode by name. layers: the
        session of the task_layers graph, when the manifest's task head names one."""
        from lmkit.token_inputs import NAMES

        kind = self.info["type"]
        ids = batch["input_ids"]
        if kind == "sequence-head":
            B, S, T = ids.shape
            extra = {name: batch[name].reshape(B * S, T, *batch[name].shape[3:]) for name in NAMES if name in batch}
            outputs = encode(ids.reshape(B * S, T), batch["attention_mask"].reshape(B * S, T),
                             batch["token_type_ids"].reshape(B * S, T), **extra)
            features = outputs["pooler_output"].reshape(B, S, -1)
            task = self.info.get("task", "classification")
            if task == "multiple-choice":
                return self._linear(features)[..., 0]
            scores = self._linear(features.sum(1))  # similarity: the two orders added, as in torch
            return scores[:, 0] if task == "regression" else scores
        extra = {name: batch[name] for name in NAMES if name in batch}
        outputs = encode(ids, batch["attention_mask"], batch["token_type_ids"], **extra)
        states = outputs["last_hidden_state"]
        if layers is not None:  # the task model between the encoder and the linear layer (ELMo's BiLSTM tagger)
            feeds = {"input_ids": np.asarray(ids, dtype=np.int64),
                     "attention_mask": np.asarray(batch["attention_mask"], dtype=np.int64),
                     **{name: outputs[name] for name in self.info["layers"]["reads"]}}
            states = layers.run([LAYERS_OUTPUT], feeds)[0]
        scores = self._linear(states)  # (B, T, labels) or (B, T, 2)
        if kind == "token-head":
            return scores
        return np.where(batch["answerable"][:, :, None], scores, -1e4).astype(np.float32)

    def predict(self, exported, batch: dict[str, np.ndarray]) -> np.ndarray:
        """The prediction, as the torch head's predict() gives it."""
        scores = self.scores(exported, batch)
        single = self.info["type"] == "span-head" or self.info.get("task") == "regression"
        return scores if single else scores.argmax(-1)
