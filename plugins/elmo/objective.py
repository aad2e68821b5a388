"""The biLM objective: a forward and a backward language model with one shared softmax (Peters et al. 2018 §3.1).

Training reads windows of the token stream (as causal LM does), with every word's char ids beside them
(lmkit.token_inputs: an unknown word's own characters, not those of <unk>). In a window w_0 .. w_T the forward
LSTMs' top state at t predicts w_{t+1} and the backward LSTMs' top state at t predicts w_{t-1}:

    loss = (NLL_fwd + NLL_bwd) / 2

bilm-tf's `total_loss` is this mean, so exp(loss) is its reported average perplexity; the gradient
is that of forward NLL + backward NLL, halved.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.objectives.base import ObjectiveModule

from .config import BiLMObjectiveOptions


class BiLMObjective(ObjectiveModule):
    """softmax: nn.Linear(P, V), shared by both directions (bilm-tf `softmax/W`, `softmax/b`)."""

    models_language = True

    def __init__(self, options: BiLMObjectiveOptions, projection_dim: int, vocab_size: int):
        super().__init__(options)
        self.softmax = nn.Linear(projection_dim, vocab_size)
        nn.init.normal_(self.softmax.weight, std=1.0 / math.sqrt(projection_dim))
        nn.init.zeros_(self.softmax.bias)

    @classmethod
    def for_model(cls, options, model) -> BiLMObjective:
        encoder = model.encoder
        return cls(options or BiLMObjectiveOptions(), encoder.config.projection_dim, encoder.config.vocab_size)

    @classmethod
    def check_composition(cls, options, spec, tokenizer) -> None:
        from lmkit.errors import SpecError
        from lmkit.objectives.base import require_end_of_text
        from lmkit.options import options_to_dict

        require_end_of_text(tokenizer)
        vocab = options_to_dict(spec.encoder.options).get("vocab_size") if spec.encoder is not None else None
        k = (options or BiLMObjectiveOptions()).sampled_softmax
        if vocab is not None and k >= vocab:
            raise SpecError(f"sampled_softmax={k} samples at least the whole vocabulary of {vocab} "
                            f"words; give fewer than {vocab}, or 0 for the full softmax")

    @classmethod
    def batches(cls, context):
        from lmkit.training.batches import TokenWindows

        return TokenWindows(context)

    def directions_nll(self, model, input_ids: torch.Tensor, reduction: str = "mean",
                       char_ids: torch.Tensor | None = None):
        """(forward NLL, backward NLL) of a full window batch (B, T + 1), each over B * T tokens; char_ids
        (B, T + 1, C): every token's characters (ELMoBiLM.token_states; None: the vocabulary's spelling)."""
        encoder = model.encoder
        _, forward, backward = encoder.directions(input_ids, char_ids=char_ids)
        top_f, top_b = encoder.drop(forward[-1]), encoder.drop(backward[-1])  # bilm-tf drops the LSTM output
        f_hidden, f_target = top_f[:, :-1], input_ids[:, 1:]
        b_hidden, b_target = top_b[:, 1:], input_ids[:, :-1]
        return self._nll(f_hidden, f_target, reduction), self._nll(b_hidden, b_target, reduction)

    def _nll(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
        hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        k = self.options.sampled_softmax
        if self.training and k and k < self.softmax.out_features:
            return self._sampled_nll(hidden, targets, k, reduction)
        logits = self.softmax(hidden).float()
        return F.cross_entropy(logits, targets, reduction=reduction)

    def _sampled_nll(self, hidden, targets, k: int, reduction: str) -> torch.Tensor:
        """Sampled softmax (Jean et al. 2015), as TF's sampled_softmax_loss with bilm-tf's log-uniform sampler:
        k negatives drawn from P(i) = log((i + 2) / (i + 1)) / log(V + 1) (ids sorted by frequency), every
        logit corrected by -log(k P(i)), and a negative that is the target removed (remove_accidental_hits)."""
        V = self.softmax.out_features
        ids = torch.arange(V, device=hidden.device, dtype=torch.float32)
        probs = torch.log((ids + 2) / (ids + 1)) / math.log(V + 1)
        sampled = torch.multinomial(probs, k, replacement=True)  # (k,)
        weight, bias = self.softmax.weight, self.softmax.bias
        true_logits = (hidden * weight[targets]).sum(-1) + bias[targets] - torch.log(k * probs[targets])
        sampled_logits = hidden @ weight[sampled].t() + bias[sampled] - torch.log(k * probs[sampled])
        sampled_logits = sampled_logits.masked_fill(sampled[None, :] == targets[:, None], float("-inf"))
        logits = torch.cat([true_logits[:, None], sampled_logits], dim=1).float()
        return F.cross_entropy(logits, torch.zeros_like(targets), reduction=reduction)

    def forward(self, model, batch: dict) -> torch.Tensor:
        forward, backward = self.directions_nll(model, batch["input_ids"], char_ids=batch.get("char_ids"))
        return 0.5 * (forward + backward)

    @torch.no_grad()
    def score_text(self, model, input_ids: torch.Tensor, char_ids: torch.Tensor | None = None
                   ) -> dict[str, tuple[float, int]]:
        """{"forward": (summed NLL, tokens), "backward": (...)} of windows (B, T + 1), full softmax; char_ids as
        directions_nll reads them."""
        forward, backward = self.directions_nll(model, input_ids, reduction="sum", char_ids=char_ids)
        count = input_ids.shape[0] * (input_ids.shape[1] - 1)
        return {"forward": (forward.item(), count), "backward": (backward.item(), count)}
