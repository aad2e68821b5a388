"""The output layer of a model whose output embedding is its input embedding (GPT-2, BERT, T5)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import onednn
from .layout import PackedCopy, weight_identity


class TiedOutputProjection:
    """logits = h @ embedding.T, for a (vocab, d_model) embedding matrix: (..., d_model) -> (..., vocab).

    On the CPU under inference mode, the product runs against a copy of the embedding that oneDNN has
    packed for its kernels (lmkit.nn.layout, which has the measurements: T5's 32128 x 512 head at one row
    1.6 against 6.1 ms, at 32 rows 5.4 against 14.2, read from memory as in a decoding step). Where torch
    has no oneDNN, up to 8 rows run against a contiguous (d_model, vocab) copy and 9 to 64 as the tall
    product (embedding @ h.T).T, the orders MKL streams fastest there; more rows use the embedding as it is.

    The copy is kept while the embedding is unchanged and made again when it changes (its version
    counter, which an optimizer step or load_state_dict bumps: lmkit.nn.layout.weight_identity); training,
    other devices, other dtypes and inference tensors (no version counter) use the embedding as it is
    (training's product through lmkit.nn.onednn.linear). It is a plain object, not a Module, so the copy
    is never part of the state dict.
    """

    FEW_ROWS = 8
    TALL_ROWS = 64

    def __init__(self):
        self._packed = PackedCopy()
        self._copy: Tensor | None = None  # without oneDNN: the contiguous (d_model, vocab) copy
        self._made_from: tuple | None = None

    def __call__(self, h: Tensor, embedding: Tensor) -> Tensor:
        product = self._packed.product(h, embedding)
        if product is not None:
            return product
        rows = h.numel() // h.size(-1)
        if (rows > self.TALL_ROWS or h.device.type != "cpu" or not torch.is_inference_mode_enabled()
                or embedding.is_inference() or h.dtype != embedding.dtype):
            return onednn.linear(h, embedding)  # training's products: F.linear's, in oneDNN on the CPU
        flat = h.reshape(rows, h.size(-1))  # as one 2-D product: a (B, 1, C) matmul runs as B products, 2x slower
        if rows <= self.FEW_ROWS:
            source = weight_identity(embedding)
            if source != self._made_from:
                self._copy, self._made_from = embedding.detach().t().contiguous(), source
            logits = flat @ self._copy
        else:
            logits = (embedding @ flat.t()).t()
        return logits.view(*h.shape[:-1], -1)
