"""Sentence and token vectors from any model: pooling of the token states a stack gives."""
from __future__ import annotations

from .errors import require_torch

torch = require_torch("embedding text")

POOLINGS = ("mean", "cls", "last", "none")


def pool(features, attention_mask: torch.Tensor, how: str) -> torch.Tensor | None:
    """One vector per row, (B, D), from a stack's features (lmkit.contract.EncoderOutput).

    mean: the average over real tokens (sentence vectors of encoders and decoders alike);
    cls: the stack's own pooled output (BERT's pooler), else the first token's state;
    last: the last real token's state, the one that has read the whole text in a left-to-right model.
    """
    states = features.last_hidden_state
    mask = attention_mask.to(states.dtype)  # (B, T)
    if how == "none":
        return None
    if how == "mean":
        return (states * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    if how == "cls":
        return features.pooler_output if features.pooler_output is not None else states[:, 0]
    if how == "last":
        last = attention_mask.long().sum(1) - 1  # right padding: the last real token
        return states[torch.arange(states.size(0), device=states.device), last]
    raise ValueError(f"unknown pooling {how!r}; allowed: {', '.join(POOLINGS)}")


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], *, pooling: str = "mean", batch_size: int = 32,
                max_length: int | None = None, device: str = "cpu", progress: bool = False,
                options: dict | None = None):
    """(pooled (N, D) or None, token states per text: a list of (T_i, D) arrays, token ids per text).

    options: passed to the stack's features() (CoVe: word_vectors).
    """
    import numpy as np
    from tqdm import tqdm

    ids = [tokenizer.encode(text, add_special_tokens=True) for text in texts]
    if max_length is not None:
        # A cut text keeps its closing separator ([SEP], </s>), as the encoder saw in training.
        sep = tokenizer.sep_id
        ids = [row if len(row) <= max_length else
               row[:max_length - 1] + [sep] if sep is not None and row[-1] == sep else row[:max_length]
               for row in ids]
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    pooled, token_states = [], []
    for start in tqdm(range(0, len(ids), batch_size), desc="embed", unit="batch", disable=not progress or None):
        rows = ids[start:start + batch_size]
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, :len(row)] = True
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        features = model.embed(input_ids, attention_mask, **(options or {}))
        vectors = pool(features, attention_mask, pooling)
        if vectors is not None:
            pooled.append(vectors.float().cpu().numpy())
        states = features.last_hidden_state.float().cpu().numpy()
        token_states.extend(states[i, :len(row)] for i, row in enumerate(rows))
    return (np.concatenate(pooled) if pooled else None), token_states, ids
