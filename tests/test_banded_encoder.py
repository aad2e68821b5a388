"""GPT-3's banded attention in a BERT encoder: the bidirectional band equals dense attention with an
explicit band mask (with padding), computed blockwise at O(T * w); a banded encoder trains and exports."""
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from lmkit.nn import symmetric_band_mask  # noqa: E402
from lmkit.nn.banded import symmetric_banded_attention  # noqa: E402


def dense_symmetric_reference(q, k, v, w, keep=None):
    """Dense SDPA on the full (T, T) scores with an explicit |i - j| < w mask."""
    T = q.size(2)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = (i - j).abs() < w
    if keep is not None:  # real queries never see padding; every query sees itself
        mask = (mask & keep[:, None, None, :]) | (i == j)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("w", [1, 4, 8])
@pytest.mark.parametrize("T", [1, 3, 8, 9, 20, 37])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "right-padded"])
def test_symmetric_banded_attention_equals_dense_attention_with_a_band_mask(T, w, padded):
    generator = torch.Generator().manual_seed(T * 100 + w)
    q, k, v = (torch.randn(2, 3, T, 16, generator=generator) for _ in range(3))
    keep = None
    if padded:
        keep = torch.ones(2, T, dtype=torch.bool)
        keep[0, T - min(5, T - 1):] = False
    mask = symmetric_band_mask(keep, T, w)
    if T > w:
        assert mask.shape[-2:] == (w, 3 * w)  # blocked: O(T * w) scores, not O(T^2)
    got = symmetric_banded_attention(q, k, v, mask, w)
    want = dense_symmetric_reference(q, k, v, w, keep)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-5  # padding rows too: they see themselves, never NaN
