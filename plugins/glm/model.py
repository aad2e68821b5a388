"""GLM (Du et al. 2022): one pre-LN transformer that reads a corrupted text bidirectionally and writes its
blanks left to right, placed by two learned position tables.

A GLM input is Part A, the text with each blank replaced by a mask token, followed by Part B, the
blanks' spans, each as [S] x1 ... xn (targets x1 ... xn [E]). Every token carries two positions
(§2.2, "2D positional encoding"):

    pos1  where it sits in Part A; every token of a span gets the position of its mask
    pos2  0 in Part A; 1, 2, ... inside a span ([S] is 1)

and the attention mask follows from them (§2.1, Figure 2d): a key j is visible to the query i when
j <= i (left to right) or when j is in Part A (pos2 == 0). So Part A sees all of Part A and none of
Part B, and Part B sees Part A and the Part-B tokens up to itself. This is THUDM/GLM's
`sep` mask (position i may attend to j when j < sep or j <= i) read off the positions, which is what
lets a cache and an ONNX graph carry it: a new token in Part B sees every cached key.

Called with the contract's plain arguments (lmkit.contract.CausalDecoder: no positions, or one
position per token), the input is one span written from an empty Part A: pos1 = 0, pos2 = 1, 2, ...,
read left to right. That is the model's language-model view (a [gMASK] span whose context is empty),
so caching, left padding, beams, eval and GPT's fine-tuning recipe work on it unchanged.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from lmkit.contract import EncoderOutput
from lmkit.errors import SpecError
from lmkit.nn import Block, Dropout, KVCache, SharedBlocks, TiedOutputProjection, self_attention_mask
from lmkit.nn.stack import CausalDecoderStack

from .config import END, MASK, SPECIAL_TOKENS, START, GLMConfig


def glm_attention_mask(block_positions: Tensor, padding: Tensor | None, past: int) -> Tensor:
    """The GLM mask of T new tokens after `past` cached ones: (B, 1, T, past + T) bool.

    block_positions: (B, T) pos2 of the new tokens (0: Part A). padding: (B, past + T) bool, True at
    real tokens, or None. Cached keys come before every new token, so they are always visible.
    """
    B, T = block_positions.shape
    S = past + T
    device = block_positions.device
    query = torch.arange(past, S, device=device)[:, None]  # (T, 1) absolute positions
    key = torch.arange(S, device=device)  # (S,)
    part_a = torch.cat([torch.zeros(B, past, dtype=torch.bool, device=device), block_positions == 0], dim=1)
    allowed = (key <= query)[None] | part_a[:, None, :]  # (B, T, S)
    if padding is not None:
        # A padding query sees itself, so that SDPA never gets a row with nothing to attend (NaN).
        allowed = (allowed & padding.bool()[:, None, :]) | (key == query)[None]
    return allowed[:, None]  # (B, 1, T, S)


class GLMDecoder(CausalDecoderStack):
    """Token + pos1 + pos2 embeddings, pre-LN blocks, a final LayerNorm, logits from the tied embedding.

    Names follow THUDM/GLM's tables (word_embeddings, position_embeddings, block_position_embeddings)
    and lmkit's blocks (h.{i}.attn.c_attn, ...; ln_f).
    """

    # What GLM's data and generation read from the tokenizer; composing adds those it lacks.
    special_tokens: ClassVar[tuple[str, ...]] = SPECIAL_TOKENS
    # [S] starts and [E] ends every span GLM writes: a left-to-right text too ([gMASK]).
    special_token_roles: ClassVar[dict[str, str]] = {"bos": START, "eos": END, "mask": MASK}
    # lmkit finetune --pattern --verbalizer: the paper's NLU fine-tuning (§2.3), each label's word in the blank.
    cloze_recipe: ClassVar[str | None] = "glm-cloze"
    # lmkit finetune --task text-to-text: each target written as a [gMASK] span after its input (§2.3, generation).
    text_to_text_objective: ClassVar[str | None] = "glm-text-to-text"

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embeddings = nn.Embedding(config.max_positions, config.d_model)  # pos1
        self.block_position_embeddings = nn.Embedding(config.max_positions + 1, config.d_model)  # pos2
        self.drop = Dropout(config.dropout)
        self.h = SharedBlocks(config.n_layers, lambda layer: Block(
            config.d_model, config.n_heads, causal=True, pre_ln=True, d_ff=config.d_ff,
            activation=config.activation, dropout=config.dropout, layer_norm_eps=config.layer_norm_eps))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.lm_head = TiedOutputProjection()  # the output layer is word_embeddings itself

        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # Megatron's scaled init of the projections that end a residual branch: std 0.02 / sqrt(2L).
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * config.n_layers))

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    @property
    def d_model(self) -> int:
        return self.config.d_model

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        c = self.config
        weight = self.word_embeddings.weight
        return KVCache(c.n_layers, batch_size, c.n_heads, max_len or c.max_positions, c.d_model // c.n_heads,
                       device=weight.device, dtype=weight.dtype)

    def positions(self, input_ids: Tensor, position_ids: Tensor | None, past: int,
                  prefix: int = 0) -> tuple[Tensor, Tensor, bool]:
        """(pos1, pos2, whether they are GLM's 2D positions), each (B or 1, T).

        position_ids: (B, 2, T) pos1 and pos2; (B, T) or None: a span from an empty Part A, its
        tokens at pos2 = position + 1 (None: past, past + 1, ...). After a prefix of `prefix` positions
        (lmkit.prefix: a context of P positions in the cache) the span is that context's: pos1 = P, where
        its blank would sit, and pos2 counts from the prefix's end (positions P, P + 1, ... are pos2 1, 2, ...).
        """
        T = input_ids.size(1)
        if position_ids is not None and position_ids.dim() == 3:
            if position_ids.size(1) != 2:
                raise ValueError(f"GLM's position_ids are (batch, 2, tokens): pos1 and pos2; got "
                                 f"{tuple(position_ids.shape)}")
            return position_ids[:, 0], position_ids[:, 1], True
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)[None]  # (1, T)
        if prefix:
            return torch.full_like(position_ids, prefix), position_ids - prefix + 1, False
        return torch.zeros_like(position_ids), position_ids + 1, False

    def hidden_states(self, input_ids: Tensor, cache: KVCache | None = None,
                      attention_mask: Tensor | None = None, position_ids: Tensor | None = None) -> Tensor:
        """The final hidden states (B, T, d_model); arguments as in `forward`."""
        B, T = input_ids.shape
        past = 0 if cache is None else cache.length
        if past + T > self.max_positions:
            raise ValueError(
                f"GLM reads at most {self.max_positions} positions (max_positions), Part A and Part B together, "
                f"but got {T} new tokens after {past} cached ones; shorten the text or make a model with a larger "
                "max_positions")
        pos1, pos2, two_d = self.positions(input_ids, position_ids, past, 0 if cache is None else cache.prefix_length)
        if two_d:
            mask = glm_attention_mask(pos2, attention_mask, past)
        else:
            mask = self_attention_mask(attention_mask, T, past, causal=True, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos1) + self.block_position_embeddings(pos2)
        x = self.drop(x)  # (B, T, C)
        for layer, block in enumerate(self.h):
            x = block(x, mask, cache, layer)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)

    def features(self, input_ids: Tensor, attention_mask: Tensor | None = None, **options) -> EncoderOutput:
        """What `lmkit embed` gives: the text read as Part A (§2.1), every token seeing every other (pos1 0, 1, ...,
        pos2 0), the final states (B, T, d_model). attention_mask (B, T), False at (right) padding, which no real
        token sees. GLM's NLU tasks read the context so (Part A is bidirectional); the left-to-right view, which
        GPT's fine-tuning recipe reads, is hidden_states() without positions."""
        if options:
            raise SpecError(f"the glm decoder's features take no options, got {', '.join(options)}")
        B, T = input_ids.shape
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool())
        pos1 = torch.arange(T, device=input_ids.device).expand(B, T)
        positions = torch.stack([pos1, torch.zeros_like(pos1)], dim=1)  # (B, 2, T): all of it Part A
        return EncoderOutput(self.hidden_states(input_ids, None, mask, positions), mask)

    def forward(self, input_ids: Tensor, cache: KVCache | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> Tensor:
        """Logits (B, T, vocab_size) of input_ids (B, T).

        cache: keys/values of earlier positions; the new ones are appended and cache.length advances.
        attention_mask: (B, past + T) bool, False at padding.
        position_ids: (B, 2, T) GLM's pos1 and pos2, from which the mask follows (Part A: pos2 == 0);
            (B, T) or None: one span read left to right (see the module docstring).
        """
        return self.logits(self.hidden_states(input_ids, cache, attention_mask, position_ids))

    def logits(self, hidden_states: Tensor) -> Tensor:
        return self.lm_head(hidden_states, self.word_embeddings.weight)
