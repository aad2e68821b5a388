"""The runtime of ELMo's export (torch-free): the encoder-only runtime, plus `layers` (lmkit embed --layers)."""
from __future__ import annotations

import numpy as np

from lmkit.errors import LmkitError
from lmkit.exports.encoder_runtime import EncoderRuntime, single_graph

from .layers import numpy_layers, parse_layers


class ELMoRuntime(EncoderRuntime):
    """features(..., layers="mix" | "all" | INDEX): the scalar mix, every layer concatenated, or one layer."""

    def __init__(self, export):
        self.export = export
        self.graph = single_graph(export, "elmo-bilm", "char_ids", "last_hidden_state")
        self.session = export.session("model")
        self.max_positions = None
        self.n_layers = export.manifest["dimensions"]["n_layers"]
        self.table = None  # the vocabulary's spelling, for callers that give ids without char_ids

    def features(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None,
                 layers=None, char_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """char_ids (B, T, C): every token's characters (lmkit.token_inputs); without them, the vocabulary's
        spelling of input_ids (an out-of-vocabulary word is then read as <unk>)."""
        which = parse_layers(layers, self.n_layers)
        if input_ids.shape[1] == 0:
            raise LmkitError("the text has no tokens for the biLM to read; give text with at least one word")
        if char_ids is None:
            char_ids = self._vocabulary_spelling()[input_ids]
        feeds = {"char_ids": np.ascontiguousarray(char_ids, dtype=np.int64),
                 "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}
        names = [t["name"] for t in self.graph["outputs"]]
        outputs = dict(zip(names, self.session.run(names, feeds)))
        if which != "mix":
            outputs["last_hidden_state"] = numpy_layers(outputs["layers"], which)
        return outputs

    def _vocabulary_spelling(self) -> np.ndarray:
        if self.table is None:
            from lmkit.nn.char_ids import vocabulary_char_ids

            tokenizer, config = self.export.tokenizer(), self.export.manifest["dimensions"].get("token_inputs")
            if tokenizer is None or config is None:
                raise LmkitError(f"{self.export.directory} reads characters: give char_ids (lmkit.token_inputs), or "
                                 "text to embed")
            tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
            self.table = vocabulary_char_ids(tokens, config["max_characters_per_token"], bos=config.get("bos"),
                                             eos=config.get("eos"), pad=config.get("pad"))
        return self.table
