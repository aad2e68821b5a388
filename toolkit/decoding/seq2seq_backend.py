"""The PyTorch backend of an encoder-decoder model, for the same greedy/beam/sampling strategies.

The strategies see only the target side: every "prompt" is the decoder's start token (<s>), and
the source sentences are handed to the backend beforehand (`set_sources`). Prefill runs the encoder
once over the sources and the decoder over the start tokens; each step feeds one token per row.
The decoder's state (LSTM (h, c), the input-feeding vector, the encoder states and source mask it
attends to) is a dictionary of tensors with the batch as a row dimension, reordered by `rows` like
a transformer's key/value cache: beams are rows, never a Python loop.

The decoder needs `start(encoded) -> state`, `forward(tokens (B, T), state) -> (logits (B, T, V),
state)` and `reorder(state, rows) -> state`; the encoder `forward(input_ids, attention_mask) -> dict`.
"""
from __future__ import annotations

import numpy as np
import torch

from ..parallel import pad_sources


class Seq2SeqBackend:
    """See lmkit.decoding.backend.Backend; call set_sources before each generate()."""

    max_length = None  # recurrent decoders have no context limit; max_new_tokens bounds the output

    def __init__(self, model, device: torch.device | str | None = None, pad_id: int = 0):
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        self.encoder, self.decoder = model.encoder.eval(), model.decoder.eval()
        self.pad_id = pad_id
        self.sources: list[list[int]] | None = None
        self.state: dict | None = None

    def set_sources(self, sources: list[list[int]]) -> None:
        """The source token ids of the prompts the next generate() will get, one per prompt, in order."""
        self.sources = [list(map(int, s)) for s in sources]

    @torch.inference_mode()
    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self.sources is None or len(self.sources) != len(input_ids):
            raise ValueError(f"set_sources() gave {0 if self.sources is None else len(self.sources)} sources for "
                             f"{len(input_ids)} prompts; give one source per prompt")
        if not attention_mask.all():
            raise ValueError("every target prefix must have the same length (the start token)")
        ids, mask = pad_sources(self.sources, self.pad_id)
        encoded = self.encoder(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))
        logits, self.state = self.decoder(torch.from_numpy(input_ids).to(self.device), self.decoder.start(encoded))
        return self._to_host(logits[:, -1])

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is not None:
            self.state = self.decoder.reorder(self.state, torch.from_numpy(rows).to(self.device))
        ids = torch.from_numpy(tokens).to(self.device)[:, None]  # (B', 1)
        logits, self.state = self.decoder(ids, self.state)
        return self._to_host(logits[:, -1])

    @staticmethod
    def _to_host(logits: torch.Tensor) -> np.ndarray:
        return logits.to(device="cpu", dtype=torch.float32, copy=True).numpy()
