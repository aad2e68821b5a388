"""Relative position bias (Shaw et al. 2018 in T5's simplified form, Raffel et al. 2020 §2.1).

Each head adds a learned scalar to its attention logits, looked up by the bucket of the distance
key_position - query_position: exact buckets for small distances, logarithmically wider ones up to
max_distance, and one last bucket for everything beyond. A bidirectional stack (an encoder) gives
each sign half of the buckets; a causal one (a decoder) only looks back, so all buckets measure the
past. One table per stack, computed once per forward pass and added in every layer.

Source: transformers models/t5/modeling_t5.py (T5Attention._relative_position_bucket, compute_bias);
hand-checked values in tests/test_t5.py.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def relative_position_bucket(relative_position: Tensor, *, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128) -> Tensor:
    """The bucket (int64, same shape) of each relative position key - query.

    bidirectional: num_buckets / 2 buckets per sign, the upper half for keys after the query.
    causal: n = max(query - key, 0), every later key in bucket 0 (the causal mask hides them anyway).
    Below half of a sign's buckets the bucket is n itself; above, it grows with log(n) and reaches
    the sign's last bucket at max_distance.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).to(torch.long) * num_buckets
        n = relative_position.abs()
    else:
        n = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # n.clamp(min=1): log(0) is -inf; those positions take the is_small branch anyway.
    large = max_exact + (torch.log(n.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """The per-head bias of T queries at positions offset..offset+T-1 against keys 0..S-1: (1, nh, T, S).

    `relative_attention_bias` is an embedding of num_buckets rows, one value per head (transformers'
    name, so checkpoints map one to one).
    """

    def __init__(self, n_heads: int, *, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, n_heads)

    def forward(self, query_length: int, key_length: int, offset: int | Tensor = 0) -> Tensor:
        device = self.relative_attention_bias.weight.device
        query = torch.arange(query_length, device=device)[:, None] + offset  # (T, 1)
        key = torch.arange(key_length, device=device)[None, :]  # (1, S)
        buckets = relative_position_bucket(key - query, bidirectional=self.bidirectional,
                                           num_buckets=self.num_buckets, max_distance=self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # (1, nh, T, S)
