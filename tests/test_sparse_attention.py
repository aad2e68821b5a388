"""GPT-3's sparse attention: banded layers equal a band-masked dense layer, at O(T * w), with a windowed
cache that stays flat; the gpt3 decoder generates the same with and without cache, trains and exports."""
import json
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from lmkit.decoding.common import left_pad  # noqa: E402
from lmkit.decoding.greedy import Greedy  # noqa: E402
from lmkit.decoding.options import GreedyOptions  # noqa: E402
from lmkit.decoding.torch_backend import TorchBackend  # noqa: E402
from lmkit.nn import BandedSelfAttention, SelfAttention, band_attention_mask, banded_attention  # noqa: E402
from lmkit.plugins import gpt  # noqa: E402
from lmkit.plugins.gpt.config import GPT3Config  # noqa: E402
from lmkit.plugins.gpt.sparse import GPT3Decoder  # noqa: E402

W = 8  # the band width of the tiny models
TINY = GPT3Config(vocab_size=300, max_positions=64, d_model=32, n_layers=4, n_heads=4, band_width=W)
PROMPTS = ["the cat sat on", "dog", "a mat ran far away quickly"]


def dense_band_reference(q, k, v, w, keep=None):
    """Dense SDPA on the full (T, T) scores with an explicit band mask: what banded attention must equal."""
    T = q.size(2)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = (j <= i) & (j > i - w)
    if keep is not None:  # padding: real queries never see it; every query sees itself, as the dense path
        mask = (mask & keep[:, None, None, :]) | (i == j)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("w", [4, 8])
@pytest.mark.parametrize("T", [1, 3, 8, 9, 20, 37, 64])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_banded_attention_equals_dense_attention_with_a_band_mask(T, w, padded):
    generator = torch.Generator().manual_seed(T * 100 + w)
    q, k, v = (torch.randn(2, 3, T, 16, generator=generator) for _ in range(3))
    keep = None
    if padded:
        keep = torch.ones(2, T, dtype=torch.bool)
        keep[0, :min(3, T - 1)] = False
    mask = band_attention_mask(keep, T, 0, w)
    if padded:  # a window before position 0 (what an empty cache holds): any finite values, never read
        k, v = (torch.cat([torch.randn(2, 3, w, 16, generator=generator), t], dim=2) for t in (k, v))
    got = banded_attention(q, k, v, mask, w)
    k, v = k[:, :, -T:], v[:, :, -T:]
    want = dense_band_reference(q, k, v, w, keep)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("past,T", [(5, 1), (13, 1), (13, 6), (30, 20)])
def test_banded_attention_after_a_window_of_past_keys(past, T):
    """Queries after `past` positions of which only the last w are given (the cache's window)."""
    generator = torch.Generator().manual_seed(past + T)
    q, k, v = (torch.randn(1, 2, past + T, 8, generator=generator) for _ in range(3))
    want = dense_band_reference(q, k, v, W)[:, :, past:]
    window = lambda t: F.pad(t, (0, 0, W, 0))[:, :, past:]  # noqa: E731 - the w positions before, then the new
    got = banded_attention(q[:, :, past:], window(k), window(v), band_attention_mask(None, T, past, W), W)
    assert (got - want).abs().max().item() <= 1e-5


def test_the_banded_layer_has_the_dense_layer_weights_and_its_banded_output():
    torch.manual_seed(0)
    banded = BandedSelfAttention(32, 4, W).eval()
    dense = SelfAttention(32, 4, causal=True).eval()
    dense.load_state_dict(banded.state_dict())  # the same parameters, under the same names
    x = torch.randn(2, 29, 32)
    i, j = torch.arange(29)[:, None], torch.arange(29)[None, :]
    with torch.no_grad():
        want = dense(x, (j <= i) & (j > i - W))
        got = banded(x, band_attention_mask(None, 29, 0, W))
    assert (got - want).abs().max().item() <= 1e-5


def test_banded_scores_grow_as_t_times_w_not_t_squared():
    """The mask is the size of the scores SDPA computes: (T/w blocks) x w x 2w, linear in T."""
    w = 256
    sizes = {T: band_attention_mask(None, T, 0, w).numel() for T in (1024, 2048, 4096, 8192)}
    assert all(size == T * 2 * w for T, size in sizes.items())
    assert band_attention_mask(None, 8192, 0, w).shape == (1, 32, 1, 256, 512)  # (B, blocks, heads, w, 2w)


# -- the gpt3 decoder ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    decoder = GPT3Decoder(TINY).eval()
    with torch.no_grad():  # spread weights, so greedy picks varied tokens and ties are unlikely
        for parameter in decoder.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return decoder


def random_ids(*shape):
    return torch.randint(0, TINY.vocab_size, shape, generator=torch.Generator().manual_seed(1))


def test_layers_alternate_dense_and_banded(model):
    assert model.banded == (False, True, False, True)
    assert [type(block.attn).__name__ for block in model.h] == ["SelfAttention", "BandedSelfAttention"] * 2
    assert GPT3Config(n_layers=4, banded_layers="even").banded() == (True, False, True, False)
    assert GPT3Config(n_layers=4, banded_layers=(0, 3)).banded() == GPT3Config(n_layers=4, banded_layers="0,3").banded()


@torch.no_grad()
def test_cached_greedy_equals_full_recompute_well_past_the_band(model):
    """Greedy over 5w tokens, left-padded rows: the windowed cache against recomputing everything."""
    prompts = [random_ids(7).tolist(), random_ids(3).tolist()]
    steps = 5 * W
    cached = Greedy(GreedyOptions(max_new_tokens=steps)).generate(TorchBackend(model, steps), prompts,
                                                                    eos_id=None, pad_id=None)
    ids, keep = (torch.from_numpy(a) for a in left_pad(prompts, pad_id=0))
    for _ in range(steps):  # no cache: the whole sequence every step
        positions = (keep.long().cumsum(1) - 1).clamp(min=0)
        logits = model(ids, attention_mask=keep, position_ids=positions)[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        keep = torch.cat([keep, torch.ones(len(prompts), 1, dtype=torch.bool)], dim=1)
    assert [g.tokens for g in cached] == ids[:, -steps:].tolist()
    assert len(set(cached[0].tokens)) > 3  # not one repeated token


@torch.no_grad()
def test_prefill_in_pieces_gives_the_logits_of_a_full_forward(model):
    ids = random_ids(2, 40)
    full = model(ids)
    cache = model.new_cache(2)
    pieces = [model(ids[:, a:b], cache) for a, b in ((0, 3), (3, 20), (20, 21), (21, 40))]  # T < w, > w, 1
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() < 1e-4


@torch.no_grad()
def test_the_banded_cache_stays_flat_while_generating(model):
    cache = model.new_cache(1, max_len=64)
    model(random_ids(1, 5), cache)
    windows = (cache.window_keys.shape, cache.window_values.shape)
    assert windows[0] == (2, 1, 4, W, 8)  # 2 banded layers x batch x heads x w x head size
    for _ in range(6 * W):
        model(random_ids(1, 1), cache)
    assert (cache.window_keys.shape, cache.window_values.shape) == windows  # w positions, after 53
    assert cache.dense.keys.shape == (2, 1, 4, 64, 8)  # the dense layers keep all (preallocated once)
    # The window's memory depends on w alone, not on the length the cache was made for.
    assert model.new_cache(1, max_len=16).window_keys.shape == cache.window_keys.shape


@torch.no_grad()
def test_reorder_moves_rows_and_crop_works_only_inside_the_window(model):
    ids = random_ids(3, 12)
    cache = model.new_cache(3)
    model(ids, cache)
    cache.reorder(torch.tensor([2, 2, 0, 1]))  # beams: four rows from three
    alone = model.new_cache(1)
    model(ids[2:3], alone)
    step = random_ids(4, 1)
    assert torch.allclose(model(step, cache)[1], model(step[1:2], alone)[0], atol=1e-5)

    short = model.new_cache(1)
    model(ids[:1, :6], short)
    short.crop(4)  # nothing has left the window yet (6 <= w)
    again = model.new_cache(1)
    model(ids[:1, :4], again)
    assert torch.allclose(model(ids[:1, 4:5], short), model(ids[:1, 4:5], again), atol=1e-5)
    with pytest.raises(ValueError, match=f"keep only the last {W} positions"):
        cache.crop(10)  # 13 positions: the window lost the first 5


def test_gpt3_small_has_125m_parameters_and_the_presets_are_valid():
    spec, _ = gpt.GPT3_PRESETS["gpt3-small"]
    options = {key: value for key, value in spec["decoder"].items() if key != "type"}
    with torch.device("meta"):
        model = GPT3Decoder(GPT3Config(**options))
    assert sum(p.numel() for p in model.parameters()) == 125_226_240  # GPT-3 Table 2.1: 125M
    assert model.banded == (False, True) * 6 and model.config.max_positions == 2048
    for spec, _ in gpt.GPT3_PRESETS.values():
        GPT3Config(**{key: value for key, value in spec["decoder"].items() if key != "type"})


@pytest.mark.parametrize("setting,message", [
    ("decoder.band_width=0", "error: decoder: band_width must be a positive integer, got 0"),
    ("decoder.band_width=-4", "error: decoder: band_width must be a positive integer, got -4"),
    ("decoder.band_width=65", "error: decoder: band_width (65) must be at most the context, max_positions (64)"),
    ("decoder.banded_layers=[4]", "error: decoder: banded_layers must be one of odd, even, all, none or a list"),
])
def test_a_bad_band_is_a_one_line_error(run, tmp_path, setting, message):
    result = run("compose", "gpt3-tiny", "--set", setting, "--out", tmp_path / "m")
    assert result.code == 1 and result.out == "" and result.err.count("\n") == 1, result.err
    assert result.err.startswith(message), result.err
    assert not (tmp_path / "m").exists()


# -- training and export through the CLI ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gpt3(tmp_path_factory):
    """A 2-layer gpt3-tiny (layer 0 dense, layer 1 banded, w = 8) over a 300-token BPE, weights spread."""
    from safetensors.torch import load_file, save_file

    from lmkit.model import compose
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions

    root = tmp_path_factory.mktemp("gpt3")
    rng = random.Random(0)
    words = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "far", "away", "quickly", "home"]
    corpus = root / "data" / "text.txt"
    corpus.parent.mkdir()
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)) + "\n")
    tokenizer = ByteLevelBPE.train([str(corpus)], ByteLevelBPEOptions(vocab_size=300), progress=False)
    tokenizer.save(str(root / "tok"))
    overrides = ["decoder.n_layers=2", f"decoder.vocab_size={tokenizer.vocab_size}", f"tokenizer={root / 'tok'}"]
    compose("gpt3-tiny", overrides, str(root / "init"))
    generator = torch.Generator().manual_seed(0)
    weights = {name: tensor + 0.3 * torch.randn(tensor.shape, generator=generator)
               for name, tensor in load_file(str(root / "init" / "model.safetensors")).items()}
    save_file(weights, str(root / "weights.safetensors"))
    compose("gpt3-tiny", overrides, str(root / "m0"), weights=str(root / "weights.safetensors"))
    return root


def test_lmkit_train_trains_a_gpt3(run, tiny_gpt3):
    model_dir, data = tiny_gpt3 / "init", tiny_gpt3 / "data"
    result = run("train", model_dir, "--data", data, "--steps", "3", "--batch-size", "2", "--seq-len", "32",
                 "--eval-every", "0", "--log-every", "1")  # 32 tokens: four bands of 8
    assert result.code == 0, result.err
    assert result.err.splitlines()[-1].startswith("trained step 3: loss ")


@pytest.fixture(scope="module")
def gpt3_export(tiny_gpt3):
    from lmkit.exports.export import export_model

    return str(tiny_gpt3 / "e0"), export_model(str(tiny_gpt3 / "m0"), str(tiny_gpt3 / "e0"))


def test_the_export_keeps_a_window_cache_for_banded_layers_and_passes_validation(gpt3_export):
    _, manifest = gpt3_export
    assert manifest["exporter"]["name"] == "decoder.gpt3"
    assert manifest["validation"]["max_abs_diff"] <= 1e-4 and len(manifest["validation"]["shape_sets"]) >= 3
    shapes = {t["name"]: t["shape"] for t in manifest["graphs"]["model"]["inputs"] + manifest["graphs"]["model"]["outputs"]}
    assert shapes["past_key_values.0.key"] == ["batch_size", 4, "past_sequence_length", 16]  # dense: everything
    assert shapes["present.0.key"] == ["batch_size", 4, "past_sequence_length + sequence_length", 16]
    assert shapes["past_key_values.1.key"] == shapes["present.1.value"] == ["batch_size", 4, W, 16]  # banded
    assert manifest["dimensions"]["windows"] == {"1": W}


@pytest.mark.parametrize("flags", [["--strategy", "greedy"], ["--strategy", "beam", "--num-beams", "3"]],
                         ids=["greedy", "beam3"])
def test_lmkit_generate_on_the_export_matches_pytorch_past_the_band(run, tiny_gpt3, gpt3_export, flags):
    export_dir, _ = gpt3_export
    args = [arg for text in PROMPTS for arg in ("--prompt", text)] + ["--max-new-tokens", str(3 * W), "--json", *flags]
    on_torch, on_onnx = run("generate", tiny_gpt3 / "m0", *args), run("generate", export_dir, *args)
    assert on_torch.code == on_onnx.code == 0, on_onnx.err
    tokens = [[output["tokens"] for output in json.loads(result.out)] for result in (on_torch, on_onnx)]
    assert tokens[0] == tokens[1] and all(len(row) == 3 * W for row in tokens[1])
    assert len({tuple(row) for row in tokens[0]}) > 1


def test_ort_backend_logits_follow_torch_through_steps_and_beam_reorders(tiny_gpt3, gpt3_export):
    import lmkit.exports
    from lmkit.model import load_model

    model, tokenizer, _ = load_model(str(tiny_gpt3 / "m0"))
    input_ids, mask = left_pad([tokenizer.encode(text) for text in PROMPTS], pad_id=0)
    ort_backend, torch_backend = lmkit.exports.load(gpt3_export[0]).backend(), TorchBackend(model.decoder, 2 * W)
    np.testing.assert_allclose(ort_backend.prefill(input_ids, mask), torch_backend.prefill(input_ids, mask), atol=1e-4)
    # Expand to 4 rows (beams), go on past the band, keep 2.
    steps = [(np.array([5, 6, 7, 8]), np.array([2, 0, 0, 1]))] + [(np.arange(4) + 9 + i, None) for i in range(W)]
    steps.append((np.array([30, 31]), np.array([3, 1])))
    for tokens, rows in steps:
        np.testing.assert_allclose(ort_backend.step(tokens, rows), torch_backend.step(tokens, rows), atol=1e-4)

