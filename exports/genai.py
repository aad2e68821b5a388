"""`genai_config.json`: what onnxruntime-genai needs to run a decoder-only export as it is.

onnxruntime-genai's "decoder" model type reads one graph whose inputs and outputs follow optimum's
names, which lmkit's decoder-only exports already use (lmkit.exports.decoder_only):

    input_ids, attention_mask, position_ids (batch, tokens), past_key_values.{i}.key / .value
    logits, present.{i}.key / .value            (keys/values: batch, heads, past (+ new), head_dim)

so the file is written from the manifest alone: the sizes (dimensions), the special tokens and the
generation settings (search). `past_present_share_buffer` is off: lmkit's graphs return the past
concatenated with the new positions, not a preallocated buffer written in place.

A graph whose cache genai cannot express gets no file, and the reason in one line: a window cache
of a fixed size (GPT-3's banded layers), a recurrent state (AWD-LSTM), position ids of another
shape than (batch, tokens) (GLM's two position components). Nothing here imports torch or onnx.
"""
from __future__ import annotations

from .graphs import BATCH, PAST, SEQUENCE, TOTAL

GENAI_CONFIG = "genai_config.json"
PAST_KEY, PAST_VALUE = "past_key_values.%d.key", "past_key_values.%d.value"
PRESENT_KEY, PRESENT_VALUE = "present.%d.key", "present.%d.value"


def genai_config(manifest: dict) -> tuple[dict | None, str | None]:
    """(genai_config.json's content, None), or (None, why genai cannot run this export) in one line.

    manifest: the export's manifest as lmkit.exports.export writes it (graphs, dimensions,
    special_tokens, generation), before its file table. The format is onnxruntime-genai's
    (docs: onnxruntime.ai/docs/genai/reference/config.html), checked with onnxruntime-genai 0.18.
    """
    graphs = manifest["graphs"]
    dimensions = manifest.get("dimensions", {})
    if list(graphs) != ["model"]:
        return None, f"the export has {len(graphs)} graphs ({', '.join(graphs)}); genai's decoder reads one"
    if dimensions.get("cache_layout") == "buffer":
        return None, ("its cache is lmkit's fast layout (buffers of the whole context written in place by a fused "
                      "attention), not the one genai reads: export with --layout genai for onnxruntime-genai")
    if dimensions.get("windows"):
        layers = ", ".join(sorted(dimensions["windows"], key=int))
        return None, (f"layers {layers} keep a cache of their last positions only (a fixed-size window), "
                      "which genai's growing key/value cache cannot express")
    graph = graphs["model"]
    inputs = {tensor["name"]: tensor for tensor in graph["inputs"]}
    outputs = {tensor["name"]: tensor for tensor in graph["outputs"]}
    n_layers = dimensions.get("n_layers")
    expected = {PAST_KEY % i: PRESENT_KEY % i for i in range(n_layers or 0)}
    expected.update({PAST_VALUE % i: PRESENT_VALUE % i for i in range(n_layers or 0)})
    cache = {pair["input"]: pair["output"] for pair in graph.get("cache", [])}
    if not n_layers or cache != expected:
        return None, ("its cache is not one key/value pair per layer (past_key_values.N.key/value -> "
                      "present.N.key/value) but a state genai cannot carry (a recurrent one)")
    position_ids = inputs.get("position_ids")
    if position_ids is not None and position_ids["shape"] != [BATCH, SEQUENCE]:
        return None, (f"its position_ids are {tuple(position_ids['shape'])}, not (batch, tokens): genai "
                      "computes one position per token itself")
    heads, head_dim = dimensions.get("n_heads"), dimensions.get("head_dim")
    past_shape, present_shape = [BATCH, heads, PAST, head_dim], [BATCH, heads, TOTAL, head_dim]
    if (set(inputs) - {"position_ids"} != {"input_ids", "attention_mask", *expected}
            or set(outputs) != {"logits", *expected.values()}
            or any(inputs[name]["shape"] != past_shape for name in expected)
            or any(outputs[name]["shape"] != present_shape for name in expected.values())):
        return None, "its graph's inputs and outputs are not the decoder layout genai reads (optimum's names and shapes)"
    if dimensions.get("max_length") is None:
        return None, "the model reads any number of positions, and genai needs a context length"
    special = manifest.get("special_tokens", {})
    decoder_inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask",
                      "past_key_names": PAST_KEY, "past_value_names": PAST_VALUE}
    if position_ids is not None:
        decoder_inputs["position_ids"] = "position_ids"
    config = {
        "model": {
            "type": "decoder",
            "context_length": dimensions["max_length"],
            "vocab_size": dimensions["vocab_size"],
            **{f"{role}_token_id": special.get(role) for role in ("bos", "eos", "pad") if special.get(role) is not None},
            "decoder": {
                "filename": graph["file"],
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": head_dim,
                "hidden_size": heads * head_dim,
                "num_attention_heads": heads,
                "num_key_value_heads": heads,
                "num_hidden_layers": n_layers,
                "inputs": decoder_inputs,
                "outputs": {"logits": "logits", "present_key_names": PRESENT_KEY,
                            "present_value_names": PRESENT_VALUE},
            },
        },
        "search": search_options(manifest.get("generation", {}), dimensions["max_length"]),
    }
    if "pad_token_id" not in config["model"] and "eos_token_id" in config["model"]:
        config["model"]["pad_token_id"] = config["model"]["eos_token_id"]  # genai pads a batch with something
    return config, None


def search_options(generation: dict, max_length: int) -> dict:
    """genai's "search" table from the manifest's generation settings ({"strategy", "options"}).

    genai's max_length counts the prompt too (lmkit's max_new_tokens does not), so it is the
    context length here: a caller sets it per request. Options genai lacks are left out.
    """
    strategy, options = generation.get("strategy", "greedy"), generation.get("options", {})
    search = {"max_length": max_length, "min_length": 0, "past_present_share_buffer": False,
              "do_sample": strategy == "sample", "num_beams": 1, "num_return_sequences": 1,
              "early_stopping": False, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
              "temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0, "diversity_penalty": 0.0}
    for key in ("num_beams", "num_return_sequences", "early_stopping", "length_penalty", "no_repeat_ngram_size",
                "temperature", "top_k", "top_p"):
        if key in options:
            search[key] = options[key]
    if strategy == "sample" and options.get("seed") is not None:
        search["random_seed"] = options["seed"]
    return search


def model_input_names(manifest: dict) -> list[str] | None:
    """The tokenizer outputs a single-graph export reads, in Hugging Face's order, or None for another export.

    transformers' tokenizer returns token_type_ids unless tokenizer_config.json says otherwise, and
    a decoder-only graph has no such input.
    """
    if len(manifest["graphs"]) != 1:
        return None
    names = {tensor["name"] for graph in manifest["graphs"].values() for tensor in graph["inputs"]}
    return [name for name in ("input_ids", "token_type_ids", "attention_mask") if name in names] or None
