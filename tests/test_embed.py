"""`lmkit embed`: sentence vectors and token states of any model, as JSON or safetensors."""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from lmkit.model import load_model

TEXTS = ["the cat sat on the mat", "a dog", "the dog ran after the cat and the mat"]


def test_mean_pooled_vectors_match_the_decoders_hidden_states_text_by_text(run, tiny_gpt2):
    result = run("embed", tiny_gpt2, *[arg for text in TEXTS for arg in ("--text", text)], "--batch-size", "2")
    assert result.code == 0, result.err
    records = json.loads(result.out)
    model, tokenizer, _ = load_model(tiny_gpt2)
    for record, text in zip(records, TEXTS):
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=True)])
        with torch.no_grad():
            states = model.decoder.hidden_states(ids)[0]  # alone: no padding at all
        assert record["tokens"] == ids.size(1)
        np.testing.assert_allclose(record["embedding"], states.mean(0).numpy(), atol=1e-5)


def test_safetensors_output_holds_pooled_vectors_and_padded_token_states(run, tiny_gpt2, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n\n")
    out = tmp_path / "vectors.safetensors"
    result = run("embed", tiny_gpt2, "--input", texts, "--pool", "last", "--tokens", "--out", out)
    assert result.code == 0, result.err
    tensors = load_file(str(out))
    lengths = tensors["attention_mask"].sum(1)
    assert tensors["pooled"].shape[0] == 3 and list(tensors["token_states"].shape[:2]) == list(tensors["input_ids"].shape)
    for i in range(3):  # "last" is the state of each text's last real token
        np.testing.assert_allclose(tensors["pooled"][i], tensors["token_states"][i, lengths[i] - 1], atol=1e-6)
    assert not tensors["token_states"][1, lengths[1]:].any()  # padding stays zero


@pytest.mark.parametrize("args, message", [
    (["--out", "x.npy"], "must end in .json, .safetensors or .npz"),
    (["--pool", "none"], "leaves nothing to write"),
    (["--text", "word " * 200], "text 1 is"),
    # A file in a folder that does not exist (a user's trial: an internal FileNotFoundError).
    (["--out", "no-such-folder/v.npz"], "the folder"),
])
def test_bad_embed_requests_fail_in_one_line(run, tiny_gpt2, args, message):
    result = run("embed", tiny_gpt2, *args, *(["--text", "hi"] if "--text" not in args else []))
    assert result.code != 0 and message in result.err and len(result.err.strip().splitlines()) == 1


def test_a_jsonl_line_without_the_text_field_is_named(run, tiny_gpt2, tmp_path):
    records = tmp_path / "t.jsonl"
    records.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    result = run("embed", tiny_gpt2, "--input", records)
    assert result.code == 1 and "line 2 has no string field 'text'" in result.err
