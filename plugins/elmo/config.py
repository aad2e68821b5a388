"""The options of ELMo's biLM and its objective (torch-free: specs are checked against them first).

Defaults are the released "original" model (Peters et al. 2018 §3.1, bilm-tf options.json of
elmo_2x4096_512_2048cnn_2xhighway): char CNN 2048 filters, 2 highways, projection 512, 2 layers of
4096 cells projected to 512 per direction, cell and projection clipped at 3, a residual into layer 2.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# (width, channels) of bilm-tf's char_cnn.filters: 2048 channels in all.
ORIGINAL_FILTERS = ((1, 32), (2, 32), (3, 64), (4, 128), (5, 256), (6, 512), (7, 1024))
LAYERS_HELP = "mix (the scalar mix), all (every layer, concatenated on the feature axis), or a layer index"


@dataclass(frozen=True)
class ELMoConfig:
    vocab_size: int = 793471  # the softmax's words (1B Word Benchmark's vocabulary in the paper)
    # Token encoder: char ids as bilm-tf makes them (lmkit.nn.char_ids).
    n_characters: int = 262
    max_characters_per_token: int = 50
    d_char: int = 16
    filters: tuple[tuple[int, int], ...] = ORIGINAL_FILTERS
    n_highway: int = 2
    activation: str = "relu"
    # biLM: per direction n_layers LSTMs of lstm_dim cells, each projected to projection_dim.
    projection_dim: int = 512
    lstm_dim: int = 4096
    n_layers: int = 2
    cell_clip: float = 3.0  # 0: none
    proj_clip: float = 3.0  # 0: none
    use_skip_connections: bool = True  # a residual around every layer but the first (bilm-tf)
    dropout: float = 0.1  # on each LSTM's input and the top layer's output, in training
    # The scalar mix of `lmkit embed` and task features: layer-normalise each layer first (Peters et al. §3.2).
    mix_layer_norm: bool = False
    init_range: float = field(default=0.0, metadata={"help": "0: bilm-tf's initialisation; else U(-r, r)"})

    def __post_init__(self):
        object.__setattr__(self, "filters", tuple(tuple(int(x) for x in f) for f in self.filters))
        for name in ("vocab_size", "n_characters", "d_char", "n_highway", "projection_dim", "lstm_dim", "n_layers"):
            value = getattr(self, name)
            if value < (0 if name == "n_highway" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.max_characters_per_token < 3:
            raise ValueError(f"max_characters_per_token must be at least 3, got {self.max_characters_per_token}")
        if not self.filters or any(len(f) != 2 or f[0] < 1 or f[1] < 1 for f in self.filters):
            raise ValueError(f"filters must be (width, channels) pairs of positive integers, got {self.filters}")
        if max(w for w, _ in self.filters) > self.max_characters_per_token:
            raise ValueError(f"a filter is wider than max_characters_per_token ({self.max_characters_per_token})")
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be relu or tanh, got {self.activation!r}")
        if self.cell_clip < 0 or self.proj_clip < 0:
            raise ValueError("cell_clip and proj_clip must be 0 (none) or positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def n_filters(self) -> int:
        return sum(channels for _, channels in self.filters)


@dataclass(frozen=True)
class BiLMObjectiveOptions:
    # 0: the full softmax; N: sampled softmax with N log-uniform negatives in training (bilm-tf: 8192).
    sampled_softmax: int = 0

    def __post_init__(self):
        if self.sampled_softmax < 0:
            raise ValueError(f"sampled_softmax must be 0 (full softmax) or a positive count, got {self.sampled_softmax}")
