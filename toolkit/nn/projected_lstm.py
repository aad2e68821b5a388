"""An LSTM with a projected, clipped output: the cell of ELMo's biLM (Peters et al. 2018 §3.1; Sak et al. 2014).

bilm-tf builds it from TF1's LSTMCell(num_units, num_proj, cell_clip, proj_clip); written out here
because nn.LSTM(proj_size=...) clips neither the cell nor the projection. Per step, in torch's gate
order (i, f, g, o; TF's is i, j, f, o, with j the candidate g):

    gates = x_t W_ih^T + h_{t-1} W_hh^T + b            # b includes TF's forget_bias (1.0) on f
    c_t = clip(sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g), cell_clip)
    h_t = clip((sigmoid(o) * tanh(c_t)) W_proj^T, proj_clip)      # (B, proj_size): the output and the state

The time loop (`projected_lstm_scan`) runs as plain Python, which is the fastest for the short
sequences and small batches it trains on; under an ONNX export it runs compiled by TorchScript, so
the graph keeps it a Loop over the sequence length instead of unrolling the example's length. The layer is stateless: every call
starts from zeros (the same sentence gives the same states whatever came before it).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def projected_lstm_scan(gates_x: Tensor, weight_hh: Tensor, weight_proj: Tensor, cell_clip: float,
                        proj_clip: float) -> Tensor:
    """G independent LSTMs of one shape, stepped together from zero state (both directions of a biLM layer).

    gates_x (T, G, B, 4H): the input's part of the gates, bias included; weight_hh (G, 4H, P);
    weight_proj (G, P, H) -> outputs h (T, G, B, P). cell_clip / proj_clip <= 0: no clipping.
    """
    G = gates_x.size(1)
    B = gates_x.size(2)
    H = weight_proj.size(2)
    P = weight_proj.size(1)
    recurrent, projection = weight_hh.transpose(1, 2), weight_proj.transpose(1, 2)
    h = torch.zeros(G, B, P, dtype=gates_x.dtype, device=gates_x.device)
    c = torch.zeros(G, B, H, dtype=gates_x.dtype, device=gates_x.device)
    outputs = []
    for t in range(gates_x.size(0)):
        gates = torch.baddbmm(gates_x[t], h, recurrent)  # (G, B, 4H)
        i, f, g, o = gates.chunk(4, 2)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if cell_clip > 0:
            c = torch.clamp(c, -cell_clip, cell_clip)
        h = torch.bmm(torch.sigmoid(o) * torch.tanh(c), projection)
        if proj_clip > 0:
            h = torch.clamp(h, -proj_clip, proj_clip)
        outputs.append(h)
    return torch.stack(outputs)


def run_together(layers, inputs: list[Tensor]) -> list[Tensor]:
    """Each ProjectedLSTM of `layers` (same sizes and clips) over its input (B, T, I): outputs (B, T, P) each.

    One time loop steps them all, batched over the layers: a biLM's forward and backward layer k
    are independent, and stepping them together halves the sequential steps.
    """
    first = layers[0]
    x = torch.stack(inputs)  # (G, B, T, I)
    G, B, T, _ = x.shape
    weight_ih = torch.stack([layer.weight_ih for layer in layers])  # (G, 4H, I)
    bias = torch.stack([layer.bias for layer in layers])[:, None, :]  # (G, 1, 4H)
    gates_x = torch.baddbmm(bias, x.reshape(G, B * T, -1), weight_ih.transpose(1, 2))  # all steps at once
    gates_x = gates_x.view(G, B, T, -1).permute(2, 0, 1, 3)  # (T, G, B, 4H)
    scan = _scripted_scan() if torch.onnx.is_in_onnx_export() else projected_lstm_scan
    h = scan(gates_x, torch.stack([layer.weight_hh for layer in layers]),
             torch.stack([layer.weight_proj for layer in layers]), first.cell_clip, first.proj_clip)
    return list(h.permute(1, 2, 0, 3).unbind(0))  # G x (B, T, P)


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
        return run_together([self], [x])[0]


_SCRIPTED = []


def _scripted_scan():
    """projected_lstm_scan compiled by TorchScript (once): what an export traces, a Loop in the ONNX graph."""
    if not _SCRIPTED:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is the legacy exporter's loop path
            _SCRIPTED.append(torch.jit.script(projected_lstm_scan))
    return _SCRIPTED[0]
