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

import copy

import numpy as np
import torch

from ..parallel import pad_sources


class Seq2SeqBackend:
    """See lmkit.decoding.backend.Backend; call set_sources before each generate().

    prefix: a lmkit.prefix.CachePrefix whose P positions every row's decoder self-attention cache starts
    from, before the start token (the decoder's `self_attention_cache`); the encoder is untouched.
    """

    max_length = None  # recurrent decoders have no context limit; max_new_tokens bounds the output

    def __init__(self, model, device: torch.device | str | None = None, pad_id: int = 0, prefix=None):
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        self.encoder, self.decoder = model.encoder.eval(), model.decoder.eval()
        self.pad_id = pad_id
        self.sources: list[list[int]] | None = None
        self.state: dict | None = None
        self.row_sources: np.ndarray | None = None  # (B',): the source each row decodes, by index
        self.prefix: dict[str, torch.Tensor] = {}  # state name -> (L, 1, nh, P, hs)
        if prefix is not None:
            self._take_prefix(prefix)

    def _take_prefix(self, prefix) -> None:
        """Check `prefix` (a lmkit.prefix.CachePrefix) against the decoder's self-attention cache and keep it by
        state name: every row's state starts from it, before the start token (lmkit.contract.Seq2SeqDecoder)."""
        from lmkit.errors import LmkitError

        names = self.decoder.self_attention_cache
        if names is None:
            raise LmkitError(f"a prefix starts a decoder's self-attention cache, and this {type(self.decoder).__name__} "
                             "has none (a recurrent state); prefixes work with attention decoders (T5)")
        dtype = next(self.decoder.parameters()).dtype
        with torch.no_grad():
            probe = self.decoder.start(_empty_encoding(self.encoder, self.device, dtype))
        n_layers, _, n_heads, _, head_dim = probe[names[0]].shape
        prefix.check_fits(n_layers, n_heads, head_dim, f"this {type(self.decoder).__name__}")
        kv = torch.from_numpy(prefix.keys_values).to(self.device, dtype)  # (L, 2, nh, P, hs)
        self.prefix = {names[0]: kv[:, 0, None], names[1]: kv[:, 1, None]}

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
        state = self.decoder.start(encoded)
        for name, value in self.prefix.items():  # the prefix's P positions come before the start token
            state[name] = value.expand(-1, len(ids), -1, -1, -1)
        logits, self.state = self.decoder(torch.from_numpy(input_ids).to(self.device), state)
        self.row_sources = np.arange(len(ids))
        return self._to_host(logits[:, -1])

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is not None:
            # Rows that stay among their own source's rows (beams) keep the source's entries as they are: for
            # T5 the cross-attention keys and values, as large as the self-attention cache.
            stay = len(rows) == len(self.row_sources) and np.array_equal(self.row_sources[rows], self.row_sources)
            self.row_sources = self.row_sources[rows]
            source_state = getattr(self.decoder, "source_state", ()) if stay else ()
            kept = {name: value for name, value in self.state.items() if name in source_state}
            moved = {name: value for name, value in self.state.items() if name not in kept}
            self.state = {**kept, **self.decoder.reorder(moved, torch.from_numpy(rows).to(self.device))}
        ids = torch.from_numpy(tokens).to(self.device)[:, None]  # (B', 1)
        logits, self.state = self.decoder(ids, self.state)
        return self._to_host(logits[:, -1])

    @property
    def joins_rows(self) -> bool:
        """Whether `merge` can take rows into a running batch: the decoder joins states (Seq2SeqDecoderStack.join)
        and, if it keeps a self-attention cache, reads the target padding (it lists "target_mask" in its
        STATE_ROWS), and no prefix sits before the targets (a padded row's queries would be further from it)."""
        decoder = self.decoder
        reads_padding = (not getattr(decoder, "self_attention_cache", None)
                         or "target_mask" in getattr(decoder, "STATE_ROWS", {}))
        return callable(getattr(decoder, "join", None)) and reads_padding and not self.prefix

    @torch.inference_mode()
    def merge(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Backend.merge for sources given to set_sources since the running rows' prefill: those sources are
        encoded and their start tokens decoded alone, then their state joins the running rows' (the decoder's
        `join`), so no running row is computed again. ValueError where `joins_rows` is False."""
        if self.state is None:
            return self.prefill(input_ids, attention_mask)
        if not self.joins_rows:
            raise ValueError(f"{type(self.decoder).__name__} cannot take rows into a running batch"
                             + (" after a prefix" if self.prefix else " (it has no join)"))
        joining = copy.copy(self)  # the model and prefix, with a state of its own after its prefill
        logits = joining.prefill(input_ids, attention_mask)
        self.state = self.decoder.join(self.state, joining.state)
        # Distinct source numbers, so a reorder among one source's rows (beams) is still told from any other.
        self.row_sources = np.concatenate([self.row_sources, joining.row_sources + self.row_sources.max(initial=-1) + 1])
        return logits

    @staticmethod
    def _to_host(logits: torch.Tensor) -> np.ndarray:
        return logits.to(device="cpu", dtype=torch.float32, copy=True).numpy()


def _empty_encoding(encoder, device, dtype):
    """An EncoderOutput of one source position, to read the shapes of a decoder's state off start()."""
    from lmkit.contract import EncoderOutput

    states = torch.zeros(1, 1, encoder.d_model, device=device, dtype=dtype)
    return EncoderOutput(states, torch.ones(1, 1, dtype=torch.bool, device=device))
