"""Import a (made-up) Hugging Face model_type "bigram": config.json {"model_type": "bigram", "vocab_size": V}
and one tensor, "logits.weight" (V, V)."""


def import_bigram(hf_config: dict, tensors: dict):
    if "logits.weight" not in tensors:
        raise ValueError("a bigram checkpoint holds the tensor logits.weight")
    spec = {"decoder": {"type": "bigram", "vocab_size": int(hf_config["vocab_size"])},
            "objectives": [{"type": "causal-lm"}]}
    return spec, {"decoder.next_token_logits.weight": tensors["logits.weight"]}
