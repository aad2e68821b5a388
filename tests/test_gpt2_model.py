"""The gpt2 decoder: parity with Hugging Face, KV cache, padding, limits, size and init."""
import json
import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from lmkit.options import build_options  # noqa: E402
from lmkit.plugins import gpt  # noqa: E402
from lmkit.plugins.gpt.config import GPT2Config  # noqa: E402
from lmkit.plugins.gpt.hf import config_from_hf, state_dict_from_hf  # noqa: E402
from lmkit.plugins.gpt.model import GPT2Decoder  # noqa: E402

TINY = GPT2Config(vocab_size=300, max_positions=64, d_model=64, n_layers=2, n_heads=4)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT2Decoder(TINY).eval()


def random_ids(*shape):
    return torch.randint(0, TINY.vocab_size, shape, generator=torch.Generator().manual_seed(1))


def test_matches_hugging_face_gpt2(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=64,
                                        bos_token_id=0, eos_token_id=0)
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():  # HF init leaves biases at 0 and LN gains at 1; perturb so they are tested too
        for parameter in hf_model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    hf_model.save_pretrained(tmp_path)

    config = config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    model = GPT2Decoder(config).eval()
    model.load_state_dict(state_dict_from_hf(load_file(tmp_path / "model.safetensors"), config), strict=True)

    ids = random_ids(3, 17)
    with torch.no_grad():
        expected = hf_model(ids).logits
        logits = model(ids)
    assert logits.shape == (3, 17, 300)
    assert (logits - expected).abs().max() < 1e-4


def test_config_from_hf_refuses_other_models():
    with pytest.raises(ValueError, match="not GPT-2.*'bert'"):
        config_from_hf({"model_type": "bert"})
    assert config_from_hf({"model_type": "gpt2", "activation_function": "gelu_new"}).activation == "gelu-tanh"


@torch.no_grad()
def test_cache_gives_the_logits_of_a_full_forward(model):
    ids = random_ids(2, 12)
    full = model(ids)

    cache = model.new_cache(2)
    steps = [model(ids[:, :5], cache)] + [model(ids[:, t:t + 1], cache) for t in range(5, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)

    # Chunks of several tokens after a past: the causal mask must be aligned to the bottom right.
    cache = model.new_cache(2, max_len=12)
    chunks = [model(ids[:, :5], cache), model(ids[:, 5:9], cache), model(ids[:, 9:], cache)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)

    cache.crop(9)
    torch.testing.assert_close(model(ids[:, 9:], cache), full[:, 9:], atol=1e-5, rtol=0)


@torch.no_grad()
def test_cache_overflow_is_a_clear_error(model):
    cache = model.new_cache(1, max_len=4)
    with pytest.raises(ValueError, match="holds 4 positions"):
        model(random_ids(1, 5), cache)


@torch.no_grad()
def test_reorder_moves_whole_rows(model):
    ids = random_ids(3, 9)
    cache = model.new_cache(3)
    model(ids[:, :6], cache)

    rows = torch.tensor([2, 0, 0])  # in place: same batch size, rows repeated and dropped
    cache.reorder(rows)
    continued = model(ids[rows, 6:], cache)
    torch.testing.assert_close(continued, model(ids[rows])[:, 6:], atol=1e-5, rtol=0)

    rows = torch.tensor([1, 1, 0, 2, 2])  # a new batch size, as when prompts become beams
    cache.reorder(rows)
    assert cache.batch_size == 5
    before = ids[torch.tensor([2, 0, 0])][rows]
    step = torch.randint(0, TINY.vocab_size, (5, 1))
    torch.testing.assert_close(model(step, cache), model(torch.cat([before, step], 1))[:, -1:],
                               atol=1e-5, rtol=0)


@torch.no_grad()
def test_left_padding_gives_each_row_its_own_logits(model):
    rows = [random_ids(1, n)[0] for n in (7, 4, 10)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = True
    positions = (mask.cumsum(1) - 1).clamp(min=0)

    cache = model.new_cache(len(rows))
    logits = model(ids, cache, attention_mask=mask, position_ids=positions)
    assert torch.isfinite(logits).all()  # fully padded query rows must not turn into NaN
    for i, row in enumerate(rows):
        torch.testing.assert_close(logits[i, -1], model(row[None])[0, -1], atol=1e-5, rtol=0)

    # One cached decoding step on the padded batch.
    step = torch.tensor([[5], [6], [7]])
    mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.bool)], dim=1)
    logits = model(step, cache, attention_mask=mask, position_ids=positions[:, -1:] + 1)
    for i, row in enumerate(rows):
        alone = model(torch.cat([row, step[i]])[None])[0, -1]
        torch.testing.assert_close(logits[i, -1], alone, atol=1e-5, rtol=0)


def test_too_long_input_is_a_clear_error(model):
    with pytest.raises(ValueError, match="at most 64 positions.*65 new tokens"):
        model(random_ids(1, 65))
    cache = model.new_cache(1)
    model(random_ids(1, 60), cache)
    with pytest.raises(ValueError, match="5 new tokens after 60 cached"):
        model(random_ids(1, 5), cache)


def test_gpt2_small_has_124m_parameters():
    with torch.device("meta"):
        model = GPT2Decoder(GPT2Config())
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    assert not any(name.startswith("lm_head") for name in model.state_dict())


def test_residual_projections_start_smaller():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=1000, max_positions=128, d_model=256, n_layers=8, n_heads=8)
    model = GPT2Decoder(config)
    residual = 0.02 / math.sqrt(2 * config.n_layers)
    for block in model.h:
        for projection in (block.attn.c_proj, block.mlp.c_proj):
            assert projection.weight.std().item() == pytest.approx(residual, rel=0.05)
            assert not projection.bias.any()
        assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.wpe.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_config_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        GPT2Config(d_model=100, n_heads=3)


def test_d_ff_defaults_to_four_times_the_width_and_can_be_set():
    assert GPT2Config(d_model=64, n_heads=4).d_ff == 256
    model = GPT2Decoder(GPT2Config(vocab_size=30, max_positions=8, d_model=16, n_layers=1, n_heads=2, d_ff=24))
    assert model.h[0].mlp.c_fc.weight.shape == (24, 16) and model.d_model == 16
    with pytest.raises(ValueError, match="d_ff must be a positive integer"):
        GPT2Config(d_ff=0)


@pytest.mark.parametrize("name", sorted(gpt.PRESETS))
def test_presets_are_valid_gpt2_options(name):
    spec, _ = gpt.PRESETS[name]
    options = {k: v for k, v in spec["decoder"].items() if k != "type"}
    assert isinstance(build_options(GPT2Config, options, f"{name}.decoder"), GPT2Config)


def test_registering_the_plugin_does_not_import_torch():
    code = ("import sys, lmkit.plugins.gpt, lmkit.plugins.gpt.config; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_tied_output_projection_follows_the_embedding_and_stays_out_of_the_state_dict():
    from lmkit.nn import TiedOutputProjection

    torch.manual_seed(0)
    embedding = torch.nn.Parameter(torch.randn(50, 8))
    project = TiedOutputProjection()
    h = torch.randn(1, 1, 8)
    with torch.inference_mode():
        first = project(h, embedding)  # decoding: the transposed copy
    assert torch.allclose(first, h @ embedding.detach().t(), atol=1e-6)
    with torch.no_grad():
        embedding.mul_(2.0)  # as an optimizer step does, in place
    with torch.inference_mode():
        assert torch.allclose(project(h, embedding), 2 * first, atol=1e-6)
    trained = project(torch.randn(4, 32, 8), embedding)  # training: the embedding itself, with gradients
    trained.sum().backward()
    assert embedding.grad is not None
    decoder = GPT2Decoder(GPT2Config(n_layers=1, d_model=16, n_heads=2, vocab_size=30, max_positions=8))
    assert not any("lm_head" in name for name in decoder.state_dict())
