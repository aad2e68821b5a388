"""Base classes that give every stack the parts of lmkit.contract a family rarely changes.

A family subclasses `EncoderStack`, `CausalDecoderStack` or `Seq2SeqDecoderStack` and writes what
its paper adds; the defaults here are what the core would otherwise have to guess: the features
`lmkit embed` returns, the task recipe, the parameter count without sharing, the start token.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..contract import EncoderOutput
from ..errors import SpecError
from .cache import reorder_rows


def _no_options(stack: nn.Module, options: dict) -> None:
    if options:
        raise SpecError(f"{type(stack).__name__} takes no embedding options ({', '.join(options)}); "
                        f"it takes: {', '.join(stack.embed_options) or 'none'}")


class _Stack(nn.Module):
    d_model: int
    max_positions: int | None = None
    embed_options: ClassVar[tuple[str, ...]] = ()
    special_tokens: ClassVar[tuple[str, ...]] = ()
    special_token_roles: ClassVar[dict[str, str]] = {}
    cloze_recipe: ClassVar[str | None] = None  # the task recipe of fine-tuning as cloze (lmkit.tasks.cloze), if any
    # The objective `lmkit finetune --task text-to-text` trains a decoder-only stack with, writing each target after
    # its source (lmkit.tasks.text_to_text; GLM's glm-text-to-text); None: the stack does not (an encoder-decoder's
    # is seq2seq, whatever its stacks say).
    text_to_text_objective: ClassVar[str | None] = None

    def bind_tokenizer(self, tokenizer) -> None:
        """Keep what the stack derives from its tokenizer's vocabulary (ELMo's character spelling of each
        word); called when a model is composed. Most stacks keep nothing."""

    def token_inputs(self, tokenizer) -> dict | None:
        """The per-token inputs the stack reads beside input_ids, computed from each token's spelling
        (lmkit.token_inputs: ELMo's char ids of out-of-vocabulary words), as a table naming their kind;
        None: the stack reads token ids alone, as most do."""
        return None

    def parameters_without_sharing(self) -> int:
        """The parameter count without cross-layer sharing: the plain count, plus what each of the
        stack's lmkit.nn.sharing.SharedBlocks saves (ALBERT's, or any stack's `sharing` option)."""
        from .sharing import without_sharing

        return without_sharing(self)


class EncoderStack(_Stack):
    """An encoder: forward(input_ids, attention_mask, token_type_ids) -> EncoderOutput."""

    task_recipe: ClassVar[str] = "encoder"
    # Roles of the special tokens appended to every source an encoder-decoder encodes (lmkit.contract.Encoder).
    source_suffix: tuple[str, ...] = ()

    def features(self, input_ids: Tensor, attention_mask: Tensor | None = None, **options) -> EncoderOutput:
        """The encoder's output is its features."""
        _no_options(self, options)
        return self(input_ids, attention_mask)


class CausalDecoderStack(_Stack):
    """A decoder-only language model: new_cache, hidden_states, logits, forward."""

    task_recipe: ClassVar[str] = "decoder"
    # True for a recurrent LM whose training carries its state across windows (lmkit.contract.CausalDecoder).
    stateful: ClassVar[bool] = False

    def forward(self, input_ids: Tensor, cache=None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> Tensor:
        return self.logits(self.hidden_states(input_ids, cache, attention_mask, position_ids))

    def features(self, input_ids: Tensor, attention_mask: Tensor | None = None, **options) -> EncoderOutput:
        """The final hidden states of right-padded input_ids: causal attention keeps each real token from
        seeing the padding after it, so no mask is needed."""
        _no_options(self, options)
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask.bool())
        return EncoderOutput(self.hidden_states(input_ids), mask)


class Seq2SeqDecoderStack(_Stack):
    """The decoder of an encoder-decoder model: start, forward(input_ids, state), reorder."""

    task_recipe: ClassVar[str] = "encoder"  # classification reads the encoder's features
    # The batch axis of each state tensor, which reorder selects on; a family fills in its own.
    STATE_ROWS: ClassVar[dict[str, int]] = {}
    # The state's self-attention keys and values, each (L, B, nh, P, hs), that a prefix starts (lmkit.prefix);
    # None for a decoder without such a cache (the LSTM decoders), which takes no prefix.
    self_attention_cache: ClassVar[tuple[str, str] | None] = None
    source_state: ClassVar[tuple[str, ...]] = ()
    # The source-length axis of each state tensor that runs along the source (the encoder's states, keys,
    # values, mask), which `join` pads; a family fills in its own.
    SOURCE_AXES: ClassVar[dict[str, int]] = {}

    def tie_to_encoder(self, encoder) -> None:
        """Nothing shared with the encoder by default (T5's decoder reads the encoder's embedding)."""

    def decoder_start_token_id(self, tokenizer) -> int:
        """<s> when the tokenizer has one, else </s> (as GPT-2 starts from <|endoftext|>)."""
        start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if start is None:
            raise SpecError("the target tokenizer has neither <s> nor </s> to start a translation from; train "
                            "one whose special tokens include them")
        return start

    def reorder(self, state: dict[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
        return {name: reorder_rows(value, self.STATE_ROWS[name], rows) for name, value in state.items()}

    def join(self, state: dict[str, Tensor], other: dict[str, Tensor]) -> dict[str, Tensor]:
        """The state of `state`'s rows followed by `other`'s: rows that join a running batch (lmkit serve), with
        neither side computed again.

        Entries along the source (SOURCE_AXES) are padded at the end to the longer source, with zeros (False in
        a mask), which the source mask hides. A self-attention cache (self_attention_cache, (L, B, nh, P, hs))
        is left-padded to the longer side's P, and `target_mask` (B, P), False at that padding, tells the
        decoder which positions no query may see: every row's positions end at the same column, so the
        distance from a query to each real key (all a relative position bias reads) is unchanged. A decoder
        that keeps a cache must then read state["target_mask"] where present (T5 does); a recurrent state
        joins its rows alone.
        """
        sides = (state, other)
        cache = self.self_attention_cache or ()
        lengths = [side[cache[0]].shape[3] if cache else 0 for side in sides]
        joined = {}
        for name in state:
            if name == "target_mask":
                continue
            values = [side[name] for side in sides]
            if name in self.SOURCE_AXES:
                values = _padded_to_longest(values, self.SOURCE_AXES[name], at_end=True)
            elif name in cache:
                values = _padded_to_longest(values, 3, at_end=False)
            joined[name] = torch.cat(values, dim=self.STATE_ROWS[name])
        if cache and (lengths[0] != lengths[1] or any("target_mask" in side for side in sides)):
            masks = []
            for side, length in zip(sides, lengths):
                B = side[cache[0]].shape[1]
                mask = side.get("target_mask")
                if mask is None:
                    mask = torch.ones(B, length, dtype=torch.bool, device=side[cache[0]].device)
                masks.append(mask)
            joined["target_mask"] = torch.cat(_padded_to_longest(masks, 1, at_end=False), dim=0)
        return joined

    def features(self, input_ids: Tensor, attention_mask: Tensor | None = None, **options) -> EncoderOutput:
        raise SpecError("an encoder-decoder model embeds with its encoder; lmkit embed uses it")


def _padded_to_longest(values: list[Tensor], axis: int, *, at_end: bool) -> list[Tensor]:
    """Each of `values` padded with zeros (False) along `axis` to the longest's size, after its entries or before."""
    longest = max(value.shape[axis] for value in values)
    padded = []
    for value in values:
        missing = longest - value.shape[axis]
        if missing:
            shape = list(value.shape)
            shape[axis] = missing
            zeros = value.new_zeros(shape)
            value = torch.cat([value, zeros] if at_end else [zeros, value], dim=axis)
        padded.append(value)
    return padded
