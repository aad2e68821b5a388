"""The output layer of a model whose output embedding is its input embedding (GPT-2, BERT, T5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class TiedOutputProjection:
    """logits = h @ embedding.T, for a (vocab, d_model) embedding matrix.

    On the CPU, a product with only a few rows (decoding a token at a time) runs about twice as
    fast against a contiguous (d_model, vocab) copy as against the embedding itself: MKL's
    matrix-vector kernel streams that layout better (2 threads: 6.4 against 12.5 ms for GPT-2's
    50257 x 768). So under inference mode one transposed copy is kept, and made again whenever the
    embedding changes; training, bigger batches and GPUs use the embedding as it is. It is a plain
    object, not a Module, so the copy is never part of the state dict.

    "Changes" is told by the embedding's version counter, which in-place writes (an optimizer step,
    load_state_dict) bump. A model built or loaded under torch.inference_mode() has inference
    tensors for parameters, which have no version counter (reading `_version` raises) and can be
    written in place unseen, so for them no copy is kept and the embedding is used as it is.
    """

    FEW_ROWS = 16

    def __init__(self):
        self._copy: Tensor | None = None
        self._made_from: tuple | None = None

    def __call__(self, h: Tensor, embedding: Tensor) -> Tensor:
        rows = h.numel() // h.size(-1)
        if (h.device.type != "cpu" or rows > self.FEW_ROWS or not torch.is_inference_mode_enabled()
                or embedding.is_inference()):
            return F.linear(h, embedding)
        source = (embedding.data_ptr(), embedding._version, embedding.dtype)
        if source != self._made_from:
            self._copy, self._made_from = embedding.detach().t().contiguous(), source
        # As one 2-D product: a (B, 1, C) @ (C, V) matmul runs as a batch of B products, 2x slower at B = 8.
        return (h.reshape(rows, h.size(-1)) @ self._copy).view(*h.shape[:-1], -1)
