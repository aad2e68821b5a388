"""CVT's sequence-tagging encoder (Clark et al. 2018 §3.1, §4; cvt_text model/encoder.py) as an lmkit encoder.

    token ids (B, T) -> [word embedding; char CNN]                      x (B, T, d_word + filters)
    layer 1: a left-to-right LSTM and a right-to-left LSTM over x       fwd_1, bwd_1 (B, T, d_first) each
    layer 2: a BiLSTM over [fwd_1; bwd_1]                               h_2 (B, T, 2 d_second)
    primary hidden layer: ReLU(W [fwd_1; bwd_1; h_2])                   (B, T, d_projection)

Layer 1 is two separate unidirectional LSTMs, not a BiLSTM, because CVT's auxiliary views read
one direction each (plugins/cvt/objective.py): fwd_1 at t has read tokens 1..t only, bwd_1 at t
tokens t..n only. last_hidden_state is the primary prediction module's hidden layer: the token
head's linear layer on it gives the primary's label scores (the paper's module: a 512-unit ReLU
layer, then the labels), so an export of the tagger is the encoder graph plus that linear layer.
"""
from __future__ import annotations

import torch
from torch import nn

from lmkit.contract import EncoderOutput
from lmkit.errors import LmkitError
from lmkit.nn.char_cnn import CharCNN
from lmkit.nn.char_ids import vocabulary_char_ids
from lmkit.nn.lstm import LSTMStack, reverse_padded
from lmkit.nn.stack import EncoderStack

from .config import CVTConfig


class CVTEncoder(EncoderStack):
    """Token ids (B, T) -> the primary module's hidden layer (B, T, d_projection); `views` gives the rest."""

    task_recipe = "cvt"  # lmkit finetune: labelled and unlabelled batches alternate (plugins/cvt/recipe.py)

    def __init__(self, config: CVTConfig):
        super().__init__()
        self.config = config
        self.register_buffer("char_table", torch.zeros(config.vocab_size, config.max_characters_per_token,
                                                       dtype=torch.long))
        self.word_embeddings = nn.Embedding(config.vocab_size, config.d_word)
        self.char_cnn = CharCNN(config.n_characters, config.d_char, config.filters, 0, None)
        d_in = config.d_word + self.char_cnn.d_out
        self.forward_lstm = LSTMStack(d_in, config.d_first, 1)
        self.backward_lstm = LSTMStack(d_in, config.d_first, 1)
        self.second_lstm = LSTMStack(2 * config.d_first, config.d_second, 1, bidirectional=True)
        self.primary = nn.Linear(self.d_views, config.d_projection)
        self.drop = nn.Dropout(config.dropout)

    d_model = property(lambda self: self.config.d_projection)
    d_views = property(lambda self: 2 * self.config.d_first + 2 * self.config.d_second)  # [fwd_1; bwd_1; h_2]
    max_positions = None  # recurrent: any length

    def bind_tokenizer(self, tokenizer) -> None:
        """Spell the tokenizer's vocabulary into char ids (lmkit.nn.char_ids); the pad token spells as padding."""
        roles = tokenizer.special_tokens
        tokens = [tokenizer.id_to_token(i) for i in range(min(tokenizer.vocab_size, self.config.vocab_size))]
        tokens += [None] * (self.config.vocab_size - len(tokens))
        table = vocabulary_char_ids(tokens, self.config.max_characters_per_token, bos=roles.get("bos"),
                                    eos=roles.get("eos"), pad=roles.get("pad"))
        self.char_table.copy_(torch.from_numpy(table))

    def views(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"forward": fwd_1, "backward": bwd_1 (B, T, d_first), "second": h_2 (B, T, 2 d_second),
        "full": [fwd_1; bwd_1; h_2] (B, T, d_views)}, in word order, with dropout when training.

        The right-to-left LSTM reads each row reversed in place (reverse_padded), so padding comes after
        every real token in both directions and a real state never reads it.
        """
        B, T = input_ids.shape
        if T == 0:
            raise LmkitError("the text has no tokens to tag; give text with at least one word")
        x = torch.cat([self.word_embeddings(input_ids), self.char_cnn(self.char_table[input_ids])], dim=-1)
        x = self.drop(x)
        lengths = None if attention_mask is None else attention_mask.long().sum(1)
        forward, _ = self.forward_lstm(x)
        if lengths is None:
            backward = self.backward_lstm(x.flip(1))[0].flip(1)
        else:
            width = x.shape[-1]
            backward = self.backward_lstm(reverse_padded(x, lengths, width))[0]
            backward = reverse_padded(backward, lengths, self.config.d_first)
        first = torch.cat([forward, backward], dim=-1)
        second, _ = self.second_lstm(self.drop(first), lengths)
        return {"forward": forward, "backward": backward, "second": second,
                "full": torch.cat([first, second], dim=-1)}

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> EncoderOutput:
        """last_hidden_state: ReLU(W drop([fwd_1; bwd_1; h_2])) (B, T, d_projection), zero at padding;
        pooler_output: its mean over real tokens (B, d_projection); hidden_states: (x-free) layers 1 and 2."""
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool())
        views = self.views(input_ids, None if attention_mask is None else mask)
        keep = mask[..., None].to(views["full"].dtype)
        hidden = torch.relu(self.primary(self.drop(views["full"]))) * keep
        pooled = hidden.sum(1) / keep.sum(1).clamp(min=1)
        first = torch.cat([views["forward"], views["backward"]], dim=-1)
        return EncoderOutput(hidden, mask, pooler_output=pooled, hidden_states=(first * keep, views["second"] * keep))
