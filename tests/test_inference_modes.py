"""Every tiny preset runs the same loaded and called under inference mode, no_grad, or plain autograd.

A model loaded under torch.inference_mode() has inference tensors for parameters: no version counter,
no autograd. Caches keyed on a tensor's `_version` (the tied output projection's once did) crash on
them with "Inference tensors do not track version counter" (issue #19 item 9).
"""
import contextlib

import pytest

torch = pytest.importorskip("torch")

from lmkit.model import compose, load_model  # noqa: E402
from lmkit.registry import get_host  # noqa: E402

TINY = sorted(name for name in get_host().presets if name.endswith("-tiny"))
MODES = {"plain": contextlib.nullcontext, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    made = {}

    def make(preset):
        if preset not in made:
            made[preset] = str(tmp_path_factory.mktemp("presets") / preset)
            # CoVe wraps a trained NMT model: an nmt-tiny composed first (lmkit.plugins.seq2seq's COVE_PRESETS)
            overrides = [f"encoder.model={make('nmt-tiny')}"] if preset == "cove-tiny" else []
            compose(preset, overrides, made[preset], seed=0)
        return made[preset]

    return make


def run(model) -> list:
    """Every output of the model's parts on a fixed 2-row batch: 2 x 5 tokens, so the decoder's output
    projection sees few rows (the path the tied projection's cached copy serves)."""
    ids = torch.tensor([[5, 17, 3, 40, 22], [9, 1, 33, 12, 7]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    outputs = []
    encoded = None
    if model.encoder is not None:
        encoded = model.encoder(ids, mask)  # an lmkit.contract.EncoderOutput
        outputs.extend([encoded.last_hidden_state, encoded.pooler_output, *(encoded.final_state or ())])
    if model.decoder is not None:
        if encoded is not None:  # an encoder-decoder: the decoder reads the encoder's states
            logits, _ = model.decoder(ids[:, :3], model.decoder.start(encoded))
        else:
            logits = model.decoder(ids[:, :3])
        outputs.append(logits)
    return [t.detach().clone() for t in outputs if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("preset", TINY)
def test_a_model_runs_the_same_under_every_autograd_mode(preset, model_dirs):
    directory = model_dirs(preset)
    results = {}
    for mode, context in MODES.items():
        with context():
            model = load_model(directory)[0]
            results[mode] = run(model)
            results[mode] += run(model)  # twice: a cache made by the first call is used by the second
    assert results["plain"], f"{preset}: no outputs compared"
    for mode in ("no_grad", "inference_mode"):
        assert len(results[mode]) == len(results["plain"])
        for ours, plain in zip(results[mode], results["plain"]):
            torch.testing.assert_close(ours, plain, atol=1e-5, rtol=0)


# A model loaded under inference mode runs under inference mode only: PyTorch refuses inference
# tensors in autograd-tracked computation ("Inference tensors cannot be saved for backward").
@pytest.mark.parametrize("loaded", ["plain", "no_grad"])
@pytest.mark.parametrize("called", list(MODES))
def test_a_decoder_loaded_in_one_mode_runs_in_another(loaded, called, model_dirs):
    # Loaded plain and called under inference mode, GPT-2's tied projection uses its transposed copy.
    directory = model_dirs("gpt2-tiny")
    with torch.no_grad():
        expected = run(load_model(directory)[0])
    with MODES[loaded]():
        model = load_model(directory)[0]
    with MODES[called]():
        for ours, theirs in zip(run(model), expected):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
