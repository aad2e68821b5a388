"""An LSTM with a projected, clipped output: the cell of ELMo's biLM (Peters et al. 2018 §3.1; Sak et al. 2014).

bilm-tf builds it from TF1's LSTMCell(num_units, num_proj, cell_clip, proj_clip); written out here
because nn.LSTM(proj_size=...) clips neither the cell nor the projection. Per step, in torch's gate
order (i, f, g, o; TF's is i, j, f, o, with j the candidate g):

    gates = x_t W_ih^T + h_{t-1} W_hh^T + b            # b includes TF's forget_bias (1.0) on f
    c_t = clip(sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g), cell_clip)
    h_t = clip((sigmoid(o) * tanh(c_t)) W_proj^T, proj_clip)      # (B, proj_size): the output and the state

The time loop is TorchScript (`projected_lstm_scan`), so an ONNX export keeps it a Loop over the
sequence length instead of unrolling the example's length. The layer is stateless: every call
starts from zeros (the same sentence gives the same states whatever came before it).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


@torch.jit.script
def projected_lstm_scan(gates_x: Tensor, weight_hh: Tensor, weight_proj: Tensor, cell_clip: float,
                        proj_clip: float) -> Tensor:
    """gates_x (T, B, 4H): the input's part of the gates, bias included -> outputs h (T, B, P), from zero state.

    cell_clip / proj_clip <= 0: no clipping.
    """
    B = gates_x.size(1)
    H = weight_proj.size(1)
    P = weight_proj.size(0)
    h = torch.zeros(B, P, dtype=gates_x.dtype, device=gates_x.device)
    c = torch.zeros(B, H, dtype=gates_x.dtype, device=gates_x.device)
    outputs = []
    for t in range(gates_x.size(0)):
        gates = gates_x[t] + torch.mm(h, weight_hh.t())
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if cell_clip > 0:
            c = torch.clamp(c, -cell_clip, cell_clip)
        h = torch.mm(torch.sigmoid(o) * torch.tanh(c), weight_proj.t())
        if proj_clip > 0:
            h = torch.clamp(h, -proj_clip, proj_clip)
        outputs.append(h)
    return torch.stack(outputs)


class ProjectedLSTM(nn.Module):
    """One left-to-right layer: x (B, T, input_size) -> h (B, T, proj_size), from a zero state.

    Right padding comes after every real token, so no real position reads it; a caller runs the
    backward direction over rows reversed in place (lmkit.nn.lstm.reverse_padded).
    """

    def __init__(self, input_size: int, hidden_size: int, proj_size: int, cell_clip: float = 0.0,
                 proj_clip: float = 0.0, forget_bias: float = 1.0):
        super().__init__()
        self.input_size, self.hidden_size, self.proj_size = input_size, hidden_size, proj_size
        self.cell_clip, self.proj_clip = float(cell_clip), float(proj_clip)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, proj_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.weight_proj = nn.Parameter(torch.empty(proj_size, hidden_size))
        # TF's LSTMCell initialises its kernel Glorot-uniform over [x; h] and adds forget_bias at run time;
        # here the forget bias starts at that value and is learned with the rest.
        bound = math.sqrt(6.0 / (input_size + proj_size + 4 * hidden_size))
        for weight in (self.weight_ih, self.weight_hh):
            nn.init.uniform_(weight, -bound, bound)
        nn.init.xavier_uniform_(self.weight_proj)
        with torch.no_grad():
            self.bias[hidden_size:2 * hidden_size] = forget_bias

    def forward(self, x: Tensor) -> Tensor:
        gates_x = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight_ih.t())  # all steps at once
        gates_x = gates_x.view(x.shape[0], x.shape[1], -1).transpose(0, 1)  # (T, B, 4H)
        h = projected_lstm_scan(gates_x, self.weight_hh, self.weight_proj, self.cell_clip, self.proj_clip)
        return h.transpose(0, 1)  # (B, T, P)
