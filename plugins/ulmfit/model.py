"""AWD-LSTM (Merity et al. 2018), the language model of ULMFiT (Howard and Ruder 2018), as a causal decoder.

    input_ids (B, T) -> embedding, whole words dropped            (V, E)   embed_dropout
                     -> locked dropout                            (B, T, E) input_dropout
                     -> n_layers LSTMs, hidden-to-hidden DropConnect       weight_dropout
                        locked dropout between them                        hidden_dropout
                        the last one E wide, so the decoder can be tied
                     -> locked dropout on the last output         (B, T, E) output_dropout
                     -> logits = h E^T + b                        (B, T, V)

Every dropout is a function of the tensors (lmkit.nn.dropout), masks drawn once per forward pass;
the LSTM layers are plain nn.LSTM modules whose parameters are only ever read. The cache is the
recurrent state itself (lmkit.nn.recurrent.RecurrentCache); the decoder is `stateful`: causal-LM
training carries that state, detached, from one BPTT window to the next (ULMFiT §3, fastai's LM
data loader), while evaluation and generation start from zeros.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmkit.nn.dropout import embedding_dropout, locked_mask, weight_drop
from lmkit.nn.recurrent import RecurrentCache, lstm_layer, masked_steps
from lmkit.nn.stack import CausalDecoderStack

from .config import AWDLSTMConfig


class AWDLSTMDecoder(CausalDecoderStack):
    """The AWD-LSTM language model (lmkit.contract.CausalDecoder); see the module docstring."""

    max_positions = None  # recurrent: any length
    stateful = True
    task_recipe = "ulmfit"  # lmkit finetune: concat pooling over BPT3C (classifier.py)

    def __init__(self, config: AWDLSTMConfig):
        super().__init__()
        self.config = config
        E, H, L = config.d_embed, config.hidden_size, config.n_layers
        self.embedding = nn.Embedding(config.vocab_size, E)
        self.sizes = [H] * (L - 1) + [E]  # the last layer is the embedding's width (tied decoder)
        self.layers = nn.ModuleList(nn.LSTM(E if i == 0 else H, size, batch_first=True)
                                    for i, size in enumerate(self.sizes))
        if config.tie_weights:
            self.lm_head_bias = nn.Parameter(torch.zeros(config.vocab_size))
        else:
            self.lm_head = nn.Linear(E, config.vocab_size)
            nn.init.zeros_(self.lm_head.bias)
        nn.init.uniform_(self.embedding.weight, -config.init_range, config.init_range)

    @property
    def d_model(self) -> int:
        """The width of the states it returns: the last layer's, d_embed."""
        return self.config.d_embed

    def new_cache(self, batch_size: int, max_len: int | None = None) -> RecurrentCache:
        """Zero (h, c) for every layer: [h_0, c_0, h_1, c_1, ...], each (batch_size, size of the layer)."""
        weight = self.embedding.weight
        return RecurrentCache([weight.new_zeros(batch_size, size) for size in self.sizes for _ in (0, 1)])

    def run(self, input_ids: Tensor, cache: RecurrentCache | None = None, attention_mask: Tensor | None = None
            ) -> tuple[Tensor, Tensor]:
        """input_ids (B, T) after the cache's state -> (the last layer's output after output dropout, before
        it), each (B, T, E): AR regularises the first, TAR the second (Merity et al. 2018 §4.6).

        attention_mask (B, past + T), False at left padding: a padded position leaves the state as it was.
        The cache, if given, is advanced to the state after input_ids.
        """
        config, training = self.config, self.training
        B, T = input_ids.shape
        x = F.embedding(input_ids, embedding_dropout(self.embedding.weight, config.embed_dropout, training))
        if training and config.input_dropout:
            x = x * locked_mask(B, x.size(-1), config.input_dropout, x)
        # Drawn once per call, so every time step (and every column of a padded prompt) shares them.
        weights = [[layer.weight_ih_l0, weight_drop(layer.weight_hh_l0, config.weight_dropout, training),
                    layer.bias_ih_l0, layer.bias_hh_l0] for layer in self.layers]
        between = [locked_mask(B, size, config.hidden_dropout, x) if training and config.hidden_dropout else None
                   for size in self.sizes[:-1]]

        def stack(x: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
            new = []
            for i, layer_weights in enumerate(weights):
                x, (h, c) = lstm_layer(x, (states[2 * i], states[2 * i + 1]), layer_weights)
                new += [h, c]
                if i < len(between) and between[i] is not None:
                    x = x * between[i]
            return x, new

        states = (cache if cache is not None else self.new_cache(B)).states
        new_mask = None if attention_mask is None else attention_mask[:, -T:]
        if new_mask is None or bool(new_mask.all()):
            raw, states = stack(x, states)
        else:
            raw, states = masked_steps(stack, x, states, new_mask)
        if cache is not None:
            cache.states = states
            cache.length += T
        dropped = raw * locked_mask(B, raw.size(-1), config.output_dropout, raw) if (
            training and config.output_dropout) else raw
        return dropped, raw

    def hidden_states(self, input_ids: Tensor, cache: RecurrentCache | None = None,
                      attention_mask: Tensor | None = None, position_ids: Tensor | None = None) -> Tensor:
        """The last layer's output (B, T, E) after output dropout (none in eval); position_ids are not used."""
        return self.run(input_ids, cache, attention_mask)[0]

    def logits(self, hidden_states: Tensor) -> Tensor:
        """(B, T, E) -> (B, T, V), through the embedding matrix when tied."""
        if self.config.tie_weights:
            return F.linear(hidden_states, self.embedding.weight, self.lm_head_bias)
        return self.lm_head(hidden_states)
