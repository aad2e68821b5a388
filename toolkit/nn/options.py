"""The options that every transformer stack takes from lmkit.nn, checked without torch.

Cross-layer sharing (ALBERT §3.1) and locally banded attention (GPT-3 §2.1, the Sparse Transformer's
local pattern) are parts of lmkit.nn, not of one paper: any family whose stack is built from
lmkit.nn blocks offers them as the same options, `sharing`, `band_width` and `banded_layers`, and
checks them here, so a spec fails at compose time with the same one-line reason in every family.
This module imports nothing heavy: specs are checked before torch is imported.
"""
from __future__ import annotations

from collections.abc import Sequence

SHARINGS = ("none", "all", "attention", "ffn")

# Which layers are banded (0-based), by name; or a list of layers ([1, 2, 5] or "1,2,5").
BANDED_SCHEMES = {
    "odd": lambda layer: layer % 2 == 1,
    "even": lambda layer: layer % 2 == 0,
    "all": lambda layer: True,
    "none": lambda layer: False,
}


def check_sharing(sharing: str) -> None:
    """ValueError naming the option unless `sharing` is one of SHARINGS."""
    if sharing not in SHARINGS:
        raise ValueError(f"sharing must be one of {', '.join(SHARINGS)}, got {sharing!r}")


def check_band(band_width: int | None, positions: int, *, what: str = "max_positions") -> None:
    """ValueError naming the option when a band does not fit a stack reading `positions` positions.

    band_width None (or 0) is no band at all. `what` names the option that set `positions` (RoBERTa's
    usable positions are max_positions less its offset).
    """
    if band_width is None:
        return
    if isinstance(band_width, bool) or not isinstance(band_width, int) or band_width < 1:
        raise ValueError(f"band_width must be a positive integer, got {band_width!r}")
    if band_width > positions:
        raise ValueError(f"band_width ({band_width}) must be at most the context, {what} "
                         f"({positions}); a band as wide as the context is dense attention")


def banded_layers(scheme: str | Sequence[int], n_layers: int) -> tuple[bool, ...]:
    """For each of n_layers layers, whether `scheme` (banded_layers) makes it banded; ValueError if it is bad."""
    if isinstance(scheme, str) and scheme.strip().lower() in BANDED_SCHEMES:
        return tuple(BANDED_SCHEMES[scheme.strip().lower()](layer) for layer in range(n_layers))
    try:
        layers = {int(item) for item in (scheme.split(",") if isinstance(scheme, str) else scheme)
                  if str(item).strip()}
    except (TypeError, ValueError):
        layers = None
    if not layers or any(not 0 <= layer < n_layers for layer in layers):
        raise ValueError(f"banded_layers must be one of {', '.join(BANDED_SCHEMES)} or a list of layers "
                         f"in 0..{n_layers - 1} ([1, 3] or '1,3'), got {scheme!r}")
    return tuple(layer in layers for layer in range(n_layers))
