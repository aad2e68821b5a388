"""The LSTM encoder and the LSTM decoder with optional attention and input feeding.

The encoder turns a right-padded source batch into states; the decoder starts from them and
produces target logits, either a whole teacher-forced target at once (training) or one token per
call (decoding, through lmkit.decoding.seq2seq_backend). The decoder's state is a dictionary of
tensors, every one with the batch as a row dimension, so beam search can reorder it by rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.contract import EncoderOutput
from lmkit.errors import SpecError
from lmkit.nn import Dropout
from lmkit.nn.lstm import LSTMStack, reverse_padded, uniform_init_
from lmkit.nn.stack import EncoderStack, Seq2SeqDecoderStack

from .config import LSTMDecoderConfig, LSTMEncoderConfig


class LSTMEncoder(EncoderStack):
    """Token ids (B, S) -> states (B, S, D) with D = directions x hidden_size, and the final (h, c)."""

    embed_options = ("word_vectors",)  # features(word_vectors=...): [GloVe(w); CoVe(w)], lmkit embed --vectors

    def __init__(self, config: LSTMEncoderConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_embed)
        self.lstm = LSTMStack(config.d_embed, config.hidden_size, config.n_layers,
                              bidirectional=config.bidirectional, dropout=config.dropout)
        self.drop = Dropout(config.dropout)
        uniform_init_(self, config.init_range)

    @property
    def d_model(self) -> int:
        """The width of the states it returns: hidden_size x directions."""
        return self.lstm.output_size

    @property
    def max_positions(self) -> int:
        """The longest source it accepts (translate refuses longer ones)."""
        return self.config.max_positions

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> EncoderOutput:
        """attention_mask (B, S) bool, True at real tokens, which come first in each row (right padding).
        token_type_ids: ignored; an LSTM has no segments (a pair reads as one sequence with its separator).

        Returns the top layer's states (B, S, D) in word order, the mask, the final (h, c) (L, B, D) that
        a decoder may start from, and as pooled output the top layer's final h (B, D): the whole sentence
        read (both ways, for a bidirectional encoder), the classic sentence vector.
        """
        B, S = input_ids.shape
        if attention_mask is None:
            lengths, mask = None, torch.ones(B, S, dtype=torch.bool, device=input_ids.device)
        else:
            mask = attention_mask.bool()
            lengths = mask.sum(1)
        if self.config.reverse_source:  # without padding a plain flip, which exports as one op
            input_ids = input_ids.flip(1) if lengths is None else reverse_padded(input_ids, lengths)
        states, (h, c) = self.lstm(self.drop(self.embedding(input_ids)), lengths)
        if self.config.reverse_source:  # back in word order: attention does not care, features do
            states = states.flip(1) if lengths is None else reverse_padded(states, lengths)
        return EncoderOutput(self.drop(states), mask, pooler_output=h[-1], final_state=(h, c))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 word_vectors: torch.Tensor | None = None) -> EncoderOutput:
        """CoVe features: [word vector; top-layer state] per token, in word order (B, S, G + D).

        The word vector is the model's own embedding, or a row of `word_vectors` (V, G) (GloVe in
        McCann et al. 2017: [GloVe(w); CoVe(w)]).
        """
        encoded = self(input_ids, attention_mask)
        states, mask = encoded.last_hidden_state, encoded.attention_mask
        words = self.embedding(input_ids) if word_vectors is None else word_vectors[input_ids]
        features = torch.cat([words.to(states.dtype), states], dim=-1)
        return EncoderOutput(features * mask[..., None], mask)


class Attention(nn.Module):
    """Scores of a query against every encoder state, masked softmax, and the weighted context."""

    def __init__(self, kind: str, query_size: int, memory_size: int):
        super().__init__()
        self.kind = kind
        if kind == "general":
            self.query = nn.Linear(query_size, memory_size, bias=False)  # q^T W h_j = (W^T q)^T h_j
        elif kind == "additive":
            self.query = nn.Linear(query_size, query_size, bias=False)
            self.key = nn.Linear(memory_size, query_size, bias=True)
            self.v = nn.Linear(query_size, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """What the scores compare queries with, computed once per source: (B, S, K)."""
        return self.key(memory) if self.kind == "additive" else memory

    def weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """query (B, T, Q), keys (B, S, K), mask (B, S) -> attention weights (B, T, S), 0 at padding."""
        if self.kind == "additive":
            scores = self.v(torch.tanh(self.query(query)[:, :, None, :] + keys[:, None, :, :])).squeeze(-1)
        else:
            q = self.query(query) if self.kind == "general" else query
            scores = q @ keys.transpose(1, 2)  # (B, T, S)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        return F.softmax(scores, dim=-1)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor):
        """query (B, T, Q), memory (B, S, D), keys (B, S, K), mask (B, S) -> context (B, T, D)."""
        return self.weights(query, keys, mask) @ memory


class LSTMDecoder(Seq2SeqDecoderStack):
    """A target-side LSTM language model conditioned on the encoder: by its initial state, by attention, or both."""

    STATE_ROWS = {"h": 1, "c": 1, "feed": 0, "memory": 0, "keys": 0, "mask": 0}  # the batch dimension of each
    source_state = ("memory", "keys", "mask")  # the encoder's, alike in a source's beams
    SOURCE_AXES = {"memory": 1, "keys": 1, "mask": 1}

    def __init__(self, config: LSTMDecoderConfig):
        super().__init__()
        self.config = config
        H = config.hidden_size
        self.attending = config.attention != "none"
        self.embedding = nn.Embedding(config.vocab_size, config.d_embed)
        self.lstm = LSTMStack(config.d_embed + (H if config.input_feeding else 0), H, config.n_layers,
                              dropout=config.dropout)
        if self.attending:
            self.attention = Attention(config.attention, H, config.d_encoder)
            self.combine = nn.Linear(config.d_encoder + H, H)  # h~ = tanh(W [c; h] + b)
        if config.init_state == "encoder" and config.d_encoder != H:
            self.bridge = nn.Linear(config.d_encoder, H)
        self.drop = Dropout(config.dropout)
        self.lm_head = nn.Linear(H, config.vocab_size)
        uniform_init_(self, config.init_range)

    @property
    def d_model(self) -> int:
        """The width of the states it returns (h~ with attention, else the top layer's h): hidden_size."""
        return self.config.hidden_size

    max_positions = None  # a recurrent decoder has no position limit (max_new_tokens bounds the output)

    def check_encoder(self, encoder) -> None:
        """The encoder's states must have the size this decoder's attention and bridge were built for."""
        size = getattr(encoder, "d_model", None)
        if size is not None and size != self.config.d_encoder:
            raise SpecError(f"decoder.d_encoder is {self.config.d_encoder} but the encoder's states have {size} "
                            f"dimensions (directions x hidden_size); set --set decoder.d_encoder={size}")

    def start(self, encoded: EncoderOutput) -> dict:
        """The state before the first target token, from the encoder's output."""
        config = self.config
        memory, mask = encoded.last_hidden_state, encoded.attention_mask
        B, L, H = memory.shape[0], config.n_layers, config.hidden_size
        if config.init_state == "encoder":
            h, c = encoded.final_state  # (L_enc, B, D)
            if h.shape[0] != L:  # unequal depths: every decoder layer starts from the encoder's top layer
                h, c = h[-1:].expand(L, -1, -1), c[-1:].expand(L, -1, -1)
            if hasattr(self, "bridge"):
                h, c = torch.tanh(self.bridge(h)), self.bridge(c)
            h, c = h.contiguous(), c.contiguous()
        else:
            h = c = memory.new_zeros(L, B, H)
        state = {"h": h, "c": c}
        if self.attending:
            state.update(memory=memory, keys=self.attention.keys(memory), mask=mask)
        if config.input_feeding:
            state["feed"] = memory.new_zeros(B, H)
        return state

    def forward(self, tokens: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """tokens (B, T): the previous target tokens -> logits (B, T, V) and the state after them."""
        x = self.drop(self.embedding(tokens))  # (B, T, E)
        state = dict(state)
        if self.config.input_feeding:
            # h~_{t-1} enters step t, so the steps run one by one.
            outputs = []
            for t in range(tokens.shape[1]):
                step_in = torch.cat([x[:, t], state["feed"]], dim=-1)  # (B, E + H)
                out, (state["h"], state["c"]) = self.lstm.step(step_in, (state["h"], state["c"]))
                state["feed"] = self._attend(out[:, None], state)[:, 0]  # (B, H)
                outputs.append(state["feed"])
            hidden = torch.stack(outputs, dim=1)
        else:
            out, (state["h"], state["c"]) = self.lstm(x, state=(state["h"], state["c"]))
            hidden = self._attend(out, state) if self.attending else out
        return self.lm_head(self.drop(hidden)), state

    def _attend(self, out: torch.Tensor, state: dict) -> torch.Tensor:
        context = self.attention(out, state["memory"], state["keys"], state["mask"])
        return torch.tanh(self.combine(torch.cat([context, out], dim=-1)))
