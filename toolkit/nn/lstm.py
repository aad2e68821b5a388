"""LSTM stacks shared by the recurrent families (Seq2Seq, attentional NMT, CoVe; ELMo and ULMFiT next).

`LSTMStack` runs a multi-layer, optionally bidirectional LSTM over right-padded batches and is exact
under padding: a row gives the same states whatever the rows beside it. Padded batches go through
`pack_padded_sequence`, so neither direction ever reads a padding position and the final (h, c) of a
row is the one at its last real token. A batch without padding (lengths=None) runs the plain cuDNN /
ONNX LSTM, which is what the export traces.

A padded batch being exported (torch.onnx's tracer) runs `unpacked` instead: packing does not
become ONNX, and the ONNX LSTM op would read the padding. Each layer runs its directions one at a
time as left-to-right LSTMs, the backward one over each row reversed in place (reverse_padded), so
right padding comes after every real token in both directions and no real state ever reads it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class LSTMStack(nn.Module):
    """n_layers LSTM layers; with bidirectional=True each layer's output is [forward; backward].

    input (B, T, input_size) -> outputs (B, T, num_directions * hidden_size), and the final state
    (h, c), each (n_layers, B, num_directions * hidden_size): the two directions of a layer are
    concatenated, which is the shape a decoder initialised from the encoder wants.
    """

    def __init__(self, input_size: int, hidden_size: int, n_layers: int, *, bidirectional: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.hidden_size, self.n_layers, self.bidirectional = hidden_size, n_layers, bidirectional
        self.num_directions = 2 if bidirectional else 1
        # One nn.LSTM for all layers: cuDNN and the ONNX LSTM op run the layers back to back.
        # Dropout sits between layers only (Zaremba et al. 2014), as nn.LSTM applies it.
        self.lstm = nn.LSTM(input_size, hidden_size, n_layers, batch_first=True, bidirectional=bidirectional,
                            dropout=dropout if n_layers > 1 else 0.0)

    @property
    def output_size(self) -> int:
        return self.num_directions * self.hidden_size

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None,
                state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """lengths (B,) int: real positions of each row (the rest is padding); None: every row is full.

        state: (h, c) in nn.LSTM's layout (n_layers * num_directions, B, hidden_size), or None for zeros.
        """
        B, T, _ = inputs.shape
        if lengths is not None and torch.onnx.is_in_onnx_export():
            return self.unpacked(inputs, lengths, state)
        if lengths is None or bool((lengths == T).all()):
            outputs, (h, c) = self.lstm(inputs, state)
        else:
            packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
            outputs, (h, c) = self.lstm(packed, state)
            outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=T)
        return outputs, (self.merge_directions(h), self.merge_directions(c))

    def unpacked(self, inputs: torch.Tensor, lengths: torch.Tensor,
                 state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """forward's outputs for a right-padded batch without packing (what an export traces).

        The outputs at real positions are forward's; at padding they are finite and meaningless. The
        final state is each direction's at the end of the padded row, so only outputs are exact: the
        encoder features an export gives, not a recurrent decoder's start.
        """
        B = inputs.shape[0]
        x = inputs
        hs, cs = [], []
        for layer in range(self.n_layers):
            if layer and self.training and self.lstm.dropout:
                x = nn.functional.dropout(x, self.lstm.dropout, training=True)
            outputs = []
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                weights = [getattr(self.lstm, f"{name}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih",
                                                                               "bias_hh")]
                index = layer * self.num_directions + direction
                zeros = x.new_zeros(1, B, self.hidden_size)
                h0, c0 = (zeros, zeros) if state is None else (state[0][index:index + 1], state[1][index:index + 1])
                source = reverse_padded(x, lengths, x.shape[-1] if layer else inputs.shape[-1]) if direction else x
                y, h, c = torch._VF.lstm(source, (h0, c0), weights, True, 1, 0.0, False, False, True)
                outputs.append(reverse_padded(y, lengths, self.hidden_size) if direction else y)
                hs.append(h)
                cs.append(c)
            x = torch.cat(outputs, dim=-1)
        h, c = torch.cat(hs), torch.cat(cs)
        return x, (self.merge_directions(h), self.merge_directions(c))

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """One time step of a unidirectional stack: x (B, input_size), (h, c) each (n_layers, B, H).

        The fused cell per layer (torch.lstm_cell, nn.LSTMCell's kernel) on nn.LSTM's own weights:
        a decoder with input feeding must run step by step, and a full nn.LSTM call per step costs
        several times more. Returns the top layer's output (B, H) and the new (h, c).
        """
        assert not self.bidirectional, "only a left-to-right stack can be stepped"
        h, c = state
        hs, cs = [], []
        for layer in range(self.n_layers):
            if layer and self.training and self.lstm.dropout:
                x = nn.functional.dropout(x, self.lstm.dropout, training=True)
            weights = [getattr(self.lstm, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            x, c_new = torch.lstm_cell(x, (h[layer], c[layer]), *weights)
            hs.append(x)
            cs.append(c_new)
        return x, (torch.stack(hs), torch.stack(cs))

    def merge_directions(self, state: torch.Tensor) -> torch.Tensor:
        """(layers * directions, B, H) -> (layers, B, directions * H)."""
        L, B, H = self.n_layers, state.shape[1], self.hidden_size
        return state.view(L, self.num_directions, B, H).permute(0, 2, 1, 3).reshape(L, B, self.num_directions * H)


def uniform_init_(module: nn.Module, scale: float) -> None:
    """Every parameter from U(-scale, scale): Sutskever et al. 2014 §3.4 use scale 0.08."""
    for parameter in module.parameters():
        nn.init.uniform_(parameter, -scale, scale)


def reverse_padded(ids: torch.Tensor, lengths: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Each row's first lengths[b] entries in reverse order, the padding after them left in place.

    ids (B, T, ...) -> (B, T, ...). Sutskever et al. reverse the source sentence (not the target):
    the first target words then sit next to the source words they translate. width: the size of
    ids' last axis as a Python int, for a traced graph that should keep it a fixed size.
    """
    T = ids.shape[1]
    positions = torch.arange(T, device=ids.device)[None, :]  # (1, T)
    index = torch.where(positions < lengths[:, None], lengths[:, None] - 1 - positions, positions)  # (B, T)
    if ids.dim() == 3 and width is not None:
        index = index[:, :, None].expand(-1, -1, width)
    elif ids.dim() > 2:
        index = index.view(*index.shape, *([1] * (ids.dim() - 2))).expand_as(ids)
    return ids.gather(1, index)
