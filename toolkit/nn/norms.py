"""Root-mean-square layer normalisation (T5's LayerNorm; Zhang and Sennrich 2019).

Shared by any stack that normalises by scale only (T5, and the many later models that followed it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """y = weight * x / sqrt(mean(x^2) + eps): no mean subtracted, no bias.

    The mean of squares is taken in float32 whatever the input's dtype: in half precision the sum of
    d_model squares overflows or loses the small ones (transformers' T5LayerNorm does the same). The
    result returns to the weight's dtype when that is half precision, so fp16/bf16 models stay so.
    x: (..., d) -> (..., d). Source: transformers models/t5/modeling_t5.py T5LayerNorm.
    """

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32 and not torch.onnx.is_in_onnx_export():
            # The same sum in one call where four were (19 norms a T5-small decoding step); opset 18 has no
            # RMS norm, so exports keep the written-out form.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x
