"""onnxruntime-genai runs lmkit's decoder-only exports from their genai_config.json, token for token.

The reference is `lmkit generate` on the same export (lmkit's own loop on onnxruntime, itself held
to PyTorch by the export tests). genai pads a batch on the right and lmkit on the left: the tokens are
the same either way, in fp32 and in int8 and int4, whose activations are quantized per row (and block).
"""
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
og = pytest.importorskip("onnxruntime_genai")

from conftest import run_cli  # noqa: E402

from lmkit.exports.genai import GENAI_CONFIG, genai_config  # noqa: E402
from lmkit.exports.manifest import MANIFEST  # noqa: E402

PROMPTS = ["the cat sat on", "dog", "a mat ran far away quickly"]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def int8_export(tiny_gpt2, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("genai") / "int8")
    assert run_cli("export", tiny_gpt2, "--out", out, "--quantize", "int8", "--layout", "genai").code == 0
    return out


@pytest.fixture(scope="module")
def int4_export(tiny_gpt2, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("genai") / "int4")
    assert run_cli("export", tiny_gpt2, "--out", out, "--quantize", "int4", "--layout", "genai").code == 0
    return out


def genai_generate(export: str, prompts: list, new_tokens: int, num_beams: int = 1) -> list[list[int]]:
    """The tokens genai adds to each prompt (a right-padded batch), greedy or beam search.

    prompts: texts, which genai's tokenizer encodes, or token ids of one length (genai's tokenizer
    reads byte-level BPE, GPT-2's, but not every tokenizer.json: GPT's word-level BPE it gets wrong).
    """
    model = og.Model(export)
    if isinstance(prompts[0], str):
        tokenizer = og.Tokenizer(model)
        width = max(len(tokenizer.encode(prompt)) for prompt in prompts)
        tokens = tokenizer.encode_batch(prompts)
    else:
        width = len(prompts[0])
        tokens = np.asarray(prompts, dtype=np.int32)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=width + new_tokens, num_beams=num_beams, do_sample=False,
                              batch_size=len(prompts), early_stopping=False, length_penalty=1.0)
    generator = og.Generator(model, params)
    generator.append_tokens(tokens)
    while not generator.is_done():
        generator.generate_next_token()
    eos = json.load(open(os.path.join(export, GENAI_CONFIG)))["model"].get("eos_token_id")
    # A row that ends goes on as padding (the eos token) while others run; lmkit leaves eos out.
    rows = [np.asarray(generator.get_sequence(row)).tolist()[width:] for row in range(len(prompts))]
    return [row[:row.index(eos)] if eos in row else row for row in rows]


def lmkit_generate(export: str, prompts: list[str], new_tokens: int, num_beams: int = 1) -> list[list[int]]:
    beam = ["--strategy", "beam", "--num-beams", num_beams] if num_beams > 1 else ["--strategy", "greedy"]
    result = run_cli("generate", export, *[x for p in prompts for x in ("--prompt", p)],
                     "--max-new-tokens", new_tokens, *beam, "--json")
    assert result.code == 0, result.err
    return [row["tokens"] for row in json.loads(result.out)]


def test_the_export_writes_genai_config_and_model_input_names(tiny_gpt2_genai_export):
    manifest = json.load(open(os.path.join(tiny_gpt2_genai_export, MANIFEST)))
    assert manifest["genai"] == {"config": GENAI_CONFIG}
    assert GENAI_CONFIG in manifest["files"]  # hashed like every file
    config = json.load(open(os.path.join(tiny_gpt2_genai_export, GENAI_CONFIG)))
    dimensions = manifest["dimensions"]
    assert config["model"]["decoder"]["num_hidden_layers"] == dimensions["n_layers"]
    assert config["model"]["context_length"] == dimensions["max_length"]
    assert config["model"]["eos_token_id"] == manifest["special_tokens"]["eos"]
    assert config["search"]["past_present_share_buffer"] is False
    tokenizer_config = json.load(open(os.path.join(tiny_gpt2_genai_export, "tokenizer_config.json")))
    assert tokenizer_config["model_input_names"] == ["input_ids", "attention_mask"]


def test_transformers_tokenizer_gives_no_token_type_ids(tiny_gpt2_genai_export):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_gpt2_genai_export)
    assert set(tokenizer("the cat")) == {"input_ids", "attention_mask"}


@pytest.mark.parametrize("num_beams", [1, 4])
def test_genai_padded_batch_equals_lmkit_fp32(tiny_gpt2_genai_export, num_beams):
    assert (genai_generate(tiny_gpt2_genai_export, PROMPTS, NEW_TOKENS, num_beams)
            == lmkit_generate(tiny_gpt2_genai_export, PROMPTS, NEW_TOKENS, num_beams))


@pytest.mark.parametrize("num_beams", [1, 4])
def test_genai_padded_batch_equals_lmkit_int4(int4_export, num_beams):
    assert (genai_generate(int4_export, PROMPTS, NEW_TOKENS, num_beams)
            == lmkit_generate(int4_export, PROMPTS, NEW_TOKENS, num_beams))


@pytest.mark.parametrize("num_beams", [1, 4])
def test_genai_padded_batch_equals_lmkit_int8(int8_export, num_beams):
    assert (genai_generate(int8_export, PROMPTS, NEW_TOKENS, num_beams)
            == lmkit_generate(int8_export, PROMPTS, NEW_TOKENS, num_beams))


def test_genai_reads_the_export_tokenizer(tiny_gpt2_genai_export):
    from lmkit.tokenizers import load_tokenizer

    tokenizer = og.Tokenizer(og.Model(tiny_gpt2_genai_export))
    ours = load_tokenizer(tiny_gpt2_genai_export)
    for prompt in PROMPTS:
        assert np.asarray(tokenizer.encode(prompt)).tolist() == ours.encode(prompt)


def graph(inputs, outputs, cache):
    def tensors(pairs):
        return [{"name": name, "dtype": "float32", "shape": shape} for name, shape in pairs]

    return {"model": {"file": "model.onnx", "inputs": tensors(inputs), "outputs": tensors(outputs),
                      "cache": [{"input": i, "output": o} for i, o in cache]}}


def manifest_of(*, windows=None, position_shape=("batch_size", "sequence_length"), recurrent=False):
    past, total = "past_sequence_length", "past_sequence_length + sequence_length"
    if recurrent:
        cache = [("h.0", "h_out.0")]
        inputs = [("input_ids", ["batch_size", "sequence_length"]), ("h.0", ["batch_size", 8])]
        outputs = [("logits", ["batch_size", "sequence_length", 10]), ("h_out.0", ["batch_size", 8])]
    else:
        cache = [(f"past_key_values.0.{p}", f"present.0.{p}") for p in ("key", "value")]
        inputs = [("input_ids", ["batch_size", "sequence_length"]), ("attention_mask", ["batch_size", total]),
                  ("position_ids", list(position_shape)),
                  *((i, ["batch_size", 2, past, 4]) for i, _ in cache)]
        outputs = [("logits", ["batch_size", "sequence_length", 10]), *((o, ["batch_size", 2, total, 4]) for _, o in cache)]
    dimensions = {"n_layers": 1, "n_heads": 2, "head_dim": 4, "vocab_size": 10, "max_length": 32}
    if windows:
        dimensions["windows"] = windows
    return {"graphs": graph(inputs, outputs, cache), "dimensions": dimensions,
            "special_tokens": {"bos": 0, "eos": 0, "pad": 0},
            "generation": {"strategy": "beam", "options": {"num_beams": 3, "length_penalty": 0.5}}}


def test_genai_config_follows_the_manifest():
    config, reason = genai_config(manifest_of())
    assert reason is None
    assert config["search"]["num_beams"] == 3 and config["search"]["length_penalty"] == 0.5
    assert config["model"]["decoder"]["hidden_size"] == 8


@pytest.mark.parametrize("variant,words", [
    ({"windows": {"1": 4}}, "window"),
    ({"recurrent": True}, "recurrent"),
    ({"position_shape": ("batch_size", 2, "sequence_length")}, "position_ids"),
])
def test_caches_genai_cannot_express_are_named_in_one_line(variant, words):
    config, reason = genai_config(manifest_of(**variant))
    assert config is None and words in reason and "\n" not in reason
