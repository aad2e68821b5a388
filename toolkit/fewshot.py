"""Zero- and few-shot evaluation: multiple choice and cloze items scored by conditional log-likelihood.

A task file is JSON Lines, one item per line, of one of two kinds (the fields say which):

    multiple choice  {"context": "the sky is", "choices": ["blue", "green", "red"], "label": 0}
    cloze            {"context": "he opened the door with his", "answer": "key"}
                     {"text": "he opened the door with his key"}   (LAMBADA: the last word is the answer)

Other fields (an "id", say) are ignored. An answer is appended to its context after a delimiter (a
space by default, left out where the context already ends, or the answer already starts, with
whitespace) and the delimiter belongs to the answer, as in lm-eval-harness: " blue" is scored given
"the sky is". Context and answer are tokenized separately and concatenated, so the scored tokens
are exactly the answer's, whatever the tokenizer would have merged across the boundary.

With k shots the prompt is k other items rendered as context + delimiter + correct answer, joined
by a separator (a blank line by default), then the item's context; GPT-3 (Brown et al. 2020, §2)
draws them at random for each item, and so does this module, from (seed, item number), so a run
is repeatable and an item's examples do not depend on --limit or the batch size. A prompt that
does not fit the model's context loses examples from the front first, then context from the left.

Multiple choice is scored three ways, the prediction being the first choice with the highest score:
the summed log-likelihood of each choice (`accuracy`, lm-eval-harness's acc), and two
length-normalised variants, per answer token (`accuracy_per_token`, GPT-3's per-token likelihood,
Brown et al. 2020 §2.4; the tokens of delimiter + answer, the ones scored) and per character of the
choice as written (`accuracy_per_char`, lm-eval-harness's acc_norm: the log-likelihood divided by
len(choice), the delimiter not counted). A cloze item counts as correct when greedy decoding would
produce the answer, i.e. every answer token is the argmax given what precedes it (GPT-2's LAMBADA
accuracy, the harness's acc for lambada); `perplexity` is exp(answer NLL / answer tokens), per
token, and `perplexity_per_answer` exp(mean answer NLL), per answer as lm-eval-harness's lambada
perplexity aggregates it (exp of minus the mean of each item's summed log-likelihood).

Reading and prompting do not import torch; `score` does, when it is called.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass

import numpy as np

from .errors import DataError

MULTIPLE_CHOICE = "multiple choice"
CLOZE = "cloze"
ITEM_FORMATS = ('a multiple-choice item is {"context": ..., "choices": [...], "label": <0-based index>}, '
                'a cloze item {"context": ..., "answer": ...} or {"text": ...} whose last word is the answer')


@dataclass(frozen=True)
class Item:
    context: str
    answers: tuple[str, ...]  # the choices of a multiple-choice item; the one answer of a cloze item
    label: int  # which answer is correct (always 0 for cloze)
    kind: str  # MULTIPLE_CHOICE or CLOZE
    where: str  # "tasks.jsonl line 7", for error messages

    @property
    def gold(self) -> str:
        return self.answers[self.label]


# -- reading ---------------------------------------------------------------------------------------


def read_items(path: str, what: str = "task file") -> list[Item]:
    """Every item of a JSONL task file, each checked; a problem is a one-line DataError naming the line."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory; give the {what} as a .jsonl file with one item per line")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such {what}")
    items = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    items.append(parse_item(line, f"{path} line {number}"))
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start}); save the {what} as UTF-8") from None
    if not items:
        raise DataError(f"{path} has no items; write one JSON object per line: {ITEM_FORMATS}")
    return items


def _type_name(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def parse_item(line: str, where: str) -> Item:
    """One item from one line of JSON; `where` ("tasks.jsonl line 7") starts every error message."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where} is not valid JSON ({error.msg} at column {error.colno}); "
                        "write one JSON object per line") from None
    if not isinstance(record, dict):
        raise DataError(f"{where} is a JSON {_type_name(record)}, not an object; {ITEM_FORMATS}")
    has = [key for key in ("choices", "answer", "text") if key in record]
    if not has:
        raise DataError(f'{where} has none of "choices", "answer" or "text"; {ITEM_FORMATS}')
    if len(has) > 1:
        raise DataError(f'{where} has both "{has[0]}" and "{has[1]}"; an item is either multiple choice '
                        '("choices" and "label") or cloze ("answer", or a "text" ending in the answer)')
    if has == ["text"]:
        return _cloze_from_text(record["text"], where)
    context = record.get("context")
    if context is None:
        raise DataError(f'{where} has no "context"; give the text the answer follows ("" for none)')
    if not isinstance(context, str):
        raise DataError(f'{where}: "context" must be a string, got a {_type_name(context)}')
    if has == ["answer"]:
        answer = record["answer"]
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(f'{where}: "answer" must be a non-empty string, got {json.dumps(answer)}')
        return Item(context, (answer,), 0, CLOZE, where)
    choices = record["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError(f'{where}: "choices" must be a list of at least 2 strings, got {json.dumps(choices)}')
    for index, choice in enumerate(choices):
        if not choice.strip():
            raise DataError(f"{where}: choice {index} is empty; every choice needs text to score")
    if "label" not in record:
        raise DataError(f'{where} has no "label"; give the 0-based index of the correct choice in "choices"')
    label = record["label"]
    if isinstance(label, bool) or not isinstance(label, int):
        raise DataError(f'{where}: "label" must be an integer, the 0-based index of the correct choice, '
                        f"got {json.dumps(label)}")
    if not 0 <= label < len(choices):
        raise DataError(f'{where}: "label" {label} is outside the {len(choices)} choices; labels are 0-based '
                        'indices into "choices"')
    return Item(context, tuple(choices), label, MULTIPLE_CHOICE, where)


def _cloze_from_text(text, where: str) -> Item:
    """LAMBADA's format: the answer is the text's last word, the context everything before it."""
    if not isinstance(text, str):
        raise DataError(f'{where}: "text" must be a string, got a {_type_name(text)}')
    context, word = re.match(r"(.*?)\s*(\S*)\s*$", text, re.DOTALL).groups()
    if not context.strip() or not word:
        raise DataError(f'{where}: "text" needs at least two words, a context and the last word to predict')
    # The whitespace before the last word is the delimiter, which `continuation` puts back.
    return Item(context, (word,), 0, CLOZE, where)


def task_kind(items: list[Item]) -> str:
    """The one kind of all items, or an error at the first that differs."""
    kind = items[0].kind
    for item in items:
        if item.kind != kind:
            raise DataError(f"{item.where} is a {item.kind} item but {items[0].where} is {kind}; "
                            "put each kind of task in its own file")
    return kind


# -- prompts ---------------------------------------------------------------------------------------


def continuation(context: str, answer: str, delimiter: str = " ") -> str:
    """The text that follows `context` for `answer`: the delimiter (unless whitespace is already
    there, so lm-eval style answers with their own leading space are not doubled) and the answer."""
    if not context or context[-1].isspace() or answer[:1].isspace():
        return answer
    return delimiter + answer


def render_example(item: Item, delimiter: str = " ") -> str:
    """An in-context example: its context followed by its correct answer."""
    return item.context + continuation(item.context, item.gold, delimiter)


def choose_examples(index: int, pool_size: int, shots: int, seed: int, exclude_self: bool) -> list[int]:
    """Which `shots` items of the example pool go before item `index`, in prompt order.

    Drawn without replacement from a generator seeded by (seed, index), so the choice for an item
    is the same however many items are scored; never the item itself when the pool is its own file.
    """
    if shots == 0:
        return []
    candidates = np.arange(pool_size)
    if exclude_self:
        candidates = candidates[candidates != index]
    if shots > len(candidates):
        raise ValueError(f"{shots} examples asked for but only {len(candidates)} are available")
    rng = np.random.default_rng([seed, index])
    return [int(i) for i in rng.choice(candidates, size=shots, replace=False)]


@dataclass
class Prompted:
    """An item ready to score: one prompt, shared by its answers, and each answer's tokens."""
    item: Item
    prompt: list[int]
    answers: list[list[int]]  # tokens of each continuation (delimiter + answer)
    answer_chars: list[int]  # characters of each answer as written, without the delimiter (acc_norm's length)
    shots: int  # in-context examples that fit
    truncated: bool  # the item's own context lost tokens on the left to fit


def build_prompts(items: list[Item], tokenizer, max_positions: int, *, examples: list[Item] | None = None,
                  shots: int = 0, seed: int = 0, exclude_self: bool = False, separator: str = "\n\n",
                  delimiter: str = " ") -> list[Prompted]:
    """Tokenized prompts and answers for `items`, fitted into `max_positions` tokens.

    `examples` is the pool in-context examples are drawn from; `exclude_self` says it is the task
    file itself, whose item i is then never an example for item i. The prompt starts with the
    end-of-text token (or else the beginning-of-text one), as every training document does after
    the one before it, so the first context token is predicted as in training and an empty context
    still gives the answer something to be conditioned on.
    """
    examples = examples if examples is not None else items
    start = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id
    prefix = [] if start is None else [start]
    prompted = []
    for index, item in enumerate(items):
        texts = [continuation(item.context, answer, delimiter) for answer in item.answers]
        answers = [tokenizer.encode(text) for text in texts]
        for number, (text, tokens) in enumerate(zip(texts, answers)):
            what = "the answer" if item.kind == CLOZE else f"choice {number}"
            if not tokens:
                raise DataError(f"{item.where}: {what} {text!r} is no tokens at all for this tokenizer; "
                                "give an answer the tokenizer can spell")
            # The model reads the prompt and all but the last answer token, and at least one prompt
            # token must come before the first answer token to condition it on.
            if len(tokens) > max_positions:
                raise DataError(f"{item.where}: {what} is {len(tokens)} tokens but the model reads at most "
                                f"{max_positions} positions; shorten the answer or use a model with a "
                                "longer context")
        # Every answer of an item gets the same prompt, so the room left by its longest answer.
        room = max_positions + 1 - max(len(tokens) for tokens in answers)
        chosen = [examples[i] for i in choose_examples(index, len(examples), shots, seed, exclude_self)]
        while True:
            shown = [render_example(example, delimiter) for example in chosen]
            prompt = prefix + tokenizer.encode(separator.join([*shown, item.context]))
            if len(prompt) <= room or not chosen:
                break
            chosen = chosen[1:]  # the oldest example goes first: the item's own context matters most
        truncated = len(prompt) > room
        prompt = prompt[-room:]
        if not prompt:
            raise DataError(f'{item.where}: the context is empty and the {tokenizer.kind} tokenizer has no '
                            "end-of-text token to start the prompt with; give a context")
        # acc_norm divides by len(choice) of the choice string itself: lm-eval-harness's
        # `completion_len = [float(len(i)) for i in choices]`; the target delimiter is not counted.
        prompted.append(Prompted(item, prompt, answers, [len(answer) for answer in item.answers], len(chosen),
                                 truncated))
    return prompted


# -- scoring ---------------------------------------------------------------------------------------


@dataclass
class AnswerScore:
    log_likelihood: float  # summed over the answer's tokens, in nats
    tokens: int
    chars: int
    greedy: bool  # every answer token is the argmax given what precedes it


def score(decoder, prompted: list[Prompted], batch_size: int = 8, device: str = "cpu",
          progress: bool = False) -> list[list[AnswerScore]]:
    """Each item's answers scored by the decoder, in one forward pass per `batch_size` answers.

    Rows (prompt + answer) are padded on the right with an attention mask: the decoder is causal,
    so padding after a row's last real token changes none of its logits. Only the logits at the
    positions that predict answer tokens are normalised, which keeps memory to (answer tokens, V).
    """
    import torch
    from tqdm import tqdm

    rows = [(i, a) for i, p in enumerate(prompted) for a in range(len(p.answers))]
    scores: list[list[AnswerScore | None]] = [[None] * len(p.answers) for p in prompted]
    # disable=None: the bar is drawn only on a terminal.
    bar = tqdm(total=len(prompted), desc="items", unit="item", file=sys.stderr, dynamic_ncols=True,
               disable=None if progress else True)
    with torch.inference_mode():
        for begin in range(0, len(rows), batch_size):
            batch = rows[begin:begin + batch_size]
            sequences = [prompted[i].prompt + prompted[i].answers[a] for i, a in batch]
            width = max(len(s) for s in sequences) - 1  # the model reads all but the last token
            ids = torch.zeros(len(batch), width + 1, dtype=torch.long)
            scored = torch.zeros(len(batch), width, dtype=torch.bool)  # positions that predict answer tokens
            for row, ((i, _), sequence) in enumerate(zip(batch, sequences)):
                ids[row, :len(sequence)] = torch.tensor(sequence)
                first = len(prompted[i].prompt) - 1  # the position whose logits predict answer token 0
                scored[row, first:len(sequence) - 1] = True
            lengths = torch.tensor([len(s) - 1 for s in sequences])
            attention_mask = torch.arange(width)[None, :] < lengths[:, None]  # (B, width), True at real tokens
            ids, scored, attention_mask = ids.to(device), scored.to(device), attention_mask.to(device)
            logits = decoder(ids[:, :-1], attention_mask=attention_mask)  # (B, width, V)
            targets = ids[:, 1:][scored]  # (N,) every answer token of the batch, row by row
            picked = logits[scored].float()  # (N, V)
            token_log_probs = torch.log_softmax(picked, dim=-1).gather(1, targets[:, None]).squeeze(1)  # (N,)
            misses = (picked.argmax(-1) != targets).float()  # (N,)
            row_of = torch.arange(len(batch), device=ids.device)[:, None].expand_as(scored)[scored]  # (N,)
            sums = torch.zeros(len(batch), device=ids.device).index_add_(0, row_of, token_log_probs)
            missed = torch.zeros(len(batch), device=ids.device).index_add_(0, row_of, misses)
            for (i, a), total, wrong in zip(batch, sums.tolist(), missed.tolist()):
                scores[i][a] = AnswerScore(total, len(prompted[i].answers[a]), prompted[i].answer_chars[a],
                                           wrong == 0)
                if a == len(prompted[i].answers) - 1:
                    bar.update(1)
    bar.close()
    return scores


def summarize(prompted: list[Prompted], scores: list[list[AnswerScore]]) -> dict:
    """The task's metrics (see the module docstring) and how much prompting had to give up to fit."""
    kind = prompted[0].item.kind
    result = {"kind": kind, "items": len(prompted),
              "shots_used": sum(p.shots for p in prompted) / len(prompted),
              "items_truncated": sum(p.truncated for p in prompted)}
    if kind == MULTIPLE_CHOICE:
        def accuracy(value) -> float:
            hits = [int(np.argmax([value(s) for s in answers])) == p.item.label
                    for p, answers in zip(prompted, scores)]
            return sum(hits) / len(hits)

        result.update(
            accuracy=accuracy(lambda s: s.log_likelihood),
            accuracy_per_token=accuracy(lambda s: s.log_likelihood / s.tokens),
            accuracy_per_char=accuracy(lambda s: s.log_likelihood / s.chars),
            chance=sum(1 / len(p.answers) for p in prompted) / len(prompted),
        )
    else:
        nll = -sum(answers[0].log_likelihood for answers in scores)
        tokens = sum(answers[0].tokens for answers in scores)
        result.update(accuracy=sum(answers[0].greedy for answers in scores) / len(scores),
                      perplexity=math.exp(nll / tokens), perplexity_per_answer=math.exp(nll / len(scores)),
                      nll=nll, answer_tokens=tokens)
    return result
