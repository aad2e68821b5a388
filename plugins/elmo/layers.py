"""Which of a biLM's layers `lmkit embed --layers` gives, on either backend (torch-free: numpy only)."""
from __future__ import annotations

import numpy as np

from lmkit.errors import LmkitError

from .config import LAYERS_HELP


def parse_layers(layers, n_layers: int):
    """"mix", "all" or an int in [0, n_layers) from an option (a CLI string or a Python value)."""
    if layers is None or layers == "mix":
        return "mix"
    if layers == "all":
        return "all"
    try:
        index = int(layers)
    except (TypeError, ValueError):
        raise LmkitError(f"--layers {layers!r}: give {LAYERS_HELP}") from None
    if not 0 <= index < n_layers:
        raise LmkitError(f"--layers {index} is out of range: this biLM has layers 0..{n_layers - 1} "
                         "(0 the token layer); give one of them, mix or all")
    return index


def numpy_layers(layers: np.ndarray, which):
    """The same choice on an export's `layers` output (B, L+1, T, 2P): (B, T, D)."""
    if which == "all":
        return np.concatenate(list(np.moveaxis(layers, 1, 0)), axis=-1)
    return layers[:, which]
