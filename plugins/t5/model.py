"""T5 (Raffel et al. 2020): a pre-norm transformer encoder-decoder with RMS norm, no biases, unscaled
attention and one relative position bias table per stack.

What is T5's own here is small: the blocks (lmkit.nn.encoder_decoder), the RMS norm (lmkit.nn.norms)
and the bias (lmkit.nn.relative) are shared. The encoder and the decoder read one token embedding
(stored once, in the encoder); v1.0 also uses it as the output layer, after scaling the decoder's
states by d_model**-0.5, and v1.1 has an output layer of its own (tie_word_embeddings,
rescale_output). Source: transformers models/t5/modeling_t5.py, against which tests/test_t5_hf.py
checks states, logits and generated tokens.

The decoder's state (lmkit.contract.Seq2SeqDecoder) holds tensors with the batch on a known axis:

    self_k, self_v    (L, B, nh, P, hs)  self-attention keys/values of the P target tokens so far
    cross_k, cross_v  (L, B, nh, S, hs)  cross-attention keys/values of the source, computed once
    encoder_mask      (B, S) bool        True at real source tokens
    target_mask       (B, P) bool        only after rows joined a running batch (Seq2SeqDecoderStack.join):
                                         False at the left padding of the rows that had fewer target tokens
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lmkit.contract import EncoderOutput
from lmkit.errors import SpecError
from lmkit.nn import Dropout, TiedOutputProjection
from lmkit.nn.cache import grow
from lmkit.nn.encoder_decoder import DecoderBlock, EncoderBlock, additive_mask, exporting
from lmkit.nn.norms import RMSNorm
from lmkit.nn.relative import RelativePositionBias
from lmkit.nn.stack import EncoderStack, Seq2SeqDecoderStack

from .config import T5DecoderConfig, T5EncoderConfig


def init_weights(stack: nn.Module, config) -> None:
    """Mesh TensorFlow's initialisation as transformers writes it (T5PreTrainedModel._init_weights): every
    matrix normal with std 1/sqrt(fan-in), the queries' further divided by sqrt(d_kv) since attention
    is unscaled, embeddings std 1, norms 1."""
    d, hs, nh = config.d_model, config.d_kv, config.n_heads
    for name, module in stack.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Embedding):
            std = d ** -0.5 if leaf == "relative_attention_bias" else 1.0
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.Linear):
            std = {"q": (d * hs) ** -0.5, "o": (nh * hs) ** -0.5, "wo": config.d_ff ** -0.5,
                   "lm_head": 1.0}.get(leaf, module.in_features ** -0.5)
            nn.init.normal_(module.weight, std=std)


class T5Encoder(EncoderStack):
    """Token ids (B, S) -> states (B, S, d_model): relative-position self-attention blocks, a final RMS norm."""

    def __init__(self, config: T5EncoderConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.relative_bias = RelativePositionBias(c.n_heads, bidirectional=True, num_buckets=c.relative_buckets,
                                                  max_distance=c.relative_max_distance)
        self.block = nn.ModuleList(
            EncoderBlock(c.d_model, c.n_heads, c.d_kv, c.d_ff, feed_forward=c.feed_forward, dropout=c.dropout,
                         eps=c.layer_norm_eps, scale=1.0) for _ in range(c.n_layers))
        self.final_layer_norm = RMSNorm(c.d_model, c.layer_norm_eps)
        self.drop = Dropout(c.dropout)
        init_weights(self, c)

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    @property
    def source_suffix(self) -> tuple[str, ...]:
        """("eos",): every source ends with </s>, as transformers' T5 tokenizer writes it (append_eos)."""
        return ("eos",) if self.config.append_eos else ()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> EncoderOutput:
        """input_ids (B, S), attention_mask (B, S) true at real tokens (right padding); token_type_ids are
        ignored (T5 reads a pair as one text, "premise: ... hypothesis: ..."). No pooled output: heads
        read the first position. ValueError when S exceeds max_positions."""
        B, S = input_ids.shape
        if S > self.config.max_positions:
            raise ValueError(f"T5's encoder reads at most {self.config.max_positions} tokens (encoder.max_positions) "
                             f"but got {S}; shorten the input or compose with a larger encoder.max_positions")
        mask = (torch.ones(B, S, dtype=torch.bool, device=input_ids.device) if attention_mask is None
                else attention_mask.bool())
        x = self.drop(self.embed_tokens(input_ids))  # (B, S, D)
        # One bias for every layer: the relative positions plus the padding, (B, nh, S, S).
        bias = self.relative_bias(S, S) + additive_mask(mask[:, None, None, :], torch.float32)
        for block in self.block:
            x = block(x, bias)
        return EncoderOutput(self.drop(self.final_layer_norm(x)), mask)


class T5Decoder(Seq2SeqDecoderStack):
    """Target tokens (B, T) after a state -> logits (B, T, V): causal self-attention with a cache,
    cross-attention over the encoder's keys/values, the output layer (tied and rescaled, or its own)."""

    STATE_ROWS = {"self_k": 1, "self_v": 1, "cross_k": 1, "cross_v": 1, "encoder_mask": 0, "target_mask": 0}
    SOURCE_AXES = {"cross_k": 3, "cross_v": 3, "encoder_mask": 1}
    # A prefix is P self-attention positions before the start token: the relative bias then offsets every
    # query by the cache's length, P included, as if P target tokens had come first.
    self_attention_cache = ("self_k", "self_v")
    source_state = ("cross_k", "cross_v", "encoder_mask")
    max_positions = None  # relative positions: no limit on the target (max_new_tokens bounds it)

    def __init__(self, config: T5DecoderConfig):
        super().__init__()
        self.config = config
        c = config
        if not c.share_embedding:
            self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.relative_bias = RelativePositionBias(c.n_heads, bidirectional=False, num_buckets=c.relative_buckets,
                                                  max_distance=c.relative_max_distance)
        self.block = nn.ModuleList(
            DecoderBlock(c.d_model, c.n_heads, c.d_kv, c.d_ff, feed_forward=c.feed_forward, dropout=c.dropout,
                         eps=c.layer_norm_eps, scale=1.0) for _ in range(c.n_layers))
        self.final_layer_norm = RMSNorm(c.d_model, c.layer_norm_eps)
        self.drop = Dropout(c.dropout)
        if c.tie_word_embeddings:
            self.tied_head = TiedOutputProjection()
        else:
            self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_weights(self, c)

    @property
    def d_model(self) -> int:
        return self.config.d_model

    def token_embedding(self) -> nn.Embedding:
        """The decoder's input embedding: the encoder's (share_embedding), or its own."""
        if not self.config.share_embedding:
            return self.embed_tokens
        shared = self.__dict__.get("_shared_embedding")
        if shared is None:
            raise SpecError("the T5 decoder shares the encoder's token embedding (decoder.share_embedding) but was "
                            "built without an encoder; build it inside an encoder-decoder model")
        return shared

    def check_encoder(self, encoder) -> None:
        """The encoder's width must be d_model (cross-attention reads it); with share_embedding, its embedding
        must be one the decoder can read (same rows and width)."""
        width = getattr(encoder, "d_model", None)
        if width != self.config.d_model:
            raise SpecError(f"decoder.d_model is {self.config.d_model} but the encoder's states have {width} "
                            f"dimensions; set --set decoder.d_model={width}")
        if self.config.share_embedding:
            embedding = getattr(encoder, "embed_tokens", None)
            if not isinstance(embedding, nn.Embedding):
                raise SpecError("decoder.share_embedding reads the encoder's token embedding, and this encoder "
                                "has none; set --set decoder.share_embedding=false")
            if embedding.num_embeddings != self.config.vocab_size:
                raise SpecError(f"decoder.vocab_size ({self.config.vocab_size}) differs from encoder.vocab_size "
                                f"({embedding.num_embeddings}) but decoder.share_embedding shares one embedding; "
                                "set both to the same size")

    def tie_to_encoder(self, encoder) -> None:
        """Read tokens through the encoder's embedding (share_embedding): kept as an unregistered attribute,
        so the matrix is stored and counted once, under the encoder."""
        if self.config.share_embedding:
            object.__setattr__(self, "_shared_embedding", encoder.embed_tokens)

    def decoder_start_token_id(self, tokenizer) -> int:
        """T5 starts every target from pad (id 0 in T5's vocabulary)."""
        if tokenizer.pad_id is None:
            raise SpecError("T5 starts its targets from the pad token and the tokenizer has none; train one whose "
                            "special tokens include <pad>")
        return tokenizer.pad_id

    def start(self, encoded: EncoderOutput) -> dict[str, Tensor]:
        memory = encoded.last_hidden_state  # (B, S, D)
        pairs = [block.cross_key_values(memory) for block in self.block]
        B = memory.shape[0]
        c = self.config
        empty = memory.new_zeros(c.n_layers, B, c.n_heads, 0, c.d_kv)
        return {"self_k": empty, "self_v": empty,
                "cross_k": torch.stack([k for k, _ in pairs]), "cross_v": torch.stack([v for _, v in pairs]),
                "encoder_mask": encoded.attention_mask.bool()}

    def hidden_states(self, input_ids: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The final (normed) states (B, T, D) of input_ids after the state, and the state after them."""
        T = input_ids.shape[1]
        past = state["self_k"].shape[3]
        x = self.drop(self.token_embedding()(input_ids))  # (B, T, D)
        # Queries at past..past+T-1 see keys 0..their own position: the relative bias offset by the
        # cache's length (transformers: compute_bias(past_seen_tokens)) plus the causal mask.
        query = torch.arange(T, device=x.device)[:, None] + past
        key = torch.arange(past + T, device=x.device)[None, :]
        allowed = key <= query  # (T, past + T)
        target_mask = state.get("target_mask")
        if target_mask is not None:  # rows that joined a batch: their padding is seen by no query, (B, 1, T, past + T)
            target_mask = torch.cat([target_mask, target_mask.new_ones(target_mask.shape[0], T)], dim=1)
            allowed = allowed & target_mask[:, None, None, :]
            state = {**state, "target_mask": target_mask}
        self_bias = self.relative_bias(T, past + T, past) + additive_mask(allowed, torch.float32)
        cross_bias = additive_mask(state["encoder_mask"][:, None, None, :], torch.float32)  # (B, 1, 1, S)
        if exporting() or torch.is_grad_enabled():
            # Concatenated, nothing in place: an exported graph takes the past and returns past + new, and
            # autograd keeps each layer's keys, which writing the next layer's into one buffer would change.
            keys, values = [], []
            for layer, block in enumerate(self.block):
                x, (k, v) = block(x, self_bias, cross_bias, (state["self_k"][layer], state["self_v"][layer]),
                                  (state["cross_k"][layer], state["cross_v"][layer]))
                keys.append(k)
                values.append(v)
            state = {**state, "self_k": torch.stack(keys), "self_v": torch.stack(values)}
            return self.drop(self.final_layer_norm(x)), state
        # Room for the T new positions after the past, every layer's written in place (no copy of the past
        # per step, as a cat and a stack of the layers would make).
        keys, values = grow(state["self_k"], T, dim=3), grow(state["self_v"], T, dim=3)  # (L, B, nh, past + T, hs)
        for layer, block in enumerate(self.block):
            x, _ = block(x, self_bias, cross_bias, (keys[layer], values[layer]),
                         (state["cross_k"][layer], state["cross_v"][layer]), cache_position=past)
        state = {**state, "self_k": keys, "self_v": values}
        return self.drop(self.final_layer_norm(x)), state

    def logits(self, hidden_states: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, V): rescaled by d_model**-0.5 first when rescale_output (v1.0)."""
        if self.config.rescale_output:
            hidden_states = hidden_states * (self.config.d_model ** -0.5)
        if self.config.tie_word_embeddings:
            return self.tied_head(hidden_states, self.token_embedding().weight)
        return self.lm_head(hidden_states)

    def forward(self, input_ids: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Target tokens (B, T) after the state -> logits (B, T, V) and the state after them."""
        hidden, state = self.hidden_states(input_ids, state)
        return self.logits(hidden), state
