"""The PyTorch backend: any lmkit decoder, its key/value cache kept on its device.

The decoder needs `forward(input_ids (B, T), cache, attention_mask (B, past + T) | None,
position_ids (B, T) | None) -> logits (B, T, V)`, `new_cache(batch_size, max_len)` returning a cache
with `reorder(rows)`, and `max_positions`, its context length or None (lmkit.contract.CausalDecoder). Per step, the new tokens
(and the rows to keep) go to the device and the logits come back: nothing else crosses.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .common import drop_padding_columns


class TorchBackend:
    """Runs `decoder` for a decoding strategy; see lmkit.decoding.backend.Backend for the contract.

    max_new_tokens sizes the cache: prompt length + max_new_tokens positions, allocated once per prefill.
    The tokens fed so far are kept on the host too, (B, capacity), so that when the cache is full at
    the model's context and rows are still going (a short prompt that outlived a long one), the
    padding they share can be dropped and their cache recomputed without it (see Backend.step).

    prefix: a lmkit.prefix.CachePrefix every row's cache starts from (its P positions come before
    the prompt, whose tokens then sit at positions P, P+1, ...), or None. It needs a decoder whose
    cache is a lmkit.nn.KVCache or BandedKVCache of its geometry; max_length is then the context less P.
    Positions the caller gives (a Generator's, GLM's) are its own and already count the prefix.
    """

    def __init__(self, decoder: nn.Module, max_new_tokens: int, device: torch.device | str | None = None,
                 prefix=None):
        if device is None:
            device = next(decoder.parameters()).device
        self.device = torch.device(device)
        self.decoder = decoder.to(self.device).eval()  # dropout would make every run different
        self.max_new_tokens = max_new_tokens
        self.max_length = decoder.max_positions
        self.prefix_length = 0
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None  # keys, values (L, 1, nh, P, hs)
        if prefix is not None:
            self._take_prefix(prefix)
        self.cache = None
        self.slots: np.ndarray | None = None  # row -> the cache row holding its past, after beams relabelled; None: the same
        self.capacity = 0  # positions the cache holds
        # With padding, the mask of everything fed so far (B, capacity) and each row's last position
        # (B,); without, both stay None so the decoder takes its fast unmasked path.
        self.attention_mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.length = 0  # positions fed so far, padding included
        self.fed: np.ndarray | None = None  # int64 (B, capacity): the tokens fed so far, on the host
        self.fed_mask: np.ndarray | None = None  # bool (B, capacity): False at padding
        # With positions the model supplies: those fed so far (B, [K,] capacity) and what a new token adds (K,).
        self.fed_positions: np.ndarray | None = None
        self.step_positions: torch.Tensor | None = None
        self.step_host: np.ndarray | None = None

    @torch.inference_mode()
    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray | None = None,
                position_step: np.ndarray | None = None) -> np.ndarray:
        B, T = input_ids.shape
        capacity = T + self.max_new_tokens
        if self.max_length is not None:
            capacity = min(capacity, self.max_length)
        P = self.prefix_length
        self.cache, self.capacity = self.decoder.new_cache(B, capacity + P), capacity
        self.slots = None
        if self.prefix is not None:
            self.cache.start_from(*self.prefix)
        self.length = T
        self.fed = np.zeros((B, capacity), dtype=np.int64)
        self.fed_mask = np.zeros((B, capacity), dtype=np.bool_)
        self.fed[:, :T], self.fed_mask[:, :T] = input_ids, attention_mask
        ids = torch.from_numpy(input_ids).to(self.device)
        mask = positions = self.attention_mask = self.positions = None
        self.fed_positions = self.step_positions = None
        if not attention_mask.all():
            mask = torch.from_numpy(attention_mask).to(self.device)
            # The prefix's columns come first and are never padding.
            self.attention_mask = torch.zeros(B, P + capacity, dtype=torch.bool, device=self.device)
            self.attention_mask[:, :P] = True
            self.attention_mask[:, P:P + T] = mask
            if position_ids is None:
                # As transformers does for left padding: every row's first real token is at position 0
                # (at P after a prefix).
                positions = P + (mask.cumsum(1) - 1).clamp(min=0)
                self.positions = positions[:, -1]
            mask = self.attention_mask[:, :P + T]
        if position_ids is not None:  # the model's own positions; kept on the host too, for a restart
            self.fed_positions = np.zeros((*position_ids.shape[:-1], capacity), dtype=np.int64)
            self.fed_positions[..., :T] = position_ids
            step = np.ones(position_ids.shape[1:-1], dtype=np.int64) if position_step is None else position_step
            self.step_host = np.asarray(step, dtype=np.int64)
            self.step_positions = torch.from_numpy(self.step_host).to(self.device)
            positions = torch.from_numpy(position_ids).to(self.device)
            self.positions = positions[..., -1]  # (B,) or (B, K)
        hidden_states = self.decoder.hidden_states(ids, self.cache, attention_mask=mask, position_ids=positions)
        # Only the last position's logits are read: the head (D x vocab per position, the largest matmul
        # of a small model) runs on that one alone.
        return self._to_host(self.decoder.logits(hidden_states[:, -1:])[:, -1])

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is not None:
            self.fed, self.fed_mask = self.fed[rows], self.fed_mask[rows]
            if self.fed_positions is not None:
                self.fed_positions = self.fed_positions[rows]
        if self.length == self.capacity:
            return self._restart_without_shared_padding(tokens)
        self.fed[:, self.length], self.fed_mask[:, self.length] = tokens, True
        if rows is not None:
            self._reorder_rows(rows)
        if self.slots is not None:  # the model sees its rows in the cache's order
            tokens = _scatter(tokens, self.slots)
        ids = torch.from_numpy(tokens).to(self.device)[:, None]  # (B', 1)
        mask = position_ids = None
        if self.positions is not None:
            self.positions = self.positions + (1 if self.step_positions is None else self.step_positions)
            position_ids = self.positions[..., None]  # (B', 1) or (B', K, 1)
            if self.fed_positions is not None:
                self.fed_positions[..., self.length] = self.fed_positions[..., self.length - 1] + self.step_host
        if self.attention_mask is not None:
            end = self.prefix_length + self.length
            self.attention_mask[:, end] = True
            mask = self.attention_mask[:, :end + 1]
        logits = self.decoder(ids, self.cache, attention_mask=mask, position_ids=position_ids)
        self.length += 1
        logits = self._to_host(logits[:, -1])
        return logits if self.slots is None else logits[self.slots]

    def _reorder_rows(self, rows: np.ndarray) -> None:
        """Row i continues row rows[i]: beam search's kept beams, or the rows still going.

        Beams are relabelled rather than moved. The cache's rows stay where they are, `slots` says which
        cache row holds each row's past, and only a beam whose parent another beam already continues
        gets a copy, into a row no beam continues any more: for 8 beams of gpt-mini, 4.2 rows copied a
        step on average where a reorder moved 6.2 (and, over half, copied all 8). A change of batch size
        (beams expanding after the prefill, rows finishing) reorders the cache into row order.
        """
        before = self.slots if self.slots is not None else np.arange(self.cache.batch_size)
        parents = before[rows]  # the cache row each row continues
        if len(rows) == len(before):
            first = np.zeros(len(rows), dtype=np.bool_)
            first[np.unique(parents, return_index=True)[1]] = True
            slots = np.empty_like(parents)
            slots[first] = parents[first]  # a parent's first child stays in its row
            slots[~first] = np.setdiff1d(before, parents[first])  # the others, into rows nobody continues
            order = _scatter(parents, slots)  # cache row j takes what row order[j] held
            self.slots = None if np.array_equal(slots, np.arange(len(slots))) else slots
        else:
            order, self.slots = parents, None
        if not (np.array_equal(order, np.arange(len(order))) and len(order) == self.cache.batch_size):
            self._take_cache_rows(order)

    def _in_row_order(self) -> None:
        """Move the cache's rows back into row order (before rows join it: Backend.merge)."""
        if self.slots is not None:
            slots, self.slots = self.slots, None
            self._take_cache_rows(slots)

    def _take_cache_rows(self, order: np.ndarray) -> None:
        """Cache row j (and its mask and position) becomes what row order[j] held."""
        order = torch.from_numpy(order).to(self.device)
        self.cache.reorder(order)
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask[order]
        if self.positions is not None:
            self.positions = self.positions[order]

    @torch.inference_mode()
    def merge(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Backend.merge: prefill the new rows in a cache of their own, then join it to the running rows'
        (lmkit.contract.Cache.merge), right-aligned, so that the running rows are not computed again."""
        if self.cache is None:
            return self.prefill(input_ids, attention_mask)
        if self.fed_positions is not None:
            raise ValueError("rows join a batch whose positions are counted from the mask; this one was "
                             "prefilled with the model's own position_ids")
        self._in_row_order()
        joining = copy.copy(self)  # the decoder and prefix, with a batch state of its own after its prefill
        logits = joining.prefill(input_ids, attention_mask)
        self._append_rows(joining)
        return logits

    def _append_rows(self, other: TorchBackend) -> None:
        """Take `other`'s rows after this backend's own: cache, masks, positions and the tokens fed so far."""
        P, width = self.prefix_length, max(self.length, other.length)
        capacity = width + self.max_new_tokens
        if self.max_length is not None:
            capacity = min(capacity, self.max_length)
        sides = (self, other)
        self.cache = self.cache.merge(other.cache, P + capacity)
        fed = np.zeros((sum(len(side.fed) for side in sides), capacity), dtype=np.int64)
        fed_mask = np.zeros(fed.shape, dtype=np.bool_)
        if self.attention_mask is not None or other.attention_mask is not None or self.length != other.length:
            # Padding somewhere: every row's mask (the prefix's columns shifted with the rest) and its last position.
            mask = torch.zeros(len(fed), P + capacity, dtype=torch.bool, device=self.device)
            positions, row = [], 0
            for side in sides:
                B, end, start = len(side.fed), P + width, width - side.length
                mask[row:row + B, start:end] = (torch.ones(B, P + side.length, dtype=torch.bool, device=self.device)
                                                if side.attention_mask is None else
                                                side.attention_mask[:, :P + side.length])
                positions.append(side.positions if side.positions is not None else
                                 torch.full((B,), P + side.length - 1, dtype=torch.long, device=self.device))
                row += B
            self.attention_mask, self.positions = mask, torch.cat(positions)
        row = 0
        for side in sides:
            B, start = len(side.fed), width - side.length
            fed[row:row + B, start:width] = side.fed[:, :side.length]
            fed_mask[row:row + B, start:width] = side.fed_mask[:, :side.length]
            row += B
        self.fed, self.fed_mask, self.length, self.capacity = fed, fed_mask, width, capacity

    def _restart_without_shared_padding(self, tokens: np.ndarray) -> np.ndarray:
        """step() with a full cache: prefill the rows' tokens so far and `tokens` again, less their common padding."""
        if self.capacity != self.max_length:
            raise ValueError(f"this TorchBackend was made for max_new_tokens={self.max_new_tokens}, and its "
                             "cache is full; make it with the max_new_tokens of the strategy that uses it")
        ids = np.concatenate([self.fed, tokens[:, None]], axis=1)
        mask = np.concatenate([self.fed_mask, np.ones((len(tokens), 1), dtype=np.bool_)], axis=1)
        positions = step = None
        if self.fed_positions is not None:
            step = self.step_host
            last = self.fed_positions[..., -1:] + step[..., None]
            positions = np.concatenate([self.fed_positions, last], axis=-1)
            positions = positions[..., int(mask.any(axis=0).argmax()):]
        ids, mask = drop_padding_columns(ids, mask)
        if ids.shape[1] > self.max_length:
            raise ValueError(f"a row would pass the model's context of {self.max_length} positions; stop each "
                             "row at its own room (lmkit.decoding.common.new_token_rooms)")
        return self.prefill(ids, mask, positions, step)

    def _take_prefix(self, prefix) -> None:
        """Check `prefix` against the decoder's cache and keep its keys and values on the device."""
        from lmkit.errors import LmkitError
        from lmkit.nn import BandedKVCache, KVCache

        probe = self.decoder.new_cache(1, 1)
        if not isinstance(probe, (KVCache, BandedKVCache)):
            raise LmkitError(f"a prefix starts a key/value cache, and this decoder's cache is a {type(probe).__name__}; "
                             "prefixes work with attention decoders whose cache is keys/values (GPT, GPT-2, GPT-3, GLM)")
        n_layers, n_heads, head_dim = probe.geometry
        prefix.check_fits(n_layers, n_heads, head_dim, f"this {type(self.decoder).__name__}")
        self.prefix_length = prefix.length
        self.max_length = prefix.positions_left(self.max_length)
        dtype = next(self.decoder.parameters()).dtype  # the cache's
        kv = torch.from_numpy(prefix.keys_values).to(self.device, dtype)  # (L, 2, nh, P, hs)
        self.prefix = (kv[:, 0, None], kv[:, 1, None])  # each (L, 1, nh, P, hs)

    @staticmethod
    def _to_host(logits: torch.Tensor) -> np.ndarray:
        """float32 (B, V) on the host, in one copy (of its own, so it does not pin the full logits)."""
        return logits.to(device="cpu", dtype=torch.float32, copy=True).numpy()


def _scatter(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """out[index[i]] = values[i]: rows in their cache order, from rows in their own order."""
    out = np.empty_like(values)
    out[index] = values
    return out
