"""The task model of Peters et al. 2018 §3.3 for tagging: a BiLSTM over [word embedding; ELMo], run as the layers
between a token head's features and its linear layer (lmkit.plugins.elmo.recipe, the elmo-bilstm recipes).

    x_k = E[w_k]                                   learned from scratch, as wide as ELMo
    h_k = BiLSTM([x_k; ELMo_k])                    ELMo_k: the frozen biLM's mix, learned with the tagger
    out = [h_k; ELMo'_k] (elmo_output), else h_k   ELMo'_k: a second mix with its own weights and gamma

Exported (lmkit export of a fine-tuned tagger), it is a graph of its own beside the biLM's, reading the biLM
graph's outputs (export_module): the export runs the same tagger torch-free (lmkit.exports.heads).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmkit.contract import EncoderOutput
from lmkit.nn.lstm import reverse_padded
from lmkit.nn.scalar_mix import ScalarMix


class BiLSTMTagger(nn.Module):
    """(EncoderOutput of the elmo recipe, input_ids (B, T)) -> (B, T, width): each token's tagger state.

    vocab_size: the word vocabulary (the biLM's softmax's); d_elmo: the width of ELMo's layers (2P);
    n_layers: how many layers the output mix reads (L + 1). The BiLSTM has d_elmo / 2 cells each way,
    so h_k is as wide as ELMo_k; it reads each row's real tokens only (packed by the mask's lengths).
    """

    def __init__(self, vocab_size: int, d_elmo: int, n_layers: int, *, elmo_input: bool = True,
                 elmo_output: bool = False, layer_norm: bool = False, dropout: float = 0.5):
        super().__init__()
        self.elmo_input, self.elmo_output = elmo_input, elmo_output
        self.word_embedding = nn.Embedding(vocab_size, d_elmo)
        self.lstm = nn.LSTM(d_elmo * (2 if elmo_input else 1), d_elmo // 2, batch_first=True, bidirectional=True)
        self.output_mix = ScalarMix(n_layers, layer_norm=layer_norm) if elmo_output else None
        self.drop = nn.Dropout(dropout)  # on ELMo's vectors before use (the paper's allennlp configurations)
        self.width = 2 * (d_elmo // 2) + (d_elmo if elmo_output else 0)

    def forward(self, output: EncoderOutput, input_ids: torch.Tensor) -> torch.Tensor:
        mask = output.attention_mask.bool()
        x = self.word_embedding(input_ids)
        if self.elmo_input:
            x = torch.cat([x, self.drop(output.last_hidden_state)], dim=-1)
        lengths = mask.long().sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.shape[1])
        if self.output_mix is not None:
            mixed = self.output_mix(list(output.hidden_states), mask) * mask[..., None].to(states.dtype)
            states = torch.cat([states, self.drop(mixed)], dim=-1)
        return states

    @property
    def encoder_outputs(self) -> tuple[str, ...]:
        """What the export's tagger graph reads from the biLM graph's outputs (plugins/elmo/export.py), in order:
        the mix it reads as input, the layers it mixes at the output."""
        return ("last_hidden_state",) * self.elmo_input + ("layers",) * self.elmo_output

    def export_module(self) -> nn.Module:
        """The tagger as lmkit export traces it (lmkit.exports.heads): forward(input_ids (B, T), attention_mask
        (B, T), then those of last_hidden_state (B, T, D) and layers (B, L + 1, T, D) it reads, as
        encoder_outputs names them) -> states (B, T, width), as forward() in eval mode gives them, zero at
        padding."""
        return TaggerGraph(self)


class TaggerGraph(nn.Module):
    """BiLSTMTagger without packed sequences, which ONNX export does not take: the forward LSTM reads the
    right-padded rows as they are (its states at real tokens never see the padding after them), the backward
    one each row's real tokens reversed in place (lmkit.nn.lstm.reverse_padded), as packing gives. Its two
    LSTMs are one-directional copies of the tagger's bidirectional one, made when the export is traced."""

    def __init__(self, tagger: BiLSTMTagger):
        super().__init__()
        self.tagger = tagger
        lstm = tagger.lstm
        self.forward_lstm, self.backward_lstm = (nn.LSTM(lstm.input_size, lstm.hidden_size, batch_first=True)
                                                 for _ in range(2))
        with torch.no_grad():
            for direction, suffix in ((self.forward_lstm, ""), (self.backward_lstm, "_reverse")):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(direction, f"{name}_l0").copy_(getattr(lstm, f"{name}_l0{suffix}"))

    def forward(self, input_ids, attention_mask, *encoder_outputs):
        tagger = self.tagger
        given = dict(zip(tagger.encoder_outputs, encoder_outputs))
        mask = attention_mask.bool()
        x = tagger.word_embedding(input_ids)
        keep = mask[..., None].to(x.dtype)
        if tagger.elmo_input:
            x = torch.cat([x, given["last_hidden_state"]], dim=-1)
        lengths = mask.long().sum(1)
        forward = self.forward_lstm(x)[0]
        backward = reverse_padded(self.backward_lstm(reverse_padded(x, lengths, self.backward_lstm.input_size))[0],
                                  lengths, self.backward_lstm.hidden_size)
        states = torch.cat([forward, backward], dim=-1) * keep
        if tagger.output_mix is not None:
            mixed = tagger.output_mix(list(given["layers"].unbind(1)), mask) * keep
            states = torch.cat([states, mixed], dim=-1)
        return states
