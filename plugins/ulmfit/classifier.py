"""ULMFiT's classifier (Howard and Ruder 2018 §3.3): the `ulmfit` task recipe of `lmkit finetune`.

    text -> tokens (the last max_length kept) -> the AWD-LSTM read in BPTT chunks, its state carried
         -> concat pooling [h_T; maxpool(H); meanpool(H)] over the real tokens       (N, 3E)
         -> BatchNorm, dropout, Linear(3E, 50), ReLU, BatchNorm                       (the recipe's pooler)
         -> dropout, Linear(50, labels)                                               (the sequence head)

BPT3C: a document longer than one BPTT window is read in chunks of `bptt` tokens, the state carried
from each chunk to the next, and pooled over every state kept; a document longer than
`--max-length` keeps its last max_length tokens (fastai keeps the end too) with finetune's warning.
Training follows §3.2-3.3 through training_arguments: the `ulmfit` optimizer (discriminative
rates, one more group unfrozen every epoch, top first) and the `stlr` schedule.
"""
from __future__ import annotations

from lmkit.contract import EncoderOutput
from lmkit.errors import SpecError
from lmkit.tasks.inputs import _truncate


class ULMFiTInputs:
    """The text as it is (two texts joined by </s> when the tokenizer has one); features read at its last
    token. Too long: tokens are cut from the front of the longest text, so each keeps its end."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode(self, segments: tuple[str, ...]) -> tuple[list[int], list[int], int, int]:
        pieces = [self.tokenizer.encode(text)[::-1] for text in segments]  # reversed: _truncate cuts the end
        separator = [] if self.tokenizer.eos_id is None else [self.tokenizer.eos_id]
        cut = _truncate(pieces, max(1, self.max_length - len(separator) * (len(pieces) - 1)))
        ids = list(pieces[0][::-1])
        for piece in pieces[1:]:
            ids += separator + piece[::-1]
        return ids, [0] * len(ids), max(len(ids) - 1, 0), cut


class ULMFiTRecipe:
    name = "ulmfit"
    default_lr = 0.01  # §4: the classifier's rate
    reference_width = 400  # AWD-LSTM's d_embed
    default_warmup_ratio = 0.0  # STLR rises on its own
    bidirectional = False
    bptt = 70  # §4: BPTT 70; BPT3C reads documents in chunks of this many tokens
    hidden = 50  # §4 / fastai: one hidden layer of 50 in the head
    pooler_dropout = 0.4  # fastai's output_p on the pooled features; the head's own is finetune's --dropout

    def prepare(self, tokenizer) -> bool:
        return False

    def auxiliary_objectives(self, aux_lm_weight: float | None) -> list[dict]:
        if aux_lm_weight:
            from lmkit.errors import LmkitError

            raise LmkitError("--aux-lm-weight adds GPT's language-model loss; ULMFiT's classifier has none: leave "
                             "it out")
        return []

    def inputs(self, tokenizer, max_length: int) -> ULMFiTInputs:
        return ULMFiTInputs(tokenizer, max_length)

    def run(self, model, input_ids, attention_mask, token_type_ids) -> EncoderOutput:
        """BPT3C: the decoder over input_ids (N, T) in chunks of `bptt`, its state carried; (N, T, E) states."""
        import torch

        from .model import AWDLSTMDecoder

        decoder = model.decoder
        if not isinstance(decoder, AWDLSTMDecoder):
            raise SpecError("the ulmfit recipe needs an AWD-LSTM language model (a model composed from awd-lstm "
                            f"or awd-lstm-tiny); this one's stack is {type(model.feature_stack).__name__}")
        cache = decoder.new_cache(input_ids.size(0))
        states = [decoder.hidden_states(input_ids[:, start:start + self.bptt], cache)
                  for start in range(0, input_ids.size(1), self.bptt)]
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool())
        return EncoderOutput(torch.cat(states, dim=1), mask)

    def features(self, output: EncoderOutput, extract_index):
        """Concat pooling, (N, 3E): [the state at extract_index (the last real token); max; mean over real tokens]."""
        import torch

        states, mask = output.last_hidden_state, output.attention_mask[..., None]  # (N, T, E), (N, T, 1)
        last = states[torch.arange(states.size(0), device=states.device), extract_index]
        largest = states.masked_fill(~mask, float("-inf")).max(1).values
        mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.cat([last, largest, mean], dim=-1)

    def pooler(self, d_model: int):
        """fastai's first LinBnDrop block and the batch norm of the second: (module, hidden)."""
        from torch import nn

        return nn.Sequential(nn.BatchNorm1d(3 * d_model), nn.Dropout(self.pooler_dropout),
                             nn.Linear(3 * d_model, self.hidden), nn.ReLU(), nn.BatchNorm1d(self.hidden)), self.hidden

    def training_arguments(self, steps: int, per_epoch: int) -> dict:
        """§3.2-3.3: discriminative rates, one more group unfrozen each epoch (top first), STLR; Adam (0.7, 0.99)."""
        return {"optimizer": "ulmfit", "optimizer_options": {"unfreeze_every": per_epoch}, "schedule": "stlr",
                "beta1": 0.7, "beta2": 0.99, "weight_decay": 0.01}
