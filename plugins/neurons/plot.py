"""A heat map of one prompt's attributions, layer by neuron (matplotlib, the `plot` extra)."""
from __future__ import annotations

import os
import tempfile

from lmkit.errors import LmkitError


def heat_map(attribution, neurons, title: str, path: str) -> None:
    """attribution (n_layers, d_ff) as a PNG at `path`, the knowledge neurons circled; written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LmkitError("--plot needs matplotlib: pip install 'lmkit-toolkit[plot]'") from None
    values = attribution.detach().cpu().numpy()
    figure, axes = plt.subplots(figsize=(10, 0.4 * values.shape[0] + 1.5))
    image = axes.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
    for layer, index in neurons:
        axes.scatter([index], [layer], s=60, facecolors="none", edgecolors="red")
    axes.set_xlabel("FFN neuron")
    axes.set_ylabel("layer")
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, label="integrated gradients")
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(suffix=".png", dir=directory)
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=100)
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        if os.path.exists(temporary):
            os.remove(temporary)
