from dataclasses import dataclass


@dataclass(frozen=True)
class CausalLMOptions:
    label_smoothing: float = 0.0  # 0 gives the plain next-token cross-entropy that perplexity measures

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
