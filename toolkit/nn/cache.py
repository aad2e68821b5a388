"""A preallocated key/value cache for autoregressive decoding.

Keys and values of all layers live in two tensors allocated once, so a decoding step writes into
them in place instead of growing them with torch.cat (which copies the whole past every token).
"""
from __future__ import annotations

import torch
from torch import Tensor


def grow(past: Tensor, n: int, dim: int) -> Tensor:
    """`past` with n more positions along `dim`: (..., P, ...) -> (..., P + n, ...), the first P holding
    past's values and the last n unset, for the caller to write (a decoder's self-attention keys).

    torch.cat would copy every earlier position at every step. Instead the result is a view of a buffer
    with spare positions (doubling when full), and growing that view again fills the buffer in place.
    It does so only while nobody else has grown the same past: continuing one state twice (two
    candidates after one prefix) gives the second a copy, so neither overwrites the other's positions.
    Beam search's reorder (index_select) makes new tensors, which the next step copies once.
    """
    P = past.size(dim)
    base = getattr(past, "_lmkit_buffer", None)
    if base is None or base._lmkit_filled != P or base.size(dim) < P + n:
        shape = list(past.shape)
        shape[dim] = max(2 * (P + n), 16)
        base = past.new_empty(shape)
        base.narrow(dim, 0, P).copy_(past)
        base._lmkit_dim = dim
    base._lmkit_filled = P + n
    return _front(base, dim, P + n)


def select_rows(past: Tensor, dim: int, rows: Tensor) -> Tensor:
    """past.index_select(dim, rows), keeping the room a tensor from `grow` has for positions to come.

    The filled positions are copied row by row into a new buffer of the same size: gathering them in one
    index_select is a strided copy, and gathering the whole buffer copies its empty half too (T5-small,
    32 beams at 33 of 68 positions: 838 us row by row, 2044 strided, 3249 whole). Any other tensor is
    index_select'ed as it is.
    """
    base = getattr(past, "_lmkit_buffer", None)
    if base is None:
        return past.index_select(dim, rows)
    along, P = base._lmkit_dim, past.size(base._lmkit_dim)
    shape = list(base.shape)
    shape[dim] = rows.numel()
    selected = base.new_empty(shape)
    front = selected.narrow(along, 0, P)
    for row, source in enumerate(rows.tolist()):
        front.select(dim, row).copy_(past.select(dim, source))
    selected._lmkit_filled, selected._lmkit_dim = P, along
    return _front(selected, along, P)


def reorder_rows(past: Tensor, dim: int, rows: Tensor) -> Tensor:
    """select_rows(past, dim, rows) for a caller that drops `past`: as many rows as it has, in place.

    Beam search keeps most beams where they are, so only the rows whose source moved are copied, each
    taken out first (one row may be another's source). T5-small, 4 beams of 8 rows: the decoder's cache
    copied at every step cost about a sixth of the step. Anything else goes through select_rows.
    """
    base = getattr(past, "_lmkit_buffer", None)
    if base is None or rows.numel() != past.size(dim):
        return select_rows(past, dim, rows)
    sources = rows.tolist()
    copy_rows_in_place(past, dim, sources, [row for row, source in enumerate(sources) if source != row])
    return past


def copy_rows_in_place(filled: Tensor, dim: int, sources: list[int], moved: list[int]) -> None:
    """Make each moved row of `filled` (along `dim`) hold what row sources[row] held, copying those rows only.

    Straight in where no moved row is another's source (a backend's relabelled beams); else the sources
    are read out first, so a row is not overwritten before it is read. Row by row rather than one
    index_select: each row's positions lie together, so every copy streams (gpt-mini, 8 beams at 48 of 80
    positions: 215 us against 648 for a gather of the filled part).
    """
    read = {sources[row] for row in moved}
    taken = {} if read.isdisjoint(moved) else {source: filled.select(dim, source).clone() for source in read}
    for row in moved:
        source = sources[row]
        filled.select(dim, row).copy_(taken[source] if taken else filled.select(dim, source))


def _front(base: Tensor, dim: int, length: int) -> Tensor:
    """The first `length` positions of a buffer along `dim`, a view that knows its buffer (grow, select_rows)."""
    front = base.narrow(dim, 0, length)
    front._lmkit_buffer = base  # an attribute: under inference mode a view does not know its base
    return front


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
        self._views_of: Tensor | None = None  # the keys buffer whose per-layer views _views holds
        self._views: list[tuple[Tensor, Tensor]] = []

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
        keys, values = self._layer(layer)
        keys.narrow(2, start, end - start).copy_(k)
        values.narrow(2, start, end - start).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def _layer(self, layer: int) -> tuple[Tensor, Tensor]:
        """Layer `layer`'s keys and values, (B, nh, max_len, hs) views, made once per buffer: indexing the
        5-d buffers anew in every update cost a GPT-2 decoding step 5% (gpt-mini, one token)."""
        if self._views_of is not self.keys:
            self._views = [(self.keys[i], self.values[i]) for i in range(self.keys.size(0))]
            self._views_of = self.keys
        return self._views[layer]

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

        rows: (B',) LongTensor. With B' == batch_size only the filled positions move, row by row (each
        row's positions of one layer and head lie together, so every copy streams): nothing when no row
        moves; in place, the moved rows alone, when no moved row is another's source or fewer than half
        move; else every row into a second buffer, which becomes the cache (the old one is the next
        reorder's spare). Another B' (e.g. expanding each prompt into its beams after the prefill)
        reallocates the cache.
        """
        if rows.numel() != self.batch_size:
            rows = rows.to(self.keys.device)
            self.keys = self.keys.index_select(1, rows)
            self.values = self.values.index_select(1, rows)
            self._spare = None
            return
        sources = rows.tolist()
        moved = [row for row, source in enumerate(sources) if source != row]
        if not moved:
            return  # every beam kept its own row
        n = self.length
        # Row by row (copy_rows_in_place); a gather of the whole buffer would move the empty positions too
        # (467 us against 215 for 8 beams at 48 of 80 positions).
        if {sources[row] for row in moved}.isdisjoint(moved) or 2 * len(moved) < self.batch_size:
            for cache in (self.keys, self.values):
                copy_rows_in_place(cache.narrow(3, 0, n), 1, sources, moved)
            return
        if self._spare is None:
            self._spare = (torch.empty_like(self.keys), torch.empty_like(self.values))
        for cache, into in zip((self.keys, self.values), self._spare):
            for row, source in enumerate(sources):
                into[:, row, :, :n].copy_(cache[:, source, :, :n])
        self._spare, (self.keys, self.values) = (self.keys, self.values), self._spare
