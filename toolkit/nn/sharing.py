"""Transformer blocks whose parameters may be shared across layers (ALBERT §3.1), for any family.

ALBERT's cross-layer sharing runs the same parameters at every layer: all of them (its default),
only the attention's, or only the feed-forward network's. It is an option of every stack built on
these blocks (`sharing`: BERT's encoders, GPT's decoders), not of ALBERT alone.

`SharedBlocks` is a ModuleList of one block per layer, made by `make_block(layer)`, in which the
shared parameters are stored once, in layer 0 (`h.0.*`): the state dict and the saved weights hold
each tensor once, the parameter count is the real one, and a shared module is reached from the
other layers through an unregistered attribute (moved and converted with layer 0, since it is the
same object). Every layer keeps a block of its own, so what is per layer stays per layer: its slot
in a key/value cache (the decoder's blocks take (x, mask, cache, layer)), its mask, and the kind of
its attention (a GPT-3 layer may be banded and the next dense: they share the projections, which
is what the weights are, and differ only in what they attend). Sharing goes down to the modules
that hold parameters (the q/k/v and output projections, the LayerNorms, the MLP's linears), so two
layers share weights even when their attention modules are of different kinds.

    sharing      shared in every layer (from layer 0)
    none         nothing
    all          everything in the block
    attention    the self-attention and the LayerNorm that goes with it (ln_1)
    ffn          the feed-forward network and its LayerNorm (ln_2)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from torch import Tensor, nn

from .blocks import Block
from .options import SHARINGS, check_sharing

Sharing = Literal["none", "all", "attention", "ffn"]

# What each kind of sharing shares: the sub-modules of a Block, with the LayerNorm that goes with
# each sub-layer (it closes the sub-layer in a post-LN block, opens it in a pre-LN one).
SHARED_PARTS = {"none": (), "all": ("ln_1", "attn", "ln_2", "mlp"), "attention": ("attn", "ln_1"),
                "ffn": ("mlp", "ln_2")}

__all__ = ["SHARED_PARTS", "SHARINGS", "BlockStack", "SharedBlocks", "Sharing", "share_modules"]


def _holds_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def share_modules(owner: nn.Module, name: str, source: nn.Module) -> None:
    """Make owner.<name> use the parameters of source.<name>, stored once, in source.

    A module that holds parameters itself (a Linear, a LayerNorm) is replaced by source's, as an
    unregistered attribute: an instance attribute is found before nn.Module's registry, so forward
    uses it, while state_dict(), parameters() and .to() reach it only through source. A module
    whose parameters are in its children is shared child by child, so that its own kind (a banded
    or a dense attention) and its parameter-free parts stay the layer's.
    """
    mine, theirs = owner._modules[name], source._modules[name]
    if mine is None or theirs is None:
        return
    if _holds_parameters(mine) or _holds_parameters(theirs):
        if type(mine) is not type(theirs) or {n for n, _ in mine.named_parameters()} != \
                {n for n, _ in theirs.named_parameters()}:
            raise ValueError(f"cannot share {name}: a {type(mine).__name__} and a {type(theirs).__name__} "
                             "do not have the same parameters")
        del owner._modules[name]
        owner.__dict__[name] = theirs
        return
    for child in list(mine._modules):
        if child in theirs._modules:
            share_modules(mine, child, theirs)


class SharedBlocks(nn.ModuleList):
    """n_layers blocks, one per layer, made by make_block(layer), sharing parameters as `sharing` says.

    A ModuleList: a stack keeps it under the name its checkpoints use (GPT-2's `h`), iterates it
    layer by layer and indexes it by layer, as it would an unshared one.
    """

    def __init__(self, n_layers: int, make_block: Callable[[int], Block], sharing: Sharing = "none"):
        check_sharing(sharing)
        super().__init__(make_block(layer) for layer in range(n_layers))
        self.sharing = sharing
        # Counted before sharing: what the same stack would have with none.
        self.unshared = sum(p.numel() for p in self.parameters())
        for block in list(self)[1:]:
            for name in SHARED_PARTS[sharing]:
                share_modules(block, name, self[0])

    def parameters_without_sharing(self) -> int:
        """The parameter count of the same blocks with no sharing."""
        return self.unshared


def without_sharing(stack: nn.Module) -> int:
    """A module's parameter count as it would be if none of its SharedBlocks shared anything."""
    total = sum(p.numel() for p in stack.parameters())
    for module in stack.modules():
        if isinstance(module, SharedBlocks):
            total += module.parameters_without_sharing() - sum(p.numel() for p in module.parameters())
    return total


class BlockStack(nn.Module):
    """SharedBlocks (as `h`) applied in turn: forward(x, mask) for stacks without a cache (encoders)."""

    def __init__(self, n_layers: int, make_block: Callable[[int], Block], sharing: Sharing = "none"):
        super().__init__()
        self.n_layers, self.sharing = n_layers, sharing
        self.h = SharedBlocks(n_layers, make_block, sharing)

    def layer(self, index: int) -> Block:
        return self.h[index]

    def forward(self, x: Tensor, mask: Tensor | Sequence[Tensor | None] | None = None, cache=None) -> Tensor:
        """x: (B, T, C) -> (B, T, C), through n_layers layers.

        mask: one mask for every layer, or a list of one per layer (a stack of dense and banded layers).
        cache: passed to each block with its layer index, where the blocks keep one.
        """
        masks = mask if isinstance(mask, (list, tuple)) else [mask] * self.n_layers
        for index, block in enumerate(self.h):
            x = block(x, masks[index], cache, index)
        return x

    def parameters_without_sharing(self) -> int:
        """The parameter count of the same stack with no sharing."""
        return self.h.parameters_without_sharing()
