"""GLM's generation: the blanks of a prompt filled one after another (Du et al. 2022 §2.1, §3.3).

A prompt is Part A: text with one or more blanks, [MASK] (a few words), [sMASK] (a sentence) or
[gMASK] (the rest of the text: left-to-right generation). Each blank is written as a span of Part
B, [S] y1 y2 ... until [E], its pos1 fixed at its mask's place in Part A and its pos2 counting 1,
2, ... inside the span; the spans already filled stay in Part B, so every span sees Part A and the
spans before it, as in training and in THUDM/GLM's generate_samples.py (several blanks coming out
wrong or not at all was its users' pain: THUDM/GLM#30, #80).

Each span is one search of the shared strategies (greedy, beam, sampling) over the model's backend,
PyTorch or onnxruntime alike, given the span's positions (lmkit.decoding.common.Positions, step (0, 1)):
the backend feeds [S] at (mask, 1) and every new token one pos2 further, and the model reads Part A's
bidirectional mask off pos2 = 0. The prompt of blank k is Part A and the k spans before it, so it is
computed afresh (one prefill) per blank.
"""
from __future__ import annotations

import numpy as np

from lmkit.decoding.common import Generation, Positions
from lmkit.errors import ArtifactError, LmkitError

from .config import END, GENERATION_MASK, MASKS, SPECIAL_TOKENS, START


class BlankFilling:
    """lmkit.contract.Generator of the `glm` decoder: fills every blank of each prompt."""

    def __init__(self, opened):
        self.opened = opened
        tokenizer = opened.tokenizer
        if tokenizer is None:
            raise ArtifactError(f"{opened.directory} has no tokenizer to find the blanks of a prompt with")
        ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
        missing = [token for token, value in ids.items() if value is None]
        if missing:
            raise ArtifactError(f"{opened.directory}'s tokenizer lacks GLM's {' '.join(missing)}; compose the model "
                                "again (lmkit compose adds them)")
        self.masks = {ids[token] for token in MASKS}
        self.start, self.end, self.gmask = ids[START], ids[END], ids[GENERATION_MASK]
        self.pad = tokenizer.pad_id if tokenizer.pad_id is not None else self.end
        # A model fine-tuned text to text (glm-text-to-text) was taught to answer a source followed by [gMASK]: a
        # prompt without a blank is such a source. Any other GLM needs a blank in every prompt.
        self.writes_targets = any(isinstance(o, dict) and o.get("type") == "glm-text-to-text"
                                  for o in opened.spec.get("objectives") or [])

    def source_prompt(self, source: list[int]) -> list[int]:
        """The prompt text-to-text fine-tuning answers (lmkit.plugins.glm.text_to_text): the source, then [gMASK]."""
        return [*source, self.gmask]

    def blanks(self, prompts: list[list[int]], prefix_length: int = 0) -> list[list[int]]:
        """The place of each blank in each prompt, in text order; a one-line error for a prompt without one or
        with more than the context (less a prefix's positions) can fill."""
        limit = self.opened.max_positions
        if limit is not None:
            limit -= prefix_length
        found = []
        for i, prompt in enumerate(prompts):
            which = "the prompt" if len(prompts) == 1 else f"prompt {i + 1}"
            places = [j for j, token in enumerate(prompt) if token in self.masks]
            if not places:
                raise LmkitError(f"{which} has no blank to fill; GLM fills {', '.join(MASKS)} (e.g. \"The [MASK] sat "
                                 "on the mat.\", or \"Once upon a time [gMASK]\" to write on)")
            # Each blank takes at least its [S] after Part A (the token that ends it is never fed back).
            if limit is not None and len(prompt) + len(places) > limit:
                raise LmkitError(f"{which} has {len(prompt)} tokens and {len(places)} blanks, more than the model's "
                                 f"context of {limit} positions can fill (each blank needs one more for its [S]); "
                                 "shorten the text or give fewer blanks")
            found.append(places)
        return found

    def generate_ids(self, prompts: list[list[int]], decoding, *, stop: list[list[int]] | None = None,
                     on_token=None, prefix=None) -> list[Generation]:
        """One Generation per prompt: `output` the prompt with its blanks filled, `spans` each blank's search
        result (its tokens without [E]), `tokens` the spans' tokens one after another.

        prefix: a lmkit.prefix.CachePrefix of P positions in the cache before Part A, which every token sees:
        a context the prompt cannot change, Part A's pos1 counting from P after it (lmkit generate --prefix).
        """
        if self.writes_targets:
            prompts = [p if any(t in self.masks for t in p) else self.source_prompt(p) for p in prompts]
        P = 0 if prefix is None else prefix.length
        places = self.blanks(prompts, P)
        spans: list[list[Generation]] = [[] for _ in prompts]
        limit = self.opened.max_positions
        if limit is not None:
            limit -= P
        for k in range(max(map(len, places))):
            rows = [i for i, p in enumerate(places) if len(p) > k]
            ids, positions = [], []
            for i in rows:
                row, where = self._span_input(prompts[i], places[i][:k + 1], [span.tokens for span in spans[i]], P)
                ids.append(row)
                positions.append(where)
                if limit is not None and len(row) > limit:
                    raise LmkitError(f"the blanks before blank {k + 1} of prompt {i + 1} filled the model's context "
                                     f"of {limit} positions; ask for fewer new tokens per blank (--max-new-tokens)")
            backend = self.opened.backend(decoding.options.max_new_tokens, **({} if prefix is None else {"prefix": prefix}))
            results = decoding.generate(backend, ids, eos_id=self.end, pad_id=self.pad, stop=stop,
                                        positions=Positions(positions, step=(0, 1)))
            for i, result in zip(rows, results):
                spans[i].append(result)
        return [self._filled(prompt, where, found) for prompt, where, found in zip(prompts, places, spans)]

    def prefill_inputs(self, prompts: list[list[int]]) -> tuple[list[list[int]], Positions]:
        """The rows, and their positions, whose prefill starts filling each prompt's first blank: Part A and
        the blank's [S] (lmkit bench times that prefill and the steps after it). One-line LmkitError for a
        prompt without a blank."""
        places = self.blanks(prompts)
        rows = [self._span_input(prompt, where[:1], [], 0) for prompt, where in zip(prompts, places)]
        return [ids for ids, _ in rows], Positions([where for _, where in rows], step=(0, 1))

    def _span_input(self, prompt: list[int], places: list[int], filled: list[list[int]],
                    offset: int) -> tuple[list[int], np.ndarray]:
        """Part A, the spans `filled` of the blanks at places[:-1] and the [S] of the blank at places[-1]: the
        ids, and their positions (2, n) (pos1 counting from `offset`, a prefix's length; pos2)."""
        part_b = [*zip(places, filled), (places[-1], [])]
        ids = list(prompt) + [t for _, span in part_b for t in (self.start, *span)]
        pos1 = list(range(len(prompt))) + [m for m, span in part_b for _ in range(len(span) + 1)]
        pos2 = [0] * len(prompt) + [p for _, span in part_b for p in range(1, len(span) + 2)]
        return ids, np.array([[offset + p for p in pos1], pos2], dtype=np.int64)

    def score_documents(self, documents: list[list[int]], context: int, batch_size: int = 8,
                        stride: int | None = None) -> tuple[float, int]:
        """(NLL in nats, tokens predicted) of each document written left to right as [gMASK] spans of `stride`
        tokens, each after the text before it, its [E] included (lmkit.plugins.glm.evaluation); PyTorch only."""
        from .evaluation import document_items, score_spans

        if self.opened.model is None:
            raise LmkitError(f"{self.opened.directory} is an export; scoring text runs on its model directory")
        ids = {"[gMASK]": self.gmask, "[S]": self.start, "[E]": self.end}
        items = [item for document in documents for item in document_items(document, context, stride)]
        device = str(next(self.opened.model.parameters()).device)
        return score_spans(self.opened.model.decoder, items, ids, batch_size=batch_size, device=device)

    @staticmethod
    def _filled(prompt: list[int], places: list[int], spans: list[Generation]) -> Generation:
        output, cursor = [], 0
        for place, span in zip(places, spans):
            output += prompt[cursor:place] + span.tokens
            cursor = place + 1
        output += prompt[cursor:]
        reasons = [span.finish_reason for span in spans]
        return Generation(tokens=[t for span in spans for t in span.tokens], score=sum(span.score for span in spans),
                          finish_reason=next((r for r in reasons if r != "eos"), "eos"), output=output, spans=spans)
