"""The output layer of a model whose output embedding is its input embedding (GPT-2, BERT, T5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class TiedOutputProjection:
    """logits = h @ embedding.T, for a (vocab, d_model) embedding matrix.

    On the CPU under inference mode, the product of a decoding step's 2 to 64 rows (batch x beams)
    runs against a copy of the embedding that oneDNN has packed for its matrix-product kernels
    (torch.ops.mkldnn, as torch.compile's CPU backend packs frozen weights). Measured at 2 threads on
    T5's 32128 x 512 (`python benchmarks/bench_layout.py`), ms per product:

        rows                            1      4      8     32
        packed copy                   1.9    2.3    2.8    7.7
        contiguous (d_model, vocab)   1.6    3.2    3.3    9.3
        (embedding @ h.T).T           1.9    4.5    4.3    7.0
        the embedding as it is        1.6    3.7    5.3   13.3

    In whole decoding steps (T5-small, 32 new tokens, in turns against the two layouts before it):
    1.12x for greedy search of 8 sources, 1.10x for 4 beams of 8, 1.00-1.07x for 4 beams of one.

    One row is a matrix-vector product, as fast against the embedding itself, which it uses. Where
    torch has no oneDNN, 2 to 8 rows use a contiguous (d_model, vocab) copy and 9 to 64 the tall
    product, the layouts MKL streams fastest there.

    The copy is kept while the embedding is unchanged and made again when it changes; training,
    other devices, other dtypes and more rows use the embedding as it is. It is a plain object, not a
    Module, so the copy is never part of the state dict.

    "Changes" is told by the embedding's version counter, which in-place writes (an optimizer step,
    load_state_dict) bump. A model built or loaded under torch.inference_mode() has inference
    tensors for parameters, which have no version counter (reading `_version` raises) and can be
    written in place unseen, so for them no copy is kept and the embedding is used as it is.
    """

    FEW_ROWS = 8
    TALL_ROWS = 64
    PACKED_FOR_ROWS = 8  # oneDNN's packing takes a row count to lay the copy out for (measured: 8 to 32 alike)

    def __init__(self):
        self._copy: Tensor | None = None
        self._packed = False
        self._made_from: tuple | None = None

    def __call__(self, h: Tensor, embedding: Tensor) -> Tensor:
        rows = h.numel() // h.size(-1)
        if (rows == 1 or rows > self.TALL_ROWS or h.device.type != "cpu" or not torch.is_inference_mode_enabled()
                or embedding.is_inference() or h.dtype != embedding.dtype):
            return F.linear(h, embedding)
        flat = h.reshape(rows, h.size(-1))  # as one 2-D product: a (B, 1, C) matmul runs as B products, 2x slower
        source = (embedding.data_ptr(), embedding._version, embedding.dtype)
        if source != self._made_from:
            self._copy, self._packed = _packed(embedding.detach(), self.PACKED_FOR_ROWS), True
            if self._copy is None:
                self._copy, self._packed = embedding.detach().t().contiguous(), False
            self._made_from = source
        if self._packed:
            logits = torch.ops.mkldnn._linear_pointwise(flat, self._copy, None, "none", [], "")
        elif rows <= self.FEW_ROWS:
            logits = flat @ self._copy
        else:
            logits = (embedding @ flat.t()).t()
        return logits.view(*h.shape[:-1], -1)


def _packed(weight: Tensor, rows: int) -> Tensor | None:
    """weight (out, in) packed by oneDNN for products of about `rows` rows, or None where torch cannot
    (no oneDNN in this build, or a dtype other than float32)."""
    if weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    except (AttributeError, RuntimeError):  # an op this build lacks, or refuses for this weight
        return None
