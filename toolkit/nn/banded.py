"""Locally banded causal self-attention (Sparse Transformer's 'local' pattern) and its windowed cache.

Query i attends keys j with i - w < j <= i: itself and the w - 1 positions before it (w, the band
width, counts the query itself, as in openai/sparse_attention and GPT-Neo's window_size). A dense
mask on the full (T, T) score matrix would give the same numbers at O(T^2) cost; here only the band
is computed. The queries are cut into blocks of w, and block b attends a chunk of 2w keys, the block
before it and its own, so SDPA runs on (nblocks, w, 2w) scores: O(T * w) time and memory. The blocks
go into SDPA's batch axis (B * nblocks, nh, w, hs): 4-D inputs take its fused kernels, which on
the CPU measured about 3x faster than the same work as 5-D tensors.

    keys     | window (w) | block 0 (w) | block 1 (w) | ...      the window: the w positions before
    block 0  |<------ chunk 0 -------->|                         the first query (from the cache,
    block 1               |<------ chunk 1 -------->|            or nothing at all)

In every chunk, query r of the block (r = 0..block-1) sits at key offset r + w, so the band is the
same small mask for every block: r < c <= r + w. Which keys exist (the window of a short past,
padding) is the only thing that differs from chunk to chunk.

A banded layer never looks further back than w - 1 positions, so during generation its cache keeps
only the last w positions (`BandedKVCache`): memory per layer stays flat however long the text.

The band is also an option of bidirectional encoders (BERT's `band_width`): there query i attends
keys j with |i - j| < w, itself and the w - 1 positions on each side (the causal band is its left
half). Blocked the same way, query block b attends key blocks b - 1, b and b + 1, a chunk of 3w keys:
(nblocks, w, 3w) scores (`symmetric_band_mask`, `symmetric_banded_attention`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import SelfAttention
from .cache import KVCache


def band_attention_mask(padding: Tensor | None, T: int, past: int, band_width: int, *,
                        device: torch.device | None = None) -> Tensor | None:
    """The mask of a banded layer for T new queries after `past` positions, or None if it needs none.

    padding: (B, past + T) bool, True for real tokens, or None.
    Returns (B or 1, nblocks, 1, block, band_width + block) bool: for each block of queries, which keys
    of its chunk (see the module docstring) it attends, the same for every head. block is band_width
    when T > band_width (the blocked form, O(T * w)), else T (one block: the queries and the w
    positions before them).
    None means "plain causal attention over the T new positions": nothing before them, no padding,
    and T <= band_width, so the band covers every key causal attention would see.
    """
    w = band_width
    exporting = torch.compiler.is_exporting()
    if not exporting and padding is None and past == 0 and T <= w:
        return None
    # Under torch.export, T is symbolic and cannot choose a branch: the one-block form is right for
    # every T (it costs O(T * (w + T)), which for a decoding step, T = 1, is O(w)).
    if exporting or T <= w:
        block, nblocks = T, 1
    else:
        block, nblocks = w, -(-T // w)
    keys = w + nblocks * block  # the window, then the new positions padded to whole blocks
    if padding is not None:
        device = padding.device
        B = padding.size(0)
        # Keys before position 0 (a past shorter than the window) and after the end do not exist.
        padded = torch.cat([padding.new_zeros(B, w), padding.bool(),
                            padding.new_zeros(B, nblocks * block - T)], dim=1)  # (B, w + past + nblocks*block)
        exists = padded[:, padded.size(1) - keys:]  # (B, keys)
    else:
        position = torch.arange(keys, device=device) + (past - w)  # absolute position of each key slot
        exists = (position >= 0)[None]  # (1, keys)
    if nblocks == 1:
        exists = exists[:, None]  # (B|1, 1, w + T)
    else:  # chunk b: blocks b and b + 1 of the keys (block 0 is the window)
        blocked = exists.unflatten(1, (nblocks + 1, w))
        exists = torch.cat([blocked[:, :-1], blocked[:, 1:]], dim=2)  # (B|1, nblocks, 2w)
    # Query r of a block sits at key offset r + w of its chunk and sees offsets c with r < c <= r + w
    # (i - w < j <= i): the diagonals 1 to w of a (block, w + block) matrix.
    ones = torch.ones(block, w + block, dtype=torch.bool, device=device)
    band = ones.triu(1) & ones.tril(w)
    itself = ones.triu(w) & ones.tril(w)  # c == r + w
    # A query always sees itself: a padding query would otherwise see nothing, and SDPA's NaN for such
    # a row would spread to later layers. Real queries never see padding.
    return (band & exists[:, :, None, None, :]) | itself  # (B|1, nblocks, 1, block, w + block)


def into_blocks(x: Tensor, out: Tensor) -> None:
    """Copy x (B, nh, T, hs) into out (B, nblocks, nh, block, hs), block after block: one copy, no padding step.

    Slots of out past position T are set to zero.
    """
    B, nh, T, hs = x.shape
    block = out.size(3)
    full = T // block  # blocks x fills completely
    out[:, :full] = x[:, :, :full * block].unflatten(2, (full, block)).transpose(1, 2)
    if T % block:
        out[:, full, :, :T % block] = x[:, :, full * block:]
        out[:, full, :, T % block:] = 0  # past the end: masked, but it must not be NaN


def banded_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, band_width: int,
                     dropout_p: float = 0.0) -> Tensor:
    """Banded causal attention of T queries: (B, nh, T, hs).

    q: (B, nh, T, hs). k, v: (B, nh, S, hs), the queries' own keys and values, preceded when S = w + T
    by the band_width positions before them (the window; slots of positions that do not exist may
    hold anything finite). mask: from `band_attention_mask`.
    """
    B, nh, T, hs = q.shape
    w = band_width
    if mask is None:  # the band covers everything: dense causal attention, SDPA's fastest kernel
        k, v = k[:, :, k.size(2) - T:], v[:, :, v.size(2) - T:]
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=T > 1)
    nblocks = mask.size(1)
    if nblocks == 1:  # one block: the queries against the window and themselves, (T, w + T) scores
        if k.size(2) == T:  # no window given: nothing before the queries, which the mask leaves unread
            k, v = (F.pad(t, (0, 0, w, 0)) for t in (k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, 0], dropout_p=dropout_p)
    # Blocks of w. Chunk b holds block b - 1 of the keys (the window for b = 0), then block b. Zeros
    # where no position is (a missing window, past the end): masked, but they must not be NaN.
    q_blocks = q.new_empty(B, nblocks, nh, w, hs)
    into_blocks(q, q_blocks)
    chunked = []
    for t in (k, v):
        chunk = t.new_empty(B, nblocks, nh, 2 * w, hs)
        into_blocks(t[:, :, t.size(2) - T:], chunk[:, :, :, w:])
        chunk[:, 1:, :, :w] = chunk[:, :-1, :, w:]
        chunk[:, 0, :, :w] = t[:, :, :w] if t.size(2) > T else 0
        chunked.append(chunk.view(B * nblocks, nh, 2 * w, hs))
    # The blocks go into SDPA's batch axis: (B * nblocks, nh, w, hs) queries, (B * nblocks, nh, 2w, hs) keys.
    mask = mask.expand(B, -1, -1, -1, -1).reshape(B * nblocks, 1, w, 2 * w)
    y = F.scaled_dot_product_attention(q_blocks.view(B * nblocks, nh, w, hs), *chunked, attn_mask=mask,
                                       dropout_p=dropout_p)  # (B * nblocks, nh, w, hs)
    del q_blocks, chunked
    # Back to positions in one copy, (B, nblocks * w, nh, hs), returned as a (B, nh, T, hs) view.
    y = y.view(B, nblocks, nh, w, hs).transpose(2, 3).reshape(B, nblocks * w, nh, hs)
    return y[:, :T].transpose(1, 2)


def symmetric_band_mask(padding: Tensor | None, T: int, band_width: int, *,
                        device: torch.device | None = None) -> Tensor | None:
    """The mask of a bidirectional banded layer over T positions, or None if it needs none.

    padding: (B, T) bool, True for real tokens, or None.
    Returns (B or 1, nblocks, 1, block, keys) bool. T > band_width: blocks of w queries, each against
    a chunk of 3w keys (key blocks b - 1, b, b + 1; query r of block b sits at key offset r + w and
    sees offsets c with r < c < r + 2w). T <= band_width: one block of T queries against the T keys
    (the band covers them all, so only padding is masked). Under torch.export, where T cannot choose
    a branch, always the one block with the band as a mask on the (T, T) scores, right for every T.
    None means "dense bidirectional attention": no padding and T <= band_width.
    """
    w = band_width
    exporting = torch.compiler.is_exporting()
    if padding is not None:
        device = padding.device
        padding = padding.bool()
    if exporting or T <= w:
        if not exporting and padding is None:
            return None
        position = torch.arange(T, device=device)
        band = (position[:, None] - position[None, :]).abs() < w  # (T, T)
        exists = band[None, None, None] if padding is None else band & padding[:, None, None, None, :]
        return exists | torch.eye(T, dtype=torch.bool, device=device)  # (B|1, 1, 1, T, T)
    nblocks = -(-T // w)
    keys = (nblocks + 2) * w  # a block of nothing on each side, then the positions padded to whole blocks
    if padding is not None:
        B = padding.size(0)
        exists = torch.cat([padding.new_zeros(B, w), padding, padding.new_zeros(B, keys - w - T)], dim=1)
    else:
        position = torch.arange(keys, device=device) - w
        exists = ((position >= 0) & (position < T))[None]  # (1, keys)
    blocked = exists.unflatten(1, (nblocks + 2, w))
    exists = torch.cat([blocked[:, :-2], blocked[:, 1:-1], blocked[:, 2:]], dim=2)  # (B|1, nblocks, 3w)
    ones = torch.ones(w, 3 * w, dtype=torch.bool, device=device)
    band = ones.triu(1) & ones.tril(2 * w - 1)  # r < c < r + 2w
    itself = ones.triu(w) & ones.tril(w)  # c == r + w: a padding query sees itself, so it is not NaN
    return (band & exists[:, :, None, None, :]) | itself  # (B|1, nblocks, 1, w, 3w)


def symmetric_banded_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, band_width: int,
                               dropout_p: float = 0.0) -> Tensor:
    """Bidirectional banded attention of T queries over their own T keys: (B, nh, T, hs).

    mask: from `symmetric_band_mask`. O(T * w): blocks of w queries against chunks of 3w keys.
    """
    B, nh, T, hs = q.shape
    w = band_width
    if mask is None:  # the band covers everything: dense attention
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    nblocks = mask.size(1)
    if nblocks == 1:  # one block (the blocked form has two or more): the band as a mask on the (T, T) scores
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, 0], dropout_p=dropout_p)
    q_blocks = q.new_empty(B, nblocks, nh, w, hs)
    into_blocks(q, q_blocks)
    chunked = []
    for t in (k, v):
        blocks = t.new_zeros(B, nblocks + 2, nh, w, hs)  # zero blocks before the first and after the last
        into_blocks(t, blocks[:, 1:-1])
        chunk = torch.cat([blocks[:, :-2], blocks[:, 1:-1], blocks[:, 2:]], dim=3)  # (B, nblocks, nh, 3w, hs)
        chunked.append(chunk.view(B * nblocks, nh, 3 * w, hs))
    mask = mask.expand(B, -1, -1, -1, -1).reshape(B * nblocks, 1, w, 3 * w)
    y = F.scaled_dot_product_attention(q_blocks.view(B * nblocks, nh, w, hs), *chunked, attn_mask=mask,
                                       dropout_p=dropout_p)  # (B * nblocks, nh, w, hs)
    y = y.view(B, nblocks, nh, w, hs).transpose(2, 3).reshape(B, nblocks * w, nh, hs)
    return y[:, :T].transpose(1, 2)


class BandedSelfAttention(SelfAttention):
    """Self-attention over a band of `band_width` positions; same weights as SelfAttention.

    causal (GPT-3): query i attends i - w < j <= i; mask from `band_attention_mask` (not
    `self_attention_mask`). With a cache, `cache.update` must return the band_width positions before
    the new ones and then theirs (BandedKVCache does).
    causal=False (a banded encoder): query i attends |i - j| < w; mask from `symmetric_band_mask`.
    """

    def __init__(self, d_model: int, n_heads: int, band_width: int, *, causal: bool = True, bias: bool = True,
                 dropout: float = 0.0):
        super().__init__(d_model, n_heads, causal=causal, bias=bias, dropout=dropout)
        if band_width < 1:
            raise ValueError(f"band_width must be a positive integer, got {band_width}")
        self.band_width = band_width

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: KVCache | BandedKVCache | None = None,
                layer: int = 0) -> Tensor:
        """x: (B, T, C) -> (B, T, C); `layer` is this layer's slot in `cache`."""
        q, k, v = self.heads(x)  # 3 x (B, nh, T, hs)
        dropout = self.dropout if self.training else 0.0
        if not self.causal:
            return self.output(symmetric_banded_attention(q, k, v, mask, self.band_width, dropout))
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, w + T, hs): the window, then the new positions
        y = banded_attention(q, k, v, mask, self.band_width, dropout)
        return self.output(y)  # (B, T, C)


class BandedKVCache:
    """The key/value cache of a stack where some layers are banded: those keep only a window.

    Dense layers keep every position, in a KVCache of max_len. A banded layer keeps the last
    band_width positions, oldest first (slot s holds position length - w + s; slots before position 0
    hold zeros and are masked), so its memory does not grow with the text. `update` on a banded layer
    returns the window followed by the new positions, which is what BandedSelfAttention reads.

    Same interface as KVCache: length, batch_size, max_len, update/advance, crop, reorder.
    """

    def __init__(self, banded: Sequence[bool], batch_size: int, n_heads: int, max_len: int, head_dim: int,
                 band_width: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self.band_width = band_width
        # Each layer's index into the storage of its kind.
        self.slot = [sum(1 for earlier in banded[:layer] if earlier == kind) for layer, kind in enumerate(banded)]
        self.banded = list(banded)
        self.dense = KVCache(self.banded.count(False), batch_size, n_heads, max_len, head_dim,
                             device=device, dtype=dtype)
        shape = (self.banded.count(True), batch_size, n_heads, band_width, head_dim)
        # Zeros, not empty: slots of positions before 0 are masked, but a NaN in them would still
        # turn into NaN through the zero attention weight.
        self.window_keys = torch.zeros(shape, device=device, dtype=dtype)  # (Lb, B, nh, w, hs)
        self.window_values = torch.zeros(shape, device=device, dtype=dtype)  # (Lb, B, nh, w, hs)
        self.length = 0
        self.prefix_length = 0  # how many positions a prefix filled (start_from)

    @property
    def batch_size(self) -> int:
        return self.window_keys.size(1)

    @property
    def geometry(self) -> tuple[int, int, int]:
        """(n_layers, n_heads, head_dim) of every layer, dense and banded alike: the shape of a prefix, less its length."""
        _, _, n_heads, _, head_dim = self.window_keys.shape
        return len(self.banded), n_heads, head_dim

    def start_from(self, keys: Tensor, values: Tensor) -> None:
        """Fill an empty cache with a prefix of P positions (lmkit.prefix), as if P tokens had been fed.

        keys, values: (n_layers, B or 1, nh, P, hs), every layer's. Dense layers keep all P positions; a
        banded layer keeps the last min(P, band_width) in its window, right-aligned, exactly what it would
        keep of P real tokens, so its later queries read the prefix only while it is within their band.
        """
        if self.length:
            raise ValueError(f"a prefix starts an empty cache, and this one holds {self.length} positions")
        dense = [layer for layer, banded in enumerate(self.banded) if not banded]
        self.dense.start_from(keys[dense], values[dense])
        P, w = keys.size(3), self.band_width
        kept = min(P, w)
        for layer, banded in enumerate(self.banded):
            if banded:
                slot = self.slot[layer]
                self.window_keys[slot, :, :, w - kept:] = keys[layer, :, :, P - kept:]
                self.window_values[slot, :, :, w - kept:] = values[layer, :, :, P - kept:]
        self.length = self.prefix_length = P

    @property
    def max_len(self) -> int:
        return self.dense.max_len

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the T new positions of `layer`, k, v: (B, nh, T, hs).

        Dense layer: its keys/values up to the new length, (B, nh, length + T, hs), as KVCache.
        Banded layer: the window before the new positions and then them, (B, nh, w + T, hs); the
        window keeps the last w of these.
        """
        if not self.banded[layer]:
            return self.dense.update(self.slot[layer], k, v)
        if self.length + k.size(2) > self.max_len:  # the dense layers' limit, so that all layers agree
            raise ValueError(f"the key/value cache holds {self.max_len} positions and {self.length} are used; "
                             f"{k.size(2)} more do not fit (make the cache with a larger max_len)")
        slot, w = self.slot[layer], self.band_width
        keys = torch.cat([self.window_keys[slot], k], dim=2)  # (B, nh, w + T, hs)
        values = torch.cat([self.window_values[slot], v], dim=2)
        self.window_keys[slot] = keys[:, :, -w:]
        self.window_values[slot] = values[:, :, -w:]
        return keys, values

    def advance(self, n: int) -> None:
        """Count `n` new positions as filled, once every layer has stored them."""
        self.length += n
        self.dense.advance(n)

    def crop(self, length: int) -> None:
        """Forget every position from `length` on.

        A banded layer's window has already dropped the positions before length - w, so cropping is
        possible only while nothing has left the window (length so far <= band_width); otherwise it
        raises ValueError (recompute from the tokens instead).
        """
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        drop = self.length - length
        if drop and self.length > self.band_width:
            raise ValueError(f"cannot crop a banded cache of length {self.length} to {length}: its banded "
                             f"layers keep only the last {self.band_width} positions, and those before "
                             f"{self.length - self.band_width} are gone")
        if drop:
            # Slide the window right by `drop`: slot s now holds what slot s - drop held.
            for window in (self.window_keys, self.window_values):
                window[:, :, :, drop:] = window[:, :, :, :-drop].clone()
                window[:, :, :, :drop] = 0
        self.dense.crop(length)
        self.length = length

    def merge(self, other: BandedKVCache, max_len: int) -> BandedKVCache:
        """This cache's rows, then `other`'s (lmkit.contract.Cache.merge). A window holds the last band_width
        positions of its rows, and right alignment keeps each row's last positions last, so the windows
        join as they are; the dense layers join as KVCache.merge."""
        if other.banded != self.banded or other.band_width != self.band_width:
            raise ValueError("banded caches join only with caches of the same layers and band width")
        _, B, nh, w, hs = self.window_keys.shape
        merged = BandedKVCache(self.banded, B + other.batch_size, nh, max_len, hs, w,
                               device=self.window_keys.device, dtype=self.window_keys.dtype)
        merged.dense = self.dense.merge(other.dense, max_len)
        merged.window_keys = torch.cat([self.window_keys, other.window_keys], dim=1)
        merged.window_values = torch.cat([self.window_values, other.window_values], dim=1)
        merged.length = max(self.length, other.length)
        return merged

    def reorder(self, rows: Tensor) -> None:
        """Make row i hold what row rows[i] held, in every layer (beam search); rows: (B',) LongTensor."""
        rows = rows.to(self.window_keys.device)
        self.dense.reorder(rows)
        # The windows are small (w positions), so a gather into new tensors is as good as in place.
        self.window_keys = self.window_keys.index_select(1, rows)
        self.window_values = self.window_values.index_select(1, rows)
