"""Prompts and an answer into `Query`s: the token ids, where the answer is read, and its one token id."""
from __future__ import annotations

import torch

from lmkit.errors import LmkitError

from .attribution import Query

BLANK = "[MASK]"


def make_queries(model, tokenizer, prompts, answer: str) -> list[Query]:
    """One Query per prompt. Raises LmkitError (one line) for a prompt without exactly one blank on a masked
    LM, a blank on a causal LM, an answer that is not one token, or a model with neither head."""
    masked = model.encoder is not None
    if not (model.kind == "decoder" or model.kind == "encoder" and "masked-lm" in model.objectives):
        what = (f"an encoder-only model whose objectives are {', '.join(model.objectives) or 'none'}"
                if model.kind == "encoder" else f"an {model.kind} model")
        raise LmkitError(f"knowledge neurons need a BERT-family masked LM with its masked-lm head, or a GPT-family "
                         f"causal LM; this is {what} (a fine-tuned encoder has lost its masked-lm head: use the "
                         "pretrained one)")
    mask_token = tokenizer.special_tokens.get("mask") if masked else None
    if masked and mask_token is None:
        raise LmkitError("the model's tokenizer has no mask token to mark the blank with")
    limit = (model.encoder if masked else model.decoder).max_positions
    queries = []
    for prompt in prompts:
        if masked:
            text = prompt.replace(BLANK, mask_token)
            blanks = text.count(mask_token)
            if blanks != 1:
                raise LmkitError(f"prompt {prompt!r} has {blanks} blanks; put one {BLANK} where the answer goes")
            ids = tokenizer.encode(text, add_special_tokens=True)
            position = ids.index(tokenizer.token_to_id(mask_token))
            spaced = text[:text.index(mask_token)].endswith(" ")
        else:
            if BLANK in prompt:
                raise LmkitError(f"prompt {prompt!r}: a causal LM reads the answer as the next token; end the prompt "
                                 f"where the answer goes, without {BLANK}")
            ids = tokenizer.encode(prompt)
            position, spaced = len(ids) - 1, not prompt.endswith(" ")
            if not ids:
                raise LmkitError(f"prompt {prompt!r} has no tokens")
        if limit is not None and len(ids) > limit:
            raise LmkitError(f"prompt {prompt!r} is {len(ids)} tokens, beyond the model's {limit} positions")
        queries.append(Query(torch.tensor([ids]), position, answer_id(tokenizer, answer, spaced)))
    return queries


def answer_id(tokenizer, answer: str, spaced: bool) -> int:
    """The answer's one token id, read as it would follow the prompt (after a space when it does)."""
    ids = tokenizer.encode((" " if spaced else "") + answer.strip())
    unknown = tokenizer.special_tokens.get("unk")
    if len(ids) == 1 and unknown is not None and ids[0] == tokenizer.token_to_id(unknown):
        raise LmkitError(f"answer {answer!r} is not in the tokenizer's vocabulary (it reads as {unknown}); give a word "
                         "the vocabulary holds")
    if len(ids) != 1:
        pieces = ", ".join(repr(tokenizer.id_to_token(i)) for i in ids)
        raise LmkitError(f"answer {answer!r} is {len(ids)} tokens for this tokenizer ({pieces}); give one token: a "
                         "word the vocabulary holds whole, or the first of those pieces")
    return ids[0]
