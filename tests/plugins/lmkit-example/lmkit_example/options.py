from dataclasses import dataclass


@dataclass(frozen=True)
class BigramOptions:
    vocab_size: int = 256

    def __post_init__(self):
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {self.vocab_size}")
