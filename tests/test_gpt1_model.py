"""The gpt decoder (GPT, Radford et al. 2018): parity with Hugging Face, KV cache, decoding, presets."""
import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from lmkit.plugins import gpt  # noqa: E402
from lmkit.plugins.gpt.config import OpenAIGPTConfig  # noqa: E402
from lmkit.plugins.gpt.hf import openai_gpt_config_from_hf, openai_gpt_state_dict_from_hf  # noqa: E402
from lmkit.plugins.gpt.openai_gpt import OpenAIGPTDecoder  # noqa: E402

TINY = OpenAIGPTConfig(vocab_size=300, max_positions=64, d_model=64, n_layers=2, n_heads=4, dropout=0.0)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return OpenAIGPTDecoder(TINY).eval()


def random_ids(*shape):
    return torch.randint(0, TINY.vocab_size, shape, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """(HF OpenAIGPTLMHeadModel with random weights, the same weights loaded strictly into OpenAIGPTDecoder)."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    path = tmp_path_factory.mktemp("hf-openai-gpt")
    torch.manual_seed(0)
    hf_config = transformers.OpenAIGPTConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=64)
    hf_model = transformers.OpenAIGPTLMHeadModel(hf_config).eval()
    with torch.no_grad():  # HF init leaves biases at 0 and LN gains at 1; perturb so they are tested too
        for parameter in hf_model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    hf_model.save_pretrained(path)

    config = openai_gpt_config_from_hf(json.loads((path / "config.json").read_text()))
    assert config.activation == "gelu-tanh"  # HF's afn "gelu" is gelu_new
    model = OpenAIGPTDecoder(config).eval()
    model.load_state_dict(openai_gpt_state_dict_from_hf(load_file(path / "model.safetensors"), config), strict=True)
    return hf_model, model


@torch.no_grad()
def test_matches_hugging_face_openai_gpt(hf_pair):
    hf_model, model = hf_pair
    ids = random_ids(3, 17)
    expected = hf_model(ids).logits
    logits = model(ids)
    assert logits.shape == (3, 17, 300)
    assert (logits - expected).abs().max() < 1e-4


def test_greedy_decoding_matches_hugging_face_generate(hf_pair):
    from lmkit.decoding.greedy import Greedy
    from lmkit.decoding.options import GreedyOptions
    from lmkit.decoding.torch_backend import TorchBackend

    hf_model, model = hf_pair
    prompt = random_ids(1, 6)
    with torch.no_grad():
        expected = hf_model.generate(prompt, do_sample=False, max_new_tokens=8, pad_token_id=0,
                                     eos_token_id=None)[0, 6:].tolist()
    result = Greedy(GreedyOptions(max_new_tokens=8)).generate(TorchBackend(model, 8), [prompt[0].tolist()],
                                                              eos_id=None, pad_id=0)
    assert len(expected) == 8
    assert list(result[0].tokens) == expected


def test_config_from_hf_refuses_other_models():
    with pytest.raises(ValueError, match="not GPT.*'gpt2'"):
        openai_gpt_config_from_hf({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="afn 'silu'"):
        openai_gpt_config_from_hf({"model_type": "openai-gpt", "afn": "silu"})


@torch.no_grad()
def test_cache_gives_the_logits_of_a_full_forward(model):
    ids = random_ids(2, 12)
    full = model(ids)
    cache = model.new_cache(2)
    steps = [model(ids[:, :5], cache)] + [model(ids[:, t:t + 1], cache) for t in range(5, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_too_long_input_is_a_clear_error(model):
    with pytest.raises(ValueError, match="at most 64 positions.*65 new tokens"):
        model(random_ids(1, 65))
    cache = model.new_cache(1)
    model(random_ids(1, 60), cache)
    with pytest.raises(ValueError, match="5 new tokens after 60 cached"):
        model(random_ids(1, 5), cache)


def test_gpt_has_117m_parameters_post_ln_and_no_final_norm():
    with torch.device("meta"):
        model = OpenAIGPTDecoder(OpenAIGPTConfig())
    assert sum(p.numel() for p in model.parameters()) == 116_534_784
    names = set(model.state_dict())
    assert "tokens_embed.weight" in names and "h.0.ln_2.weight" in names
    assert not any(name.startswith(("lm_head", "ln_f")) for name in names)
    assert all(not block.pre_ln for block in model.h)


def test_init_is_normal_002():
    torch.manual_seed(0)
    model = OpenAIGPTDecoder(OpenAIGPTConfig(vocab_size=1000, max_positions=128, d_model=256, n_layers=2, n_heads=8))
    for weight in (model.tokens_embed.weight, model.positions_embed.weight, model.h[1].mlp.c_proj.weight):
        assert weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert not model.h[0].attn.c_proj.bias.any()


def test_presets_resolve():
    from lmkit.registry import PluginHost
    from lmkit.spec import resolve

    host = PluginHost()
    for name, (raw, _) in gpt.OPENAI_GPT_PRESETS.items():
        spec = resolve(dict(raw), host)
        assert spec.decoder.type == "gpt" and isinstance(spec.decoder.options, OpenAIGPTConfig), name
    options = resolve(dict(gpt.OPENAI_GPT_PRESETS["gpt"][0]), host).decoder.options
    assert (options.n_layers, options.d_model, options.n_heads, options.max_positions, options.vocab_size) == \
        (12, 768, 12, 512, 40478)


def test_compose_gpt_tiny_through_the_cli(run, tmp_path):
    result = run("compose", "gpt-tiny", "--out", tmp_path / "m")
    assert result.code == 0, result.err
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["spec"]["decoder"]["type"] == "gpt" and config["spec"]["decoder"]["n_layers"] == 2
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_registering_the_plugin_does_not_import_torch():
    code = ("import sys, lmkit.plugins.gpt, lmkit.plugins.gpt.config, lmkit.plugins.gpt.hf; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_hf_reads_an_openai_gpt_checkpoint(run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmkit.model import load_model
    from lmkit.tokenizers import WordBPE, WordBPEOptions

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog ran far away\n" * 100)
    tokenizer = WordBPE.train([str(corpus)], WordBPEOptions(vocab_size=120), progress=False)
    torch.manual_seed(0)
    hf = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(
        n_layers=2, d_model=32, n_heads=4, vocab_size=tokenizer.vocab_size, max_positions=32)).eval()
    source = tmp_path / "hf"
    hf.save_pretrained(str(source))
    tokenizer.save(str(source))
    result = run("import-hf", source, "--out", tmp_path / "m")
    assert result.code == 0, result.err
    model, loaded, config = load_model(str(tmp_path / "m"))
    model.eval()
    assert config["spec"]["decoder"]["type"] == "gpt" and loaded.kind == "bpe"
    ids = torch.tensor([loaded.encode("the dog sat on the mat")])
    with torch.no_grad():
        assert (model.decoder(ids) - hf(ids).logits).abs().max() < 1e-4
