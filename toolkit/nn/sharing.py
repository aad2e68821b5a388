"""A stack of transformer blocks whose parameters may be shared across layers (ALBERT §3.1).

ALBERT's cross-layer sharing runs the same parameters at every layer: all of them (its default),
only the attention's, or only the feed-forward network's. Shared parameters are stored once, in
layer 0 (`h.0.*`), so the state dict and the saved weights hold each tensor once and the parameter
count is the real one; `parameters_without_sharing()` says how many an unshared stack would have.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

from .blocks import Block

Sharing = Literal["none", "all", "attention", "ffn"]
SHARINGS = ("none", "all", "attention", "ffn")

# What each kind of sharing shares: the sub-modules of a Block, with the LayerNorm that closes
# each sub-layer in a post-LN block.
SHARED_PARTS = {"none": (), "all": (), "attention": ("attn", "ln_1"), "ffn": ("mlp", "ln_2")}


class BlockStack(nn.Module):
    """n_layers blocks applied in turn, made by `make_block()`, sharing parameters as `sharing` says."""

    def __init__(self, n_layers: int, make_block: Callable[[], Block], sharing: Sharing = "none"):
        super().__init__()
        if sharing not in SHARINGS:
            raise ValueError(f"unknown sharing {sharing!r}; allowed: {', '.join(SHARINGS)}")
        self.n_layers, self.sharing = n_layers, sharing
        self.h = nn.ModuleList(make_block() for _ in range(1 if sharing == "all" else n_layers))
        for block in self.h[1:]:
            for name in SHARED_PARTS[sharing]:
                # Unregistered, so stored (and counted, and moved by .to()) once, through h.0;
                # an instance attribute is found before nn.Module's registry, so Block.forward uses it.
                del block._modules[name]
                block.__dict__[name] = getattr(self.h[0], name)

    def layer(self, index: int) -> Block:
        return self.h[0] if self.sharing == "all" else self.h[index]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, T, C) -> (B, T, C), through n_layers layers."""
        for index in range(self.n_layers):
            x = self.layer(index)(x, mask)
        return x

    def parameters_without_sharing(self) -> int:
        """The parameter count of the same stack with no sharing."""
        block = sum(p.numel() for p in self.h[0].parameters())
        return block * self.n_layers
