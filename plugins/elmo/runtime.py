"""The runtime of ELMo's export (torch-free): the encoder-only runtime, plus `layers` (lmkit embed --layers)."""
from __future__ import annotations

import numpy as np

from lmkit.errors import LmkitError
from lmkit.exports.encoder_runtime import EncoderRuntime, run_features

from .layers import numpy_layers, parse_layers


class ELMoRuntime(EncoderRuntime):
    """features(..., layers="mix" | "all" | INDEX): the scalar mix, every layer concatenated, or one layer."""

    def __init__(self, export):
        super().__init__(export)
        self.n_layers = export.manifest["dimensions"]["n_layers"]

    def features(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None,
                 layers=None) -> dict[str, np.ndarray]:
        which = parse_layers(layers, self.n_layers)
        if input_ids.shape[1] == 0:
            raise LmkitError("the text has no tokens for the biLM to read; give text with at least one word")
        outputs = run_features(self.session, self.graph, input_ids, attention_mask, token_type_ids)
        if which != "mix":
            outputs["last_hidden_state"] = numpy_layers(outputs["layers"], which)
        return outputs
