"""Next-token prediction, the objective of every autoregressive language model."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ObjectiveModule
from .options import CausalLMOptions
from .states import decoder_states_if_computed

STREAM = "stream"  # the batch column of a stateful decoder's training rows: which stream each continues


class CausalLM(ObjectiveModule):
    """Next-token prediction: position t predicts token t+1 (Radford et al. 2018, eq. 1).

    With a stateful decoder (lmkit.contract.CausalDecoder.stateful) training reads TokenStreams and
    starts each row from the state its stream ended the previous window with, detached: truncated
    backpropagation through time over the whole text (ULMFiT §3). That state, one row per stream, is
    `carried_state()`, which checkpoints save.
    """

    @property
    def models_language(self) -> bool:
        return self.options.label_smoothing == 0  # a smoothed loss is not the cross-entropy perplexity measures

    def __init__(self, options: CausalLMOptions):
        super().__init__()
        self.options = options
        self.carried: list[torch.Tensor] = []  # a stateful decoder's state per stream: each (streams, ...)

    @classmethod
    def check_composition(cls, options, spec, tokenizer) -> None:
        from .base import require_end_of_text

        require_end_of_text(tokenizer)

    @classmethod
    def batches(cls, context):
        """Training reads windows of the tokenized text; a stateful decoder's, streams of it in order."""
        from ..training.batches import TokenStreams, TokenWindows

        decoder = context.model.decoder
        return TokenStreams(context) if decoder is not None and decoder.stateful else TokenWindows(context)

    def carried_cache(self, model, batch: dict):
        """The cache to start this batch from: the carried state of each row's stream when a stateful
        decoder trains on streams, else None (a fresh start)."""
        if not (self.training and STREAM in batch and model.decoder.stateful):
            return None
        rows = batch[STREAM]
        cache = model.decoder.new_cache(len(rows))
        streams = int(rows.max()) + 1
        if not self.carried or self.carried[0].size(0) < streams:  # the first step: every stream from zeros
            grown = model.decoder.new_cache(streams).states
            for old, new in zip(self.carried, grown):
                new[:old.size(0)] = old
            self.carried = grown
        cache.states = [state.index_select(0, rows) for state in self.carried]
        return cache

    def carry(self, batch: dict, cache) -> None:
        """Keep the state each row ended at, detached, for its stream's next window."""
        if cache is not None:
            for carried, state in zip(self.carried, cache.states):
                carried[batch[STREAM]] = state.detach().to(carried.dtype)

    def carried_state(self) -> dict:
        return {str(i): state for i, state in enumerate(self.carried)}

    def load_carried_state(self, tensors: dict) -> None:
        self.carried = [tensors[str(i)] for i in range(len(tensors))]

    def forward(self, model, batch: dict) -> torch.Tensor:
        input_ids = batch["input_ids"]  # (B, T), or (B, S, T): the S sequences of each task example
        targets = batch.get("lm_labels", input_ids)  # -100 where nothing is predicted (padding)
        if input_ids.dim() == 3:  # fine-tuning's auxiliary LM loss (GPT §3.2) reads every sequence
            input_ids, targets = input_ids.flatten(0, 1), targets.flatten(0, 1)
        states = decoder_states_if_computed(model, batch)
        if states is not None:
            # A task head already ran the decoder on these sequences. Causal attention makes the
            # states of the first T-1 positions the same as those of input_ids[:, :-1] alone.
            logits = model.decoder.logits(states[:, :-1])  # (B, T-1, V)
        else:
            cache = self.carried_cache(model, batch)
            logits = model.decoder(input_ids[:, :-1], cache)  # (B, T-1, V)
            self.carry(batch, cache)
        targets = targets[:, 1:]
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
            ignore_index=-100, label_smoothing=self.options.label_smoothing,
        )
