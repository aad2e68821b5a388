"""The output layer of a model whose output embedding is its input embedding (GPT-2, BERT, T5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class TiedOutputProjection:
    """logits = h @ embedding.T, for a (vocab, d_model) embedding matrix.

    On the CPU under inference mode, the product of a few rows (decoding a token at a time) is laid
    out for MKL, measured at 2 threads (benchmarks/bench_layout.py and the notes of issue #21):

    - up to 8 rows: against a contiguous (d_model, vocab) copy, which MKL's kernels stream faster
      than the embedding itself from 4 rows on (T5's 32128 x 512 at 8 rows: 2.5 against 4.6 ms;
      GPT-2's 50257 x 768: 9.3 against 11.7 ms), and about as fast at one row;
    - 9 to 64 rows (beams of a batch): as (embedding @ h.T).T, a tall product whose small side MKL
      packs once, where h @ embedding.T packs the whole embedding (T5's at 32 rows: 4.4 against 9.1 ms).

    The copy is kept while the embedding is unchanged and made again when it changes; training,
    other devices and more rows use the embedding as it is. It is a plain object, not a Module, so
    the copy is never part of the state dict.

    "Changes" is told by the embedding's version counter, which in-place writes (an optimizer step,
    load_state_dict) bump. A model built or loaded under torch.inference_mode() has inference
    tensors for parameters, which have no version counter (reading `_version` raises) and can be
    written in place unseen, so for them no copy is kept and the embedding is used as it is.
    """

    FEW_ROWS = 8
    TALL_ROWS = 64

    def __init__(self):
        self._copy: Tensor | None = None
        self._made_from: tuple | None = None

    def __call__(self, h: Tensor, embedding: Tensor) -> Tensor:
        rows = h.numel() // h.size(-1)
        if h.device.type != "cpu" or rows > self.TALL_ROWS or not torch.is_inference_mode_enabled():
            return F.linear(h, embedding)
        flat = h.reshape(rows, h.size(-1))  # as one 2-D product: a (B, 1, C) matmul runs as B products, 2x slower
        if rows > self.FEW_ROWS:
            return (embedding @ flat.t()).t().view(*h.shape[:-1], -1)
        if embedding.is_inference():
            return F.linear(h, embedding)
        source = (embedding.data_ptr(), embedding._version, embedding.dtype)
        if source != self._made_from:
            self._copy, self._made_from = embedding.detach().t().contiguous(), source
        return (flat @ self._copy).view(*h.shape[:-1], -1)
