"""Contrastive prefixes (Qian et al. 2022, arXiv 2202.13257): one trained key/value prefix per attribute
over a frozen cached decoder (GPT, GPT-3, GLM, T5's decoder), and the supervised objective that trains them together.

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
lmkit's defaults are options. The unsupervised variant (latent attributes, Gumbel-softmax) is
LatentPrefixes below. Not here: prefix tuning's MLP reparameterisation (the prefixes are trained directly).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmkit.errors import LmkitError
from lmkit.exports.decoder_only import ConcatCache  # a cache whose past is given tensors: differentiable
from lmkit.nn import BandedKVCache, KVCache


def cache_geometry(model: nn.Module) -> tuple[int, int, int]:
    """(n_layers, n_heads, head_dim) of the cache a prefix starts: a decoder-only model's lmkit.nn.KVCache or
    BandedKVCache, an encoder-decoder's decoder self-attention cache; LmkitError for another."""
    decoder = model.decoder
    if model.kind == "encoder-decoder":
        names = decoder.self_attention_cache
        if names is None:
            raise LmkitError(f"prefixes are keys/values for a decoder's self-attention cache, and this "
                             f"{type(decoder).__name__} has none (a recurrent state); train them for an attention "
                             "decoder (T5)")
        c = decoder_state_shape(model)
        return c[0], c[2], c[4]
    probe = decoder.new_cache(1, 1)
    if not isinstance(probe, (KVCache, BandedKVCache)):
        raise LmkitError(f"prefixes are keys/values for a decoder's cache, and this decoder's cache is a "
                         f"{type(probe).__name__}; train them for an attention decoder (GPT, GPT-2, GPT-3, GLM, T5)")
    return probe.geometry


@torch.no_grad()
def decoder_state_shape(model: nn.Module) -> tuple[int, ...]:
    """The shape (L, B, nh, P, hs) of an encoder-decoder's empty self-attention keys, read off start()."""
    from lmkit.contract import EncoderOutput

    weight = next(model.parameters())
    states = torch.zeros(1, 1, model.encoder.d_model, device=weight.device, dtype=weight.dtype)
    state = model.decoder.start(EncoderOutput(states, torch.ones(1, 1, dtype=torch.bool, device=weight.device)))
    return tuple(state[model.decoder.self_attention_cache[0]].shape)


def windows(decoder: nn.Module) -> dict[int, int]:
    """{layer: w} for a decoder's layers whose cache keeps only its last w positions (GPT-3's banded layers)."""
    probe = decoder.new_cache(1, 1)
    if isinstance(probe, BandedKVCache):
        return {layer: probe.band_width for layer, banded in enumerate(probe.banded) if banded}
    return {}


def window_past(keys: Tensor, w: int) -> Tensor:
    """What a window of the last w positions holds after the P positions of keys (B, nh, P, hs): (B, nh, w, hs),
    right-aligned after zeros (lmkit.nn.BandedKVCache.start_from), differentiably."""
    P = keys.size(2)
    if P >= w:
        return keys[:, :, P - w:]
    return torch.cat([keys.new_zeros(*keys.shape[:2], w - P, keys.size(3)), keys], dim=2)


class AttributePrefixes(nn.Module):
    """A trainable prefix per attribute over `model` (a ComposedModel), which stays frozen (no gradient).

    prefixes: (A, n_layers, 2, n_heads, P, head_dim), keys at [:, :, 0] and values at [:, :, 1]. A decoder-only
    model reads a text after the prefix in its cache (a banded layer: the prefix's last positions in its
    window); an encoder-decoder reads a target after the prefix in its decoder's self-attention cache, the
    source through its encoder as always.
    """

    def __init__(self, model: nn.Module, init: Tensor):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.seq2seq = model.kind == "encoder-decoder"
        self.windows = {} if self.seq2seq else windows(model.decoder)
        self.prefixes = nn.Parameter(init.clone())

    @property
    def length(self) -> int:
        return self.prefixes.size(4)

    def token_logprobs(self, input_ids: Tensor, attention_mask: Tensor, attribute: Tensor,
                       sources: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """log p(x_t | x_<t, H_attribute) of every token after the first, (B, T-1), 0 at padding.

        input_ids (B, T) right-padded, attention_mask (B, T) bool, attribute (B,) indices of each row's prefix;
        sources: an encoder-decoder's source ids and mask, each (B, S), right-padded.
        """
        return self.logprobs_after(self.prefixes[attribute], input_ids, attention_mask, sources)

    def logprobs_after(self, chosen: Tensor, input_ids: Tensor, attention_mask: Tensor,
                       sources: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """token_logprobs with each row's prefix given, chosen (B, n_layers, 2, nh, P, hs): (B, T-1)."""
        B, P = input_ids.size(0), self.length
        decoder = self.model.decoder
        if self.seq2seq:
            with torch.no_grad():
                encoded = self.model.encoder(*sources)
            state = decoder.start(encoded)
            keys, values = decoder.self_attention_cache
            state[keys], state[values] = chosen[:, :, 0].transpose(0, 1), chosen[:, :, 1].transpose(0, 1)
            logits, _ = decoder(input_ids, state)  # (B, T, V): causal, so right padding changes no real token
        else:
            past = []
            for layer in range(chosen.size(1)):
                k, v = chosen[:, layer, 0], chosen[:, layer, 1]
                w = self.windows.get(layer)
                past.append((k, v) if w is None else (window_past(k, w), window_past(v, w)))
            cache = ConcatCache(past, P, self.windows, prefix_length=P)
            # The prefix's positions are never padding; the text's tokens sit at positions P, P+1, ...
            mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)
            logits = decoder(input_ids, cache, attention_mask=mask)  # (B, T, V)
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
        return picked * attention_mask[:, 1:]

    def loglik_all(self, input_ids: Tensor, attention_mask: Tensor,
                   sources: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Per-token log-likelihoods of every text under every prefix, (A, B, T-1): one batched forward pass."""
        A, B = self.prefixes.size(0), input_ids.size(0)
        attribute = torch.arange(A, device=input_ids.device).repeat_interleave(B)  # (A * B,)
        repeated = None if sources is None else tuple(t.repeat(A, 1) for t in sources)
        rows = self.token_logprobs(input_ids.repeat(A, 1), attention_mask.repeat(A, 1), attribute, repeated)
        return rows.view(A, B, -1)

    def loss(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, lm_weight: float,
             contrast_weight: float, sources: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, dict]:
        """w1 * L_LM + w2 * L_d (module docstring) for texts (B, T) of attributes `labels` (B,).

        Returns (loss, {"lm": per-token NLL under the own prefix, "d": -log p(y|x), "accuracy": how often
        argmax_y p(y|x) is the label}).
        """
        B = input_ids.size(0)
        if contrast_weight:
            per_token = self.loglik_all(input_ids, attention_mask, sources)  # (A, B, T-1)
            own = per_token[labels, torch.arange(B, device=labels.device)]  # (B, T-1)
            scores = per_token.sum(-1).T  # (B, A): log p(x | H_a), the prior cancels
            discriminative = F.cross_entropy(scores, labels)
            accuracy = (scores.argmax(-1) == labels).float().mean()
        else:  # plain prefix tuning: only the own prefix runs
            own = self.token_logprobs(input_ids, attention_mask, labels, sources)
            discriminative = accuracy = torch.zeros((), device=input_ids.device)
        lm = -own.sum() / attention_mask[:, 1:].sum().clamp(min=1)
        loss = lm_weight * lm + contrast_weight * discriminative
        return loss, {"lm": lm.item(), "d": discriminative.item(), "accuracy": accuracy.item()}


@torch.no_grad()
def prefix_from_tokens(model: nn.Module, token_ids: list[int], source: list[int] | None = None) -> Tensor:
    """The keys/values the cache holds after `token_ids` (P,): (n_layers, 2, n_heads, P, head_dim).

    A decoder-only model's cache after reading them (a banded layer: the last min(P, w), right-aligned, zeros
    before, which its window never reads); an encoder-decoder's decoder self-attention cache after reading them
    as its target's first tokens, over `source`. Prefix tuning initialises prefixes from real tokens'
    activations (Li and Liang 2021 §7.2); such a prefix is exactly those tokens fed first (tests/test_prefixes.py).
    """
    decoder = model.decoder
    weight = next(model.parameters())
    ids = torch.tensor([token_ids], device=weight.device)
    P = len(token_ids)
    if model.kind == "encoder-decoder":
        src = torch.tensor([source], device=weight.device)
        state = decoder.start(model.encoder(src, torch.ones_like(src, dtype=torch.bool)))
        _, state = decoder(ids, state)
        keys, values = decoder.self_attention_cache
        return torch.stack([state[keys][:, 0], state[values][:, 0]], dim=1).float().cpu()
    n_layers, n_heads, head_dim = cache_geometry(model)
    window = windows(decoder)
    past = [(weight.new_zeros(1, n_heads, window.get(layer, 0), head_dim),) * 2 for layer in range(n_layers)]
    cache = ConcatCache(past, 0, window)
    decoder(ids, cache)
    layers = []
    for layer, (k, v) in enumerate(cache.presents):
        if layer in window:  # the window's last min(P, w), right-aligned in P positions
            kept = min(P, window[layer])
            k = torch.cat([k.new_zeros(1, n_heads, P - kept, head_dim), k[:, :, k.size(2) - kept:]], dim=2)
            v = torch.cat([v.new_zeros(1, n_heads, P - kept, head_dim), v[:, :, v.size(2) - kept:]], dim=2)
        layers.append(torch.stack([k[0], v[0]]))
    return torch.stack(layers).float().cpu()


class LatentPrefixes(AttributePrefixes):
    """K prefixes for latent attributes learnt without labels (Qian et al. 2022 §3.2, the unsupervised variant).

    An encoder q(z | x) (a linear layer on the frozen decoder's mean hidden state of x: the only weights trained
    besides the prefixes) picks a latent attribute z for each text; a Gumbel-softmax sample of it (straight-through,
    so each text reads exactly one prefix, as generation does) chooses the prefix x is scored after. As in a VAE:

        L = w1 * L_LM + w_kl * L_KL + w2 * L_c
        L_LM = -log p(x | H_z), z ~ GumbelSoftmax(q(z | x))    per token
        L_KL = KL(q(z | x) || uniform)                          per text, over its tokens (a per-token ELBO)
        L_c  = max(0, m - (s_ẑ(x) - max_{k != ẑ} s_k(x)))      ẑ = argmax q(z | x), s_k = log p(x | H_k) per token

    L_c is lmkit's reading of the paper's unsupervised contrastive term (its exact form is not confirmed,
    shared/PAPERS.md §17): each text's own latent prefix must explain it better, by a margin m per token, than
    any other prefix does, which keeps the prefixes apart. Decoder-only models (the encoder reads a text's states).
    """

    def __init__(self, model: nn.Module, init: Tensor):
        super().__init__(model, init)
        self.encoder_head = nn.Linear(model.decoder.d_model, init.size(0))

    def posterior_logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The encoder's logits of q(z | x), (B, K), from the mean final state over each text's real tokens."""
        with torch.no_grad():
            states = self.model.decoder.hidden_states(input_ids, None, attention_mask)  # (B, T, D)
            weights = attention_mask[..., None].to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.encoder_head(pooled.float())

    def unsupervised_loss(self, input_ids: Tensor, attention_mask: Tensor, lm_weight: float, kl_weight: float,
                          contrast_weight: float, margin: float = 1.0, temperature: float = 1.0) -> tuple[Tensor, dict]:
        """w1 * L_LM + w_kl * L_KL + w2 * L_c (class docstring) for texts (B, T) without labels.

        Returns (loss, {"lm", "kl", "c": the three terms, "usage": the share of the batch whose argmax q(z | x) is
        the most used latent}).
        """
        B, K = input_ids.size(0), self.prefixes.size(0)
        logits = self.posterior_logits(input_ids, attention_mask)  # (B, K)
        log_q = torch.log_softmax(logits, -1)
        z = F.gumbel_softmax(logits, tau=temperature, hard=True)  # (B, K): one-hot forward, soft gradient
        chosen = torch.einsum("bk,k...->b...", z, self.prefixes)
        own = self.logprobs_after(chosen, input_ids, attention_mask)  # (B, T-1)
        tokens = attention_mask[:, 1:].sum(-1).clamp(min=1)  # (B,)
        lm = -own.sum() / tokens.sum()
        kl = (log_q.exp() * (log_q + math.log(K))).sum(-1).sum() / tokens.sum()
        contrast = torch.zeros((), device=input_ids.device)
        if contrast_weight:
            scores = self.loglik_all(input_ids, attention_mask).sum(-1) / tokens  # (K, B) per-token log p(x | H_k)
            picked = log_q.argmax(-1)
            own_score = scores[picked, torch.arange(B, device=picked.device)]
            others = scores.masked_fill(F.one_hot(picked, K).T.bool(), float("-inf")).max(0).values
            contrast = F.relu(margin - (own_score - others)).mean()
        loss = lm_weight * lm + kl_weight * kl + contrast_weight * contrast
        usage = torch.bincount(log_q.argmax(-1), minlength=K).max().float() / B
        return loss, {"lm": lm.item(), "kl": kl.item(), "c": contrast.item(), "usage": usage.item()}
