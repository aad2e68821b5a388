"""`lmkit export-hf`: transformers loads what it writes with lmkit's logits (within 1e-5), and
import-hf followed by export-hf gives back the checkpoint's tensors and config values.

Sources are transformers models with random weights saved by save_pretrained, built as the import
tests build them (GPT-2, GPT, BERT, ALBERT, RoBERTa, T5 v1.0 and v1.1).
"""
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from lmkit.model import load_model  # noqa: E402

FAMILIES = ["gpt2", "openai-gpt", "bert", "albert", "roberta", "t5-v1.0", "t5-v1.1"]
# Tensors a checkpoint may hold that export-hf leaves out: copies transformers ties again on load.
TIED = ("lm_head.weight", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
        "predictions.decoder.weight", "predictions.decoder.bias", "lm_head.decoder.weight", "lm_head.decoder.bias",
        "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Config keys lmkit has no option for (one dropout rate stands for transformers' three, and so on).
IGNORED = {"transformers_version", "dtype", "torch_dtype", "classifier_dropout", "use_cache", "summary_type",
           "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
           "predict_special_tokens", "output_past"}


def perturbed(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.tie_weights()
    return model.eval()


def save_source(family: str, directory):
    """A random transformers model of `family`, saved with its tokenizer in `directory`."""
    if family in ("gpt2", "openai-gpt"):
        from test_import_hf import EOT, gpt2_tokenizer

        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=gpt2_tokenizer(), bos_token=EOT,
                                                         eos_token=EOT, unk_token=EOT)
        sizes = dict(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(0)
        model = (transformers.GPT2LMHeadModel(transformers.GPT2Config(**sizes)) if family == "gpt2"
                 else transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**sizes)))
        model = perturbed(model)
    elif family.startswith("t5"):
        from test_t5_hf import hf_model, t5_tokenizer

        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=t5_tokenizer(), eos_token="</s>",
                                                         pad_token="<pad>", unk_token="<unk>")
        model = hf_model(family[3:])
    else:
        from test_bert_hf import build

        build(family, directory)
        return
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)


@pytest.fixture(scope="module", params=FAMILIES)
def round_trip(request, tmp_path_factory):
    """(family, source directory, imported model directory, export-hf directory), all through the CLI."""
    from conftest import run_cli

    family = request.param
    root = tmp_path_factory.mktemp(f"hf-{family}")
    save_source(family, root / "source")
    for command, src, out in (("import-hf", "source", "imported"), ("export-hf", "imported", "exported")):
        result = run_cli(command, root / src, "--out", root / out)
        assert result.code == 0, result.err
    return family, root / "source", root / "imported", root / "exported"


def test_transformers_loads_it_with_lmkits_logits(round_trip):
    family, _, imported, exported = round_trip
    model, _, _ = load_model(str(imported))
    config = json.load(open(exported / "config.json"))
    hf = getattr(transformers, config["architectures"][0]).from_pretrained(exported).eval()
    vocab = min(hf.config.vocab_size, 40)
    ids = torch.randint(5, vocab, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.no_grad():
        if model.kind == "decoder":
            ours, theirs = model.decoder(ids), hf(ids).logits
        elif model.kind == "encoder-decoder":
            targets = torch.randint(5, vocab, (3, 6), generator=torch.Generator().manual_seed(1))
            ours = model.decoder(targets, model.decoder.start(model.encoder(ids, mask)))[0]
            theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=targets).logits
        else:
            states = model.encoder(ids, mask).last_hidden_state
            ours = model.objectives["masked-lm"].logits(model, states)
            output = hf(input_ids=ids, attention_mask=mask)
            theirs = getattr(output, "prediction_logits", None)
            theirs = output.logits if theirs is None else theirs
            ours, theirs = ours[mask.bool()], theirs[mask.bool()]
    assert theirs.abs().max() > 0.5  # not a trivially small comparison
    difference = (ours - theirs).abs().max().item()
    assert difference < 1e-5, f"{family}: max |lmkit - transformers| = {difference:.2g}"


def test_import_then_export_gives_back_the_tensors(round_trip):
    _, source, _, exported = round_trip
    original, written = load_file(str(source / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert set(written) <= set(original)
    for name, tensor in written.items():
        assert torch.equal(tensor, original[name]), name
    left_out = {name for name in set(original) - set(written) if not name.endswith(".position_ids")}
    for name in left_out:  # only tied copies, equal to a tensor that was written
        assert name.endswith(TIED), name
        assert any(torch.equal(original[name], tensor) for tensor in written.values()), name


def test_import_then_export_gives_back_the_config_values(round_trip):
    _, source, _, exported = round_trip
    original, written = json.load(open(source / "config.json")), json.load(open(exported / "config.json"))
    # transformers 5 writes T5's tie_word_embeddings true whatever it was given (scale_decoder_outputs holds
    # what it meant) and loads an lm_head.weight found in the file; lmkit writes whether the output layer is
    # the embedding, which transformers 4 reads too. The logits test shows it loads right.
    ignored = IGNORED | ({"tie_word_embeddings"} if original["model_type"] == "t5" else set())
    for key, value in written.items():
        if key in original and key not in ignored:
            assert original[key] == value, key
    assert written["model_type"] == original["model_type"]
    assert written["architectures"] == original["architectures"]
    # import-hf records where the weights came from (an export's model card names it as base_model)
    imported = json.load(open(round_trip[2] / "config.json"))["imported_from"]
    assert imported["model_type"] == original["model_type"]


def test_a_model_without_a_twin_is_refused_in_one_line(run, tmp_path):
    result = run("compose", "gpt3-tiny", "--out", tmp_path / "m")
    assert result.code == 0, result.err
    result = run("export-hf", tmp_path / "m", "--out", tmp_path / "hf")
    assert result.code != 0 and "no transformers twin" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "hf").exists()


def test_an_lmkit_model_loads_in_transformers_with_its_tokenizer(tiny_gpt2, run, tmp_path):
    """A model lmkit composed itself (not imported): AutoModelForCausalLM and AutoTokenizer read the directory."""
    result = run("export-hf", tiny_gpt2, "--out", tmp_path / "hf")
    assert result.code == 0, result.err
    model, tokenizer, _ = load_model(tiny_gpt2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = ["the cat sat on the mat", "a dog ran"]
    assert [hf_tokenizer(text)["input_ids"] for text in texts] == [tokenizer.encode(text) for text in texts]
    ids = torch.tensor([tokenizer.encode(texts[0])])
    with torch.no_grad():
        assert (model.decoder(ids) - hf(ids).logits).abs().max() < 1e-5
