"""GLM's NLU fine-tuning as blank infilling (Du et al. 2022 §2.3): the `glm-cloze` task recipe.

An example becomes a cloze question c(x) by the pattern (lmkit.tasks.cloze), which is Part A with its
one [MASK]; Part B is the blank's span, [S] at the mask's pos1 and pos2 1, 2, ...:

    input : {text} Is it good ? [MASK] | [S]  w1 ... w(n-1)       w = v(y), the label's word
    pos1  :  0 ...                   m |  m   m  ...  m
    pos2  :  0 ...                   0 |  1   2  ...  n
    target:                            |  w1  w2 ...  wn

    score(y) = log p(v(y) | c(x)) = sum_k log p(w_k | c(x), w_<k)    (or the mean over k: --multi-token mean)
    p(y | x) = softmax over the labels of score(y)                       (eq. 3, trained with cross-entropy)

A word of one token needs one pass for every label (its logit at [S]); words of several tokens are
written into the blank one per label (THUDM/GLM's GLMForMultiTokenCloze; its length_penalty 0 is the
sum, 1 the mean). The whole model is trained; there is no new layer, so a model that has learnt to
fill blanks starts from its own guesses (zero-shot) instead of a random head.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from lmkit.contract import EncoderOutput
from lmkit.errors import DataError, LmkitError
from lmkit.tasks.cloze import BLANK, pieces
from lmkit.tasks.inputs import _truncate

from .config import MASK, START


@dataclass(frozen=True)
class ClozeOptions:
    """What `lmkit finetune --pattern --verbalizer [--multi-token]` gives the recipe (lmkit.tasks.cloze), and
    the token ids prepare() resolves them to with the model's tokenizer, saved with the head so that
    `lmkit predict` reads examples exactly as training did."""

    pattern: str = f"{{text}} {BLANK}"
    words: tuple[str, ...] = ()  # the verbalizer's word of each label, in label order
    multi_token: Literal["sum", "mean"] | None = None  # None: every word must be one token
    # A multiple choice: no words; each example's choices are written into the blank in turn (one row per choice).
    choices: bool = False
    word_ids: tuple[tuple[int, ...], ...] = ()  # resolved: each word's tokens
    mask_id: int = -1  # resolved: [MASK]
    start_id: int = -1  # resolved: [S]


class ClozeInputs:
    """An example's texts written into the pattern, then [S]: (ids, segment ids, the position of [S], tokens cut).
    Texts too long for max_length lose tokens from the end of the longest; the pattern's own words stay.

    A multiple choice's sequences are (texts..., choice): Part A, [S], then all of the choice's tokens (the
    targets are the tokens after [S], so a row scores itself whatever the lengths of the other choices)."""

    def __init__(self, options: ClozeOptions, tokenizer, max_length: int):
        self.options, self.tokenizer, self.max_length = options, tokenizer, max_length
        self.parts = [(tokenizer.encode(text) if text else [], field) for text, field in pieces(options.pattern)]
        self.fixed = sum(len(ids) for ids, _ in self.parts)
        self.fields = sum(field is not None for _, field in self.parts)
        if options.choices:
            self.budget = max_length - self.fixed - 1  # the choice's own tokens come off it per sequence
            return
        longest = max(len(ids) for ids in options.word_ids)
        # Part A's fixed words, [S], and the longest word's tokens but its last (fed into the blank)
        self.budget = max_length - self.fixed - 1 - (longest - 1)
        if self.budget < 1:
            raise LmkitError(f"the pattern and the longest verbalizer word take {self.fixed + longest} of "
                             f"--max-length {max_length} tokens, leaving none for the text; raise --max-length or "
                             "shorten them")

    def encode(self, segments: tuple[str, ...]) -> tuple[list[int], list[int], int, int]:
        choice = []
        if self.options.choices:
            *segments, answer = segments
            segments = segments or [""] * self.fields  # a multiple choice without a context
            choice = self.tokenizer.encode(answer)
            if not choice or self.budget - len(choice) < 1:
                raise DataError(f"the choice {answer!r} is {len(choice)} tokens, which "
                                f"{'is no text' if not choice else 'leaves no room for the text within --max-length'}"
                                f" {self.max_length}; raise --max-length or shorten the choices")
        texts = [self.tokenizer.encode(text) for text in segments]
        if any(self.options.mask_id in ids for ids in [*texts, choice]):
            raise DataError(f"a text of the task file holds {MASK}, which the cloze pattern keeps for the answer; "
                            "remove it from the text")
        cut = _truncate(texts, self.budget - len(choice))
        ids, slot = [], 0
        for fixed, field in self.parts:
            ids += fixed
            if field is not None:
                ids += texts[slot]
                slot += 1
        ids.append(self.options.start_id)
        return ids + choice, [0] * (len(ids) + len(choice)), len(ids) - 1, cut


class GLMClozeRecipe:
    """The `glm-cloze` task recipe: a classification scored by each label's word in the pattern's blank."""

    name = "glm-cloze"
    default_lr = 1e-5  # THUDM/GLM config_tasks (RTE, BoolQ, ...): LR_SINGLE=1e-5, GLM-Large
    reference_width = 1024  # GLM-Large's d_model
    default_warmup_ratio = 0.1  # THUDM/GLM config_tasks: --warmup 0.1, linear decay
    bidirectional = True  # Part A reads both ways

    def __init__(self, options: ClozeOptions | None = None):
        self.options = options or ClozeOptions()

    # -- what lmkit finetune asks of a recipe ----------------------------------------------------------

    def prepare(self, tokenizer) -> bool:
        """Resolve the pattern and the words to token ids (self.options), or a one-line error: a word the
        tokenizer spells as unknown or as nothing, a word of several tokens without --multi-token."""
        o = self.options
        mask_id, start_id = tokenizer.token_to_id(MASK), tokenizer.token_to_id(START)
        if mask_id is None or start_id is None:
            raise LmkitError(f"the model's tokenizer lacks GLM's {MASK} or {START}; fine-tune a model composed from a "
                             "glm preset (lmkit compose adds them)")
        in_pattern = sum(tokenizer.encode(text).count(mask_id) for text, _ in pieces(o.pattern) if text)
        if in_pattern != 1:
            raise LmkitError(f"the pattern {o.pattern!r} reads as {in_pattern} {MASK} tokens; write {BLANK} once, "
                             "apart from other characters")
        if o.choices:  # the choices are the candidates, read from each example
            self.options = replace(o, mask_id=mask_id, start_id=start_id)
            return False
        unknown = tokenizer.unk_id
        word_ids = []
        for label, word in enumerate(o.words):
            ids = tokenizer.encode(word)
            spelled = " ".join(tokenizer.id_to_token(i) for i in ids)
            if not ids or (unknown is not None and unknown in ids):
                raise LmkitError(f"the verbalizer word {word!r} (label {label}) is {'no token' if not ids else spelled} "
                                 "to the model's tokenizer; choose a word of its vocabulary")
            if mask_id in ids or start_id in ids:
                raise LmkitError(f"the verbalizer word {word!r} is one of GLM's special tokens; choose a word")
            if len(ids) > 1 and o.multi_token is None:
                raise LmkitError(f"the verbalizer word {word!r} is {len(ids)} tokens ({spelled}); choose a word of one "
                                 "token, or give --multi-token sum (or mean) to score its tokens one after another")
            word_ids.append(tuple(ids))
        self.options = replace(o, word_ids=tuple(word_ids), mask_id=mask_id, start_id=start_id)
        return False

    def auxiliary_objectives(self, aux_lm_weight: float | None) -> list[dict]:
        if aux_lm_weight:
            raise LmkitError("--aux-lm-weight adds GPT's language-model loss; GLM's cloze fine-tuning trains the "
                             "blank's words alone: leave it out")
        return []

    def inputs(self, tokenizer, max_length: int) -> ClozeInputs:
        return ClozeInputs(self.options, tokenizer, max_length)

    def pooler(self, d_model: int):
        return None

    def training_arguments(self, steps: int, per_epoch: int) -> dict:
        return {}

    def run(self, model, input_ids, attention_mask, token_type_ids) -> EncoderOutput:
        """The states of the cloze inputs (N, T, D) as GLM reads them: Part A both ways, [S] after it."""
        positions = cloze_positions(input_ids, self.options.mask_id, _starts(input_ids, self.options.start_id))
        mask = attention_mask.bool() if attention_mask is not None else None
        return EncoderOutput(model.decoder.hidden_states(input_ids, None, mask, positions),
                             mask if mask is not None else input_ids.new_ones(input_ids.shape, dtype=bool))

    def features(self, output: EncoderOutput, extract_index):
        """(N, D): the state at [S], the one that predicts the blank's first token."""
        import torch

        states = output.last_hidden_state
        return states[torch.arange(states.size(0), device=states.device), extract_index]

    # -- the scores ------------------------------------------------------------------------------------

    def label_scores(self, model, batch: dict):
        """(B, num_labels) float32: log p(v(y) | c(x)) of each label's word, summed (or averaged) over its
        tokens. batch: input_ids and attention_mask (B, 1, T), Part A then [S], right-padded; extract_index
        (B, 1), the place of [S]."""
        import torch

        o = self.options
        if o.choices:
            return self._choice_scores(model.decoder, batch)
        ids, mask = batch["input_ids"][:, 0], batch["attention_mask"][:, 0].bool()  # (B, T)
        starts = batch["extract_index"][:, 0]  # (B,)
        decoder = model.decoder
        if all(len(word) == 1 for word in o.word_ids):  # one pass: every label's word is its logit at [S]
            states = decoder.hidden_states(ids, None, mask, cloze_positions(ids, o.mask_id, starts))
            rows = torch.arange(ids.size(0), device=ids.device)
            logits = decoder.logits(states[rows, starts]).float()  # (B, V)
            words = torch.tensor([word[0] for word in o.word_ids], device=ids.device)
            return logits.log_softmax(-1)[:, words]  # (B, L)
        return self._span_scores(decoder, ids, starts)

    def _span_scores(self, decoder, ids, starts):
        """Each label's word written into the blank after [S], one row per (example, label)."""
        import torch

        o = self.options
        B, L = ids.size(0), len(o.word_ids)
        lengths = [len(word) for word in o.word_ids]
        width = int(starts.max()) + max(lengths)  # Part A, [S] and all of the longest word but its last token
        rows = torch.zeros(B * L, width, dtype=torch.long, device=ids.device)
        row_mask = torch.zeros(B * L, width, dtype=torch.bool, device=ids.device)
        targets = torch.full((B * L, width), -100, dtype=torch.long, device=ids.device)
        for b in range(B):
            start = int(starts[b])
            for label, word in enumerate(o.word_ids):
                r = b * L + label
                sequence = torch.cat([ids[b, :start + 1], torch.tensor(word[:-1], device=ids.device)])
                rows[r, :len(sequence)], row_mask[r, :len(sequence)] = sequence, True
                targets[r, start:start + len(word)] = torch.tensor(word, device=ids.device)
        row_starts = starts.repeat_interleave(L)
        states = decoder.hidden_states(rows, None, row_mask, cloze_positions(rows, o.mask_id, row_starts))
        picked = targets != -100
        log_probs = decoder.logits(states[picked]).float().log_softmax(-1)  # (N, V): only the words' positions
        token_scores = torch.zeros(B * L, width, device=ids.device)
        token_scores[picked] = log_probs.gather(1, targets[picked][:, None])[:, 0]
        scores = token_scores.sum(1).view(B, L)
        if o.multi_token == "mean":
            scores = scores / torch.tensor(lengths, dtype=scores.dtype, device=scores.device)
        return scores


    def _choice_scores(self, decoder, batch: dict):
        """(B, S) float32: log p(choice | c(x)) of each of the S choices, its tokens after [S] summed (or
        averaged: --multi-token mean). batch: input_ids and attention_mask (B, S, T), each row Part A, [S] and the
        choice's tokens, right-padded; extract_index (B, S), the place of [S]."""
        import torch

        B, S, T = batch["input_ids"].shape
        ids = batch["input_ids"].reshape(B * S, T)
        mask = batch["attention_mask"].reshape(B * S, T).bool()
        starts = batch["extract_index"].reshape(B * S)
        states = decoder.hidden_states(ids, None, mask, cloze_positions(ids, self.options.mask_id, starts))
        # The state at t predicts the token at t + 1, for t from [S] to the choice's last token but one.
        t = torch.arange(T - 1, device=ids.device)[None]
        lengths = mask.sum(1)  # Part A, [S] and the choice
        picked = (t >= starts[:, None]) & (t < (lengths - 1)[:, None])  # (N, T - 1)
        targets = ids[:, 1:][picked]
        log_probs = decoder.logits(states[:, :-1][picked]).float().log_softmax(-1)  # only the choices' positions
        token_scores = torch.zeros(B * S, T - 1, device=ids.device)
        token_scores[picked] = log_probs.gather(1, targets[:, None])[:, 0]
        scores = token_scores.sum(1)
        if self.options.multi_token == "mean":
            scores = scores / (lengths - 1 - starts).to(scores.dtype)
        return scores.view(B, S)


    def backend_label_scores(self, opened, batch: dict):
        """label_scores() over any backend of the model (lmkit.opening.OpenedModel: a model directory, or its export
        on onnxruntime), in numpy: (B, num_labels), or (B, S) for a multiple choice. Each candidate is read as
        generation reads a blank: Part A and [S] in one prefill at GLM's positions, then the candidate's tokens
        one step each (pos2 + 1), each step's logits scoring the next token. batch: numpy arrays as for
        label_scores."""
        o = self.options
        ids, mask, extract = batch["input_ids"], batch["attention_mask"].astype(bool), batch["extract_index"]
        B, S, _ = ids.shape
        scores = np.zeros((B, S if o.choices else len(o.word_ids)), dtype=np.float64)
        for b in range(B):
            if o.choices:  # each choice's own row: its tokens follow [S]
                rows = [(ids[b, s, :extract[b, s] + 1], ids[b, s, extract[b, s] + 1:mask[b, s].sum()]) for s in range(S)]
            else:  # every label's word after the one Part A
                rows = [(ids[b, 0, :extract[b, 0] + 1], np.asarray(word)) for word in o.word_ids]
            for width in sorted({len(prefix) for prefix, _ in rows}):  # rows of one prefix length go together
                which = [i for i, (prefix, _) in enumerate(rows) if len(prefix) == width]
                scores[b, which] = self._candidate_scores(opened, [rows[i] for i in which])
        return scores.astype(np.float32)

    def _candidate_scores(self, opened, rows) -> np.ndarray:
        """Summed (or averaged) log p of each row's candidate tokens after its prefix (Part A then [S])."""
        prefixes = np.stack([prefix for prefix, _ in rows]).astype(np.int64)  # (R, P), one width
        longest = max(len(tokens) for _, tokens in rows)
        start = prefixes.shape[1] - 1
        blank = [int(np.flatnonzero(prefix[:start] == self.options.mask_id)[0]) for prefix in prefixes]
        positions = np.zeros((len(rows), 2, prefixes.shape[1]), dtype=np.int64)
        positions[:, 0, :start] = np.arange(start)
        positions[:, 0, start] = blank  # [S] sits at its [MASK]
        positions[:, 1, start] = 1
        backend = opened.backend(longest)
        logits = backend.prefill(prefixes, np.ones_like(prefixes, dtype=bool), positions, np.array([0, 1]))
        totals = np.zeros(len(rows), dtype=np.float64)
        for k in range(longest):
            real = np.array([k < len(candidate) for _, candidate in rows])  # a shorter candidate has ended
            tokens = np.array([candidate[k] if k < len(candidate) else 0 for _, candidate in rows], dtype=np.int64)
            log_probs = _log_softmax(np.asarray(logits, dtype=np.float64))
            totals += np.where(real, log_probs[np.arange(len(rows)), tokens], 0.0)
            if k + 1 < longest:
                logits = backend.step(tokens)
        if self.options.multi_token == "mean":
            totals /= np.array([len(tokens) for _, tokens in rows], dtype=np.float64)
        return totals


def _log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _starts(input_ids, start_id: int):
    """The place of each row's first [S] (N,)."""
    return (input_ids == start_id).int().argmax(1)


def cloze_positions(input_ids, mask_id: int, starts):
    """GLM's positions (N, 2, T) of rows that are Part A up to `starts` (N,), where [S] begins the blank's span:
    pos1 counts Part A and stays at the [MASK] in the span; pos2 is 0 in Part A, 1, 2, ... from [S] on (padding
    after the span included, which the attention mask leaves out)."""
    import torch

    N, T = input_ids.shape
    t = torch.arange(T, device=input_ids.device)[None]  # (1, T)
    in_a = t < starts[:, None]  # (N, T)
    blank = ((input_ids == mask_id) & in_a).int().argmax(1)  # (N,) the [MASK] of Part A
    pos1 = torch.where(in_a, t, blank[:, None])
    pos2 = torch.where(in_a, torch.zeros_like(t), t - starts[:, None] + 1)
    return torch.stack([pos1, pos2], dim=1)
