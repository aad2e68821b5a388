"""Contrastive prefixes (Qian et al. 2022, arXiv 2202.13257): one trained key/value prefix per attribute
over a frozen causal decoder, and the supervised objective that trains them together.

A prefix H_y is what the decoder's cache would hold after P positions (prefix tuning, Li and Liang
2021): keys and values for every layer, (n_layers, 2, n_heads, P, head_dim). The decoder reads a text
x after it, its tokens at positions P, P+1, ..., so log p(x | H_y) is one forward pass with the prefix
as the past. Qian et al. §3.1 (supervised):

    L = w1 * L_LM + w2 * L_d
    L_LM = -log p(x | H_y)                      (per token, over the text's own attribute y)
    L_d  = -log p(y | x),  p(y | x) = p(x | H_y) p(y) / sum_y' p(x | H_y') p(y')

with a uniform prior p(y), so p(y | x) is a softmax over the attributes of each text's summed
log-likelihood under every prefix: raising the own prefix's likelihood and, through the
normaliser, lowering the other prefixes'. w2 = 0 is plain prefix tuning (each prefix trained on its
own texts alone). The paper's prefix length, w1 and w2 are not confirmed (shared/PAPERS.md §17);
lmkit's defaults are options. Not here: prefix tuning's MLP reparameterisation (the prefixes are
trained directly) and the paper's unsupervised (Gumbel-softmax) variant.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmkit.errors import LmkitError
from lmkit.exports.decoder_only import ConcatCache  # a cache whose past is given tensors: differentiable
from lmkit.nn import KVCache


def cache_geometry(decoder: nn.Module) -> tuple[int, int, int]:
    """(n_layers, n_heads, head_dim) of a decoder whose cache is a lmkit.nn.KVCache; LmkitError for another cache."""
    probe = decoder.new_cache(1, 1)
    if not isinstance(probe, KVCache):
        raise LmkitError(f"prefixes are keys/values for a decoder's cache, and this decoder's cache is a "
                         f"{type(probe).__name__}; train them for an attention decoder (GPT, GPT-2)")
    n_layers, _, n_heads, _, head_dim = probe.keys.shape
    return n_layers, n_heads, head_dim


class AttributePrefixes(nn.Module):
    """A trainable prefix per attribute over `decoder`, which stays frozen (its parameters get no gradient).

    prefixes: (A, n_layers, 2, n_heads, P, head_dim), keys at [:, :, 0] and values at [:, :, 1].
    """

    def __init__(self, decoder: nn.Module, init: Tensor):
        super().__init__()
        self.decoder = decoder.requires_grad_(False)
        self.prefixes = nn.Parameter(init.clone())

    @property
    def length(self) -> int:
        return self.prefixes.size(4)

    def token_logprobs(self, input_ids: Tensor, attention_mask: Tensor, attribute: Tensor) -> Tensor:
        """log p(x_t | x_<t, H_attribute) of every token after the first, (B, T-1), 0 at padding.

        input_ids (B, T) right-padded, attention_mask (B, T) bool, attribute (B,) indices of each row's prefix.
        """
        chosen = self.prefixes[attribute]  # (B, L, 2, nh, P, hs)
        past = [(chosen[:, layer, 0], chosen[:, layer, 1]) for layer in range(chosen.size(1))]
        B, P = input_ids.size(0), self.length
        cache = ConcatCache(past, P)
        # The prefix's positions are never padding; the text's tokens sit at positions P, P+1, ...
        mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)
        logits = self.decoder(input_ids, cache, attention_mask=mask)  # (B, T, V)
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
        return picked * attention_mask[:, 1:]

    def loglik_all(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Per-token log-likelihoods of every text under every prefix, (A, B, T-1): one batched forward pass."""
        A, B = self.prefixes.size(0), input_ids.size(0)
        attribute = torch.arange(A, device=input_ids.device).repeat_interleave(B)  # (A * B,)
        rows = self.token_logprobs(input_ids.repeat(A, 1), attention_mask.repeat(A, 1), attribute)
        return rows.view(A, B, -1)

    def loss(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, lm_weight: float,
             contrast_weight: float) -> tuple[Tensor, dict]:
        """w1 * L_LM + w2 * L_d (module docstring) for texts (B, T) of attributes `labels` (B,).

        Returns (loss, {"lm": per-token NLL under the own prefix, "d": -log p(y|x), "accuracy": how often
        argmax_y p(y|x) is the label}).
        """
        B = input_ids.size(0)
        if contrast_weight:
            per_token = self.loglik_all(input_ids, attention_mask)  # (A, B, T-1)
            own = per_token[labels, torch.arange(B, device=labels.device)]  # (B, T-1)
            scores = per_token.sum(-1).T  # (B, A): log p(x | H_a), the prior cancels
            discriminative = F.cross_entropy(scores, labels)
            accuracy = (scores.argmax(-1) == labels).float().mean()
        else:  # plain prefix tuning: only the own prefix runs
            own = self.token_logprobs(input_ids, attention_mask, labels)
            discriminative = accuracy = torch.zeros((), device=input_ids.device)
        lm = -own.sum() / attention_mask[:, 1:].sum().clamp(min=1)
        loss = lm_weight * lm + contrast_weight * discriminative
        return loss, {"lm": lm.item(), "d": discriminative.item(), "accuracy": accuracy.item()}


@torch.no_grad()
def prefix_from_tokens(decoder: nn.Module, token_ids: list[int]) -> Tensor:
    """The keys/values the decoder's cache holds after `token_ids` (P,): (n_layers, 2, n_heads, P, head_dim).

    Prefix tuning initialises prefixes from real tokens' activations (Li and Liang 2021 §7.2); such a
    prefix is exactly those tokens fed first (tests/test_prefixes.py).
    """
    cache = decoder.new_cache(1, len(token_ids))
    device = cache.keys.device
    decoder(torch.tensor([token_ids], device=device), cache)
    P = len(token_ids)
    return torch.stack([cache.keys[:, 0, :, :P], cache.values[:, 0, :, :P]], dim=1).float().cpu()
