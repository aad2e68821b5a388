"""Parity with fastai's AWD-LSTM language model and text classifier, on the same weights, dropout off.

fastai is not a test dependency (it pulls spaCy, pandas and more): this module runs only where it is
installed (`pip install -c constraints.txt fastai`; 2.8.12 resolves beside the pinned torch), and is
marked slow. It maps lmkit's tensors onto fastai's modules by name and compares logits.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastai.text.models.awdlstm", reason="fastai is not installed (optional: the parity reference)")

pytestmark = pytest.mark.slow

from lmkit.plugins.ulmfit.config import AWDLSTMConfig  # noqa: E402
from lmkit.plugins.ulmfit.model import AWDLSTMDecoder  # noqa: E402

SIZES = dict(vocab_size=60, d_embed=16, hidden_size=24, n_layers=3)
NO_DROPOUT = dict(embed_p=0.0, input_p=0.0, hidden_p=0.0, weight_p=0.0)


def ours() -> AWDLSTMDecoder:
    torch.manual_seed(0)
    decoder = AWDLSTMDecoder(AWDLSTMConfig(**SIZES))
    with torch.no_grad():
        decoder.lm_head_bias.normal_()
    return decoder.eval()


def copy_encoder(decoder: AWDLSTMDecoder, encoder) -> None:
    """lmkit's AWD-LSTM tensors onto fastai's AWD_LSTM (its weight-dropped matrix is `weight_hh_l0_raw`)."""
    with torch.no_grad():
        encoder.encoder.weight.copy_(decoder.embedding.weight)
        for ours_layer, theirs in zip(decoder.layers, encoder.rnns):
            theirs.weight_hh_l0_raw.copy_(ours_layer.weight_hh_l0)
            for name in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(theirs.module, name).copy_(getattr(ours_layer, name))
    encoder.eval()


def test_language_model_logits_equal_fastais():
    from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_lm_config
    from fastai.text.models.core import get_language_model

    decoder = ours()
    config = {**awd_lstm_lm_config, "emb_sz": SIZES["d_embed"], "n_hid": SIZES["hidden_size"],
              "n_layers": SIZES["n_layers"], **NO_DROPOUT, "output_p": 0.0}
    theirs = get_language_model(AWD_LSTM, SIZES["vocab_size"], config=config)
    copy_encoder(decoder, theirs[0])
    with torch.no_grad():
        theirs[1].decoder.bias.copy_(decoder.lm_head_bias)
    theirs.eval()
    ids = torch.randint(0, SIZES["vocab_size"], (3, 11))
    theirs.reset()
    with torch.no_grad():
        expected = theirs(ids)[0]
        torch.testing.assert_close(decoder(ids), expected, rtol=1e-5, atol=1e-5)
        # fastai's model is stateful too: a second window goes on from the first, as lmkit's cache does.
        more = torch.randint(0, SIZES["vocab_size"], (3, 5))
        cache = decoder.new_cache(3)
        decoder(ids, cache)
        torch.testing.assert_close(decoder(more, cache), theirs(more)[0], rtol=1e-5, atol=1e-5)


def test_classifier_logits_equal_fastais():
    from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_clas_config
    from fastai.text.models.core import get_text_classifier

    from lmkit.objectives.heads import SequenceHead
    from lmkit.objectives.options import SequenceHeadOptions

    decoder = ours()
    head = SequenceHead(SequenceHeadOptions(recipe="ulmfit", num_labels=3, dropout=0.0), d_model=SIZES["d_embed"])
    head.pooler[1].p = 0.0
    config = {**awd_lstm_clas_config, "emb_sz": SIZES["d_embed"], "n_hid": SIZES["hidden_size"],
              "n_layers": SIZES["n_layers"], **NO_DROPOUT, "output_p": 0.0}
    theirs = get_text_classifier(AWD_LSTM, SIZES["vocab_size"], 3, seq_len=4, config=config, lin_ftrs=[50], ps=[0.0])
    copy_encoder(decoder, theirs[0].module)
    blocks = theirs[1].layers  # LinBnDrop(3E, 50, ReLU), LinBnDrop(50, 3): BatchNorm, (Dropout), Linear
    norms = [m for m in blocks.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    linears = [m for m in blocks.modules() if isinstance(m, torch.nn.Linear)]
    ours_norms, ours_linears = [head.pooler[0], head.pooler[4]], [head.pooler[2], head.score]
    with torch.no_grad():
        for a, b in zip(ours_norms, norms):
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(a, name).copy_(torch.randn_like(getattr(a, name)).abs() + 0.5)
                getattr(b, name).copy_(getattr(a, name))
        for a, b in zip(ours_linears, linears):
            a.weight.copy_(b.weight)
            if b.bias is not None:
                a.bias.copy_(b.bias)
            else:  # fastai's LinBnDrop has no bias after a batch norm
                a.bias.zero_()
    head.eval(), theirs.eval()

    class Composed:
        pass

    model = Composed()
    model.decoder = model.feature_stack = decoder
    ids = torch.randint(2, SIZES["vocab_size"], (2, 1, 10))  # no padding: fastai pads in front, lmkit behind
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "extract_index": torch.full((2, 1), 9)}
    with torch.no_grad():
        torch.testing.assert_close(head.scores(model, batch), theirs(ids[:, 0])[0], rtol=1e-5, atol=1e-5)
