"""A preallocated key/value cache for autoregressive decoding.

Keys and values of all layers live in two tensors allocated once, so a decoding step writes into
them in place instead of growing them with torch.cat (which copies the whole past every token).
"""
from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of every layer of one decoder, for `batch_size` rows and `max_len` positions.

    One forward pass writes the keys/values of its T new positions for each layer with
    `update(layer, k, v)`, all at offset `length`, and then calls `advance(T)` once.
    """

    def __init__(self, n_layers: int, batch_size: int, n_heads: int, max_len: int, head_dim: int,
                 *, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        shape = (n_layers, batch_size, n_heads, max_len, head_dim)
        # Positions past `length` are never read, so there is nothing to zero.
        self.keys = torch.empty(shape, device=device, dtype=dtype)  # (L, B, nh, max_len, hs)
        self.values = torch.empty(shape, device=device, dtype=dtype)  # (L, B, nh, max_len, hs)
        self.length = 0  # positions filled so far, the same for every layer and row
        self._spare: tuple[Tensor, Tensor] | None = None  # reorder's second buffer, made on first use
        self.prefix_length = 0  # how many of them a prefix filled (start_from); lmkit.contract.Cache

    @property
    def batch_size(self) -> int:
        return self.keys.size(1)

    @property
    def geometry(self) -> tuple[int, int, int]:
        """(n_layers, n_heads, head_dim): the shape of a prefix this cache starts from, less its length."""
        n_layers, _, n_heads, _, head_dim = self.keys.shape
        return n_layers, n_heads, head_dim

    @property
    def max_len(self) -> int:
        return self.keys.size(3)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new positions of `layer`; return its keys and values up to the new length.

        k, v: (B, nh, T, hs). Returns views, (B, nh, length + T, hs), that share the cache's memory.
        """
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(
                f"the key/value cache holds {self.max_len} positions and {start} are used; "
                f"{k.size(2)} more do not fit (make the cache with a larger max_len)"
            )
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def start_from(self, keys: Tensor, values: Tensor) -> None:
        """Fill the first P positions of an empty cache with a prefix's keys and values (lmkit.prefix).

        keys, values: (n_layers, B or 1, nh, P, hs), a batch of 1 standing for every row.
        """
        if self.length:
            raise ValueError(f"a prefix starts an empty cache, and this one holds {self.length} positions")
        P = keys.size(3)
        if P > self.max_len:
            raise ValueError(f"the prefix has {P} positions and the cache holds {self.max_len}")
        self.keys[:, :, :, :P] = keys
        self.values[:, :, :, :P] = values
        self.length = self.prefix_length = P

    def advance(self, n: int) -> None:
        """Count `n` new positions as filled, once every layer has stored them."""
        self.length += n

    def crop(self, length: int) -> None:
        """Forget every position from `length` on (e.g. tokens a draft model proposed)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        self.length = length

    def merge(self, other: KVCache, max_len: int) -> KVCache:
        """This cache's rows, then `other`'s, right-aligned in a new cache of max_len positions
        (lmkit.contract.Cache.merge): the columns before the shorter side's first position are zeros,
        not garbage, because a masked-out NaN would still turn the attention output into NaN."""
        L, B, nh, _, hs = self.keys.shape
        if other.keys.shape[::2] != self.keys.shape[::2]:
            raise ValueError(f"a cache of {tuple(other.keys.shape)} cannot join one of {tuple(self.keys.shape)}: "
                             "layers, heads and head size must agree")
        length = max(self.length, other.length)
        if length > max_len:
            raise ValueError(f"merged caches hold {length} positions, more than max_len {max_len}")
        merged = KVCache(L, B + other.batch_size, nh, max_len, hs, device=self.keys.device, dtype=self.keys.dtype)
        merged.keys.zero_()
        merged.values.zero_()
        rows = 0
        for cache in (self, other):
            end, n = rows + cache.batch_size, cache.length
            merged.keys[:, rows:end, :, length - n:length] = cache.keys[:, :, :, :n]
            merged.values[:, rows:end, :, length - n:length] = cache.values[:, :, :, :n]
            rows = end
        merged.length = length
        return merged

    def reorder(self, rows: Tensor) -> None:
        """Make row i hold what row rows[i] held, in every layer (beam search keeps the best beams).

        rows: (B',) LongTensor. With B' == batch_size, whichever moves least memory: nothing when no
        row moves; the moved rows alone when they are few; the filled positions when the cache is
        mostly empty; else a gather of the whole buffer into a second one, which becomes the cache
        (the old one is the next reorder's spare). Another B' (e.g. expanding each prompt into its
        beams after the prefill) reallocates the cache.
        """
        if rows.numel() != self.batch_size:
            rows = rows.to(self.keys.device)
            self.keys = self.keys.index_select(1, rows)
            self.values = self.values.index_select(1, rows)
            self._spare = None
            return
        on_host = rows.cpu()
        moved = torch.nonzero(on_host != torch.arange(self.batch_size)).flatten()
        if not len(moved):
            return  # every beam kept its own row
        if 3 * len(moved) < self.batch_size:
            # A few rows take another's past: copy those alone (their sources first, as a target may be a
            # source too). Cheaper than any whole gather below a third of the rows (gpt-mini, 8 beams).
            targets, sources = moved.to(self.keys.device), on_host[moved].to(self.keys.device)
            for cache in (self.keys, self.values):
                cache.index_copy_(1, targets, cache.index_select(1, sources))
            return
        rows = rows.to(self.keys.device)
        if 4 * self.length < self.max_len:
            # Mostly empty: gathering only the filled positions moves less, though strided.
            for cache in (self.keys, self.values):
                filled = cache[:, :, :, : self.length]  # (L, B, nh, length, hs)
                filled.copy_(filled.index_select(1, rows))
            return
        # A gather of the whole contiguous buffer into another streams at memory speed; the filled
        # part alone is a strided copy, measured 4x slower at full length (gpt-mini's cache, 8 beams).
        if self._spare is None:
            self._spare = (torch.empty_like(self.keys), torch.empty_like(self.values))
        keys, values = self._spare
        torch.index_select(self.keys, 1, rows, out=keys)
        torch.index_select(self.values, 1, rows, out=values)
        self._spare = (self.keys, self.values)
        self.keys, self.values = keys, values
