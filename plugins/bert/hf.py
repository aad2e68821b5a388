"""Hugging Face BERT, ALBERT and RoBERTa checkpoints (config.json + model.safetensors) as lmkit models.

Reads what BertForPreTraining / BertForMaskedLM / BertModel, AlbertForPreTraining / AlbertForMaskedLM
/ AlbertModel and RobertaForMaskedLM / RobertaModel save. HF keeps query, key and value apart;
lmkit's shared attention has one fused c_attn, so they are concatenated. The masked-LM decoder is
tied to the word embeddings in lmkit: an untied checkpoint is refused.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .config import AlbertConfig, BertConfig, RobertaConfig

if TYPE_CHECKING:  # config_from_hf works without torch
    from torch import Tensor

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu-tanh", "gelu_pytorch_tanh": "gelu-tanh", "relu": "relu"}

# HF BERT layer names -> lmkit Block names (post-LN: ln_1 closes attention, ln_2 the MLP)
BERT_LAYER = {"attention.output.dense": "attn.c_proj", "attention.output.LayerNorm": "ln_1",
              "intermediate.dense": "mlp.c_fc", "output.dense": "mlp.c_proj", "output.LayerNorm": "ln_2"}
ALBERT_LAYER = {"attention.dense": "attn.c_proj", "attention.LayerNorm": "ln_1", "ffn": "mlp.c_fc",
                "ffn_output": "mlp.c_proj", "full_layer_layer_norm": "ln_2"}
ALBERT_GROUP = "encoder.albert_layer_groups.0.albert_layers.0."


def _common(hf_config: dict, family: str) -> dict:
    activation = hf_config.get("hidden_act", "gelu")
    if activation not in ACTIVATIONS:
        raise ValueError(f"the {family} checkpoint uses hidden_act {activation!r}; supported: {', '.join(ACTIVATIONS)}")
    position = hf_config.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ValueError(f"the {family} checkpoint uses position_embedding_type {position!r}; lmkit's encoder "
                         "has absolute learned positions only")
    if hf_config.get("is_decoder") or hf_config.get("add_cross_attention"):
        raise ValueError(f"the {family} checkpoint is configured as a decoder; lmkit imports {family} encoders")
    return dict(
        vocab_size=hf_config["vocab_size"], d_model=hf_config["hidden_size"],
        n_layers=hf_config["num_hidden_layers"], n_heads=hf_config["num_attention_heads"],
        d_ff=hf_config["intermediate_size"], activation=ACTIVATIONS[activation],
        max_positions=hf_config["max_position_embeddings"],
        type_vocab_size=hf_config.get("type_vocab_size", 2), dropout=hf_config.get("hidden_dropout_prob", 0.1),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12))


def _strip(tensors: dict, prefix: str) -> dict:
    """Keys without the model prefix; LayerNorm gamma/beta (checkpoints converted from TensorFlow) as
    weight/bias, which is how transformers renames them when it loads such a checkpoint."""
    out = {}
    for key, value in tensors.items():
        key = key.removeprefix(prefix)
        if key.endswith((".gamma", ".beta")):
            key = key.rsplit(".", 1)[0] + (".weight" if key.endswith(".gamma") else ".bias")
        out[key] = value
    return out


def _layer(state: dict, tensors: dict, source: str, target: str, names: dict, query: str) -> None:
    """One transformer layer's tensors into lmkit's Block names; q, k, v fused into c_attn."""
    import torch

    for kind in ("weight", "bias"):
        parts = [tensors.pop(f"{source}{query}.{name}.{kind}") for name in ("query", "key", "value")]
        state[f"{target}attn.c_attn.{kind}"] = torch.cat(parts, dim=0)
        for hf_name, ours in names.items():
            state[f"{target}{ours}.{kind}"] = tensors.pop(f"{source}{hf_name}.{kind}")


def _embeddings(state: dict, tensors: dict) -> None:
    for key in [k for k in tensors if k.startswith("embeddings.")]:
        value = tensors.pop(key)
        if key.endswith(("position_ids", "token_type_ids")):  # buffers of older checkpoints
            continue
        state[f"encoder.{key}"] = value


def _check_tied(tensors: dict, decoder: str, embedding) -> None:
    head = tensors.pop(decoder, None)
    if head is not None and not head.equal(embedding):
        raise ValueError(f"the checkpoint's {decoder} differs from its word embeddings; lmkit's masked-LM head "
                         "is tied to them, so it cannot load an untied output matrix")


def _rest(tensors: dict, state: dict, what: str) -> dict:
    """Fail on anything that was not mapped, naming it: a strict import, not a silent partial one."""
    left = sorted(k for k in tensors if not k.endswith("position_ids"))
    if left:
        raise ValueError(f"the {what} checkpoint has tensors lmkit does not know where to put, e.g. {left[0]}")
    return state


# -- BERT ------------------------------------------------------------------------------------------


def bert_config_from_hf(hf_config: dict, pooler: bool = True) -> BertConfig:
    if hf_config.get("model_type") != "bert":
        raise ValueError(f"the checkpoint is not BERT: its config.json has model_type {hf_config.get('model_type')!r}")
    return BertConfig(**_common(hf_config, "BERT"), pooler=pooler)


def _encoder_state(tensors: dict[str, Tensor], layers: int, pooler: bool) -> dict[str, Tensor]:
    """The encoder's part of the state dict: embeddings, layers and the pooler (if there is one)."""
    state = {}
    _embeddings(state, tensors)
    _encoder_layers(state, tensors, layers)
    if pooler:
        state["encoder.pooler.weight"], state["encoder.pooler.bias"] = (tensors.pop("pooler.dense.weight"),
                                                                        tensors.pop("pooler.dense.bias"))
    return state


def import_bert(hf_config: dict, tensors: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """(spec table, ComposedModel state dict) of a BertForPreTraining / BertForMaskedLM / BertModel checkpoint."""
    from lmkit.options import options_to_dict

    tensors = _strip(tensors, "bert.")
    pooler = "pooler.dense.weight" in tensors
    config = bert_config_from_hf(hf_config, pooler)
    state = _encoder_state(tensors, config.n_layers, pooler)
    objectives = []
    if "cls.predictions.bias" in tensors:
        objectives.append({"type": "masked-lm"})
        _mlm_head(state, tensors, "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                  "cls.predictions.bias", "cls.predictions.decoder")
    if "cls.seq_relationship.weight" in tensors:
        objectives.append({"type": "next-sentence"})
        for kind in ("weight", "bias"):
            state[f"objectives.next-sentence.classifier.{kind}"] = tensors.pop(f"cls.seq_relationship.{kind}")
    spec = {"encoder": {"type": "bert", **options_to_dict(config)}, "objectives": objectives}
    return spec, _rest(tensors, state, "BERT")


def _encoder_layers(state: dict, tensors: dict, n_layers: int) -> None:
    for i in range(n_layers):
        _layer(state, tensors, f"encoder.layer.{i}.", f"encoder.blocks.h.{i}.", BERT_LAYER, "attention.self")


def _mlm_head(state: dict, tensors: dict, dense: str, norm: str, bias: str, decoder: str) -> None:
    for kind in ("weight", "bias"):
        state[f"objectives.masked-lm.dense.{kind}"] = tensors.pop(f"{dense}.{kind}")
        state[f"objectives.masked-lm.LayerNorm.{kind}"] = tensors.pop(f"{norm}.{kind}")
    state["objectives.masked-lm.bias"] = tensors.pop(bias)
    _check_tied(tensors, f"{decoder}.weight", state["encoder.embeddings.word_embeddings.weight"])
    tensors.pop(f"{decoder}.bias", None)  # the same tensor as the head's bias


# -- ALBERT ----------------------------------------------------------------------------------------


def albert_config_from_hf(hf_config: dict, pooler: bool = True) -> AlbertConfig:
    if hf_config.get("model_type") != "albert":
        raise ValueError(f"the checkpoint is not ALBERT: its config.json has model_type "
                         f"{hf_config.get('model_type')!r}")
    for key in ("num_hidden_groups", "inner_group_num"):
        if hf_config.get(key, 1) != 1:
            raise ValueError(f"the ALBERT checkpoint sets {key}={hf_config[key]}; lmkit's albert encoder shares one "
                             "layer across all layers (num_hidden_groups=1, inner_group_num=1)")
    return AlbertConfig(**{**_common(hf_config, "ALBERT"), "layer_norm_eps": hf_config.get("layer_norm_eps", 1e-12)},
                        d_embed=hf_config.get("embedding_size", 128), sharing="all", pooler=pooler)


def import_albert(hf_config: dict, tensors: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """(spec table, state dict) of an AlbertForPreTraining / AlbertForMaskedLM / AlbertModel checkpoint."""
    from lmkit.options import options_to_dict

    tensors = _strip(tensors, "albert.")
    pooler = "pooler.weight" in tensors
    config = albert_config_from_hf(hf_config, pooler)
    state = {}
    _embeddings(state, tensors)
    for kind in ("weight", "bias"):
        state[f"encoder.embedding_hidden_mapping_in.{kind}"] = tensors.pop(f"encoder.embedding_hidden_mapping_in.{kind}")
    _layer(state, tensors, ALBERT_GROUP, "encoder.blocks.h.0.", ALBERT_LAYER, "attention")
    if pooler:
        state["encoder.pooler.weight"], state["encoder.pooler.bias"] = (tensors.pop("pooler.weight"),
                                                                        tensors.pop("pooler.bias"))
    objectives = []
    if "predictions.bias" in tensors:
        objectives.append({"type": "masked-lm"})
        _mlm_head(state, tensors, "predictions.dense", "predictions.LayerNorm", "predictions.bias",
                  "predictions.decoder")
    if "sop_classifier.classifier.weight" in tensors:
        objectives.append({"type": "sentence-order"})
        for kind in ("weight", "bias"):
            state[f"objectives.sentence-order.classifier.{kind}"] = tensors.pop(f"sop_classifier.classifier.{kind}")
    spec = {"encoder": {"type": "albert", **options_to_dict(config)}, "objectives": objectives}
    return spec, _rest(tensors, state, "ALBERT")


# -- RoBERTa ---------------------------------------------------------------------------------------


def roberta_config_from_hf(hf_config: dict, pooler: bool = False) -> RobertaConfig:
    if hf_config.get("model_type") != "roberta":
        raise ValueError(f"the checkpoint is not RoBERTa: its config.json has model_type "
                         f"{hf_config.get('model_type')!r}")
    values = {**_common(hf_config, "RoBERTa"), "type_vocab_size": hf_config.get("type_vocab_size", 1),
              "layer_norm_eps": hf_config.get("layer_norm_eps", 1e-5)}
    return RobertaConfig(**values, pad_token_id=hf_config.get("pad_token_id", 1), pooler=pooler)


def import_roberta(hf_config: dict, tensors: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """(spec table, state dict) of a RobertaForMaskedLM / RobertaModel checkpoint."""
    from lmkit.options import options_to_dict

    tensors = _strip(tensors, "roberta.")
    pooler = "pooler.dense.weight" in tensors
    config = roberta_config_from_hf(hf_config, pooler)
    state = _encoder_state(tensors, config.n_layers, pooler)
    objectives = []
    if "lm_head.bias" in tensors:
        if config.activation != "gelu":
            raise ValueError(f"the RoBERTa checkpoint sets hidden_act={hf_config.get('hidden_act')!r}, but its "
                             "masked-LM head always uses the exact GELU; lmkit's head follows the encoder's activation")
        objectives.append({"type": "masked-lm"})
        _mlm_head(state, tensors, "lm_head.dense", "lm_head.layer_norm", "lm_head.bias", "lm_head.decoder")
    spec = {"encoder": {"type": "roberta", **options_to_dict(config)}, "objectives": objectives}
    return spec, _rest(tensors, state, "RoBERTa")


# -- lmkit -> transformers (`lmkit export-hf`) -------------------------------------------------------

HF_ACTIVATIONS = {"gelu": "gelu", "gelu-tanh": "gelu_new", "relu": "relu"}
# The objectives each family's pre-training class has a head for, and the class of each set of them.
HEADS = {
    "bert": {("masked-lm", "next-sentence"): "BertForPreTraining", ("masked-lm",): "BertForMaskedLM",
             ("next-sentence",): "BertForNextSentencePrediction", (): "BertModel"},
    "albert": {("masked-lm", "sentence-order"): "AlbertForPreTraining", ("masked-lm",): "AlbertForMaskedLM",
               (): "AlbertModel"},
    "roberta": {("masked-lm",): "RobertaForMaskedLM", (): "RobertaModel"},
}


def _hf_config(config, family: str, architecture: str) -> dict:
    if config.band_width is not None:
        raise ValueError(f"the {family} encoder has banded attention (band_width={config.band_width}), which "
                         "transformers' class cannot represent")
    if family != "albert" and getattr(config, "sharing", "none") != "none":
        raise ValueError(f"the {family} encoder shares layers (sharing={config.sharing!r}); transformers' "
                         f"{family} has a set of weights per layer")
    return {
        "model_type": family, "architectures": [architecture], "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "intermediate_size": config.d_ff,
        "hidden_act": HF_ACTIVATIONS[config.activation], "max_position_embeddings": config.max_positions,
        "type_vocab_size": config.type_vocab_size, "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.dropout, "layer_norm_eps": config.layer_norm_eps,
        "position_embedding_type": "absolute",
    }


def _architecture(model, family: str) -> tuple[str, set[str]]:
    objectives = tuple(sorted(model.objectives))
    classes = HEADS[family]
    if objectives not in classes:
        writes = " / ".join(" + ".join(k) or "no head" for k in classes)
        raise ValueError(f"lmkit writes {family} for transformers with these heads: {writes}; this model's are "
                         f"{' + '.join(objectives) or 'none'} (a fine-tuned task head is not among them): export "
                         "the pretrained model, or use lmkit export for ONNX")
    return classes[objectives], set(objectives)


def _split_layer(out: dict, state: dict, source: str, target: str, names: dict, query: str) -> None:
    """The converse of _layer: c_attn split into query, key and value; lmkit's names to HF's."""
    for kind in ("weight", "bias"):
        for name, part in zip(("query", "key", "value"), state.pop(f"{source}attn.c_attn.{kind}").chunk(3, dim=0)):
            out[f"{target}{query}.{name}.{kind}"] = part
        for hf_name, ours in names.items():
            out[f"{target}{hf_name}.{kind}"] = state.pop(f"{source}{ours}.{kind}")


def _encoder_out(model, family: str, architecture: str) -> tuple[dict, dict, str]:
    """(tensors so far, the rest of lmkit's state, the base model's prefix): embeddings, layers, pooler."""
    state = dict(model.state_dict())
    base = "" if architecture.endswith("Model") else f"{family}."
    out = {f"{base}{key.removeprefix('encoder.')}": state.pop(key)
           for key in [k for k in state if k.startswith("encoder.embeddings.")]}
    if family == "albert":
        for kind in ("weight", "bias"):
            out[f"{base}encoder.embedding_hidden_mapping_in.{kind}"] = state.pop(f"encoder.embedding_hidden_mapping_in.{kind}")
        _split_layer(out, state, "encoder.blocks.h.0.", f"{base}{ALBERT_GROUP}", ALBERT_LAYER, "attention")
    else:
        for i in range(model.spec.encoder.options.n_layers):
            _split_layer(out, state, f"encoder.blocks.h.{i}.", f"{base}encoder.layer.{i}.", BERT_LAYER,
                         "attention.self")
    if "encoder.pooler.weight" in state:
        pooler = "pooler" if family == "albert" else "pooler.dense"
        for kind in ("weight", "bias"):
            out[f"{base}{pooler}.{kind}"] = state.pop(f"encoder.pooler.{kind}")
    return out, state, base


def _mlm_out(out: dict, state: dict, dense: str, norm: str, bias: str) -> None:
    for kind in ("weight", "bias"):
        out[f"{dense}.{kind}"] = state.pop(f"objectives.masked-lm.dense.{kind}")
        out[f"{norm}.{kind}"] = state.pop(f"objectives.masked-lm.LayerNorm.{kind}")
    out[bias] = state.pop("objectives.masked-lm.bias")  # the decoder's weight is the word embeddings: tied


def _done(out: dict, state: dict, family: str) -> dict:
    if state:
        raise ValueError(f"the {family} model has tensors transformers' class has no place for, e.g. {sorted(state)[0]}")
    return out


def export_bert(model, tokenizer) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, tensors) of BertForPreTraining / BertForMaskedLM / BertModel, by the model's objectives."""
    architecture, objectives = _architecture(model, "bert")
    out, state, _ = _encoder_out(model, "bert", architecture)
    if "masked-lm" in objectives:
        _mlm_out(out, state, "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                 "cls.predictions.bias")
    if "next-sentence" in objectives:
        for kind in ("weight", "bias"):
            out[f"cls.seq_relationship.{kind}"] = state.pop(f"objectives.next-sentence.classifier.{kind}")
    return _hf_config(model.spec.encoder.options, "bert", architecture), _done(out, state, "BERT")


def export_albert(model, tokenizer) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, tensors) of AlbertForPreTraining / AlbertForMaskedLM / AlbertModel."""
    config = model.spec.encoder.options
    if config.sharing != "all":
        raise ValueError(f"the albert encoder shares {config.sharing!r}; transformers' ALBERT shares every layer "
                         "(sharing=all)")
    architecture, objectives = _architecture(model, "albert")
    out, state, _ = _encoder_out(model, "albert", architecture)
    if "masked-lm" in objectives:
        _mlm_out(out, state, "predictions.dense", "predictions.LayerNorm", "predictions.bias")
    if "sentence-order" in objectives:
        for kind in ("weight", "bias"):
            out[f"sop_classifier.classifier.{kind}"] = state.pop(f"objectives.sentence-order.classifier.{kind}")
    hf_config = _hf_config(config, "albert", architecture)
    hf_config.update(embedding_size=config.d_embed, num_hidden_groups=1, inner_group_num=1)
    return hf_config, _done(out, state, "ALBERT")


def export_roberta(model, tokenizer) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, tensors) of RobertaForMaskedLM / RobertaModel."""
    config = model.spec.encoder.options
    architecture, objectives = _architecture(model, "roberta")
    if "masked-lm" in objectives and config.pooler:
        raise ValueError("RobertaForMaskedLM has no pooler, and this model has one (pooler=true)")
    out, state, _ = _encoder_out(model, "roberta", architecture)
    if "masked-lm" in objectives:
        if config.activation != "gelu":
            raise ValueError("transformers' RoBERTa masked-LM head always uses the exact GELU; this model's "
                             f"head uses {config.activation!r}")
        _mlm_out(out, state, "lm_head.dense", "lm_head.layer_norm", "lm_head.bias")
    hf_config = _hf_config(config, "roberta", architecture)
    hf_config["pad_token_id"] = config.pad_token_id
    return hf_config, _done(out, state, "RoBERTa")
