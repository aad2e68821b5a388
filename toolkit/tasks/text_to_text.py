"""Text-to-text tasks (Raffel et al. 2020 §2.4): every task is an input text and a target text, and an
encoder-decoder model is fine-tuned and scored on the text it generates.

A task file is JSON lines, one record per example: {"input": ..., "target": ...}, with an optional
"prefix" ("question", "translate English to German", ...) that is put before the input as
"prefix: input", T5's way of telling tasks apart. The other task files read as text to text the way
T5 casts them (Raffel et al. 2020 Appendix D): a SQuAD .json file as "question: Q context: C" -> the
first answer, a GLUE-style .tsv (or a .jsonl without "input") as "task: sentence1: A sentence2: B" ->
the label's name. Scores compare the generated text with the
target: exact match and token F1 (normalised as SQuAD's official script does) and corpus BLEU.
"""
from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..data import read_text
from ..errors import DataError, LmkitError
from ..seq2seq import target_text
from .qa import answer_f1, exact_match

INPUT, TARGET, PREFIX = "input", "target", "prefix"


@dataclass
class TextPair:
    source: str
    target: str | None


@dataclass
class TextPairs:
    path: str
    examples: list[TextPair]
    labels: tuple[str, ...] = ()  # no label set: targets are free text
    lines: list[int] | None = None
    prefix: str = ""  # a classification file's task name, put before every input; "" for JSONL and SQuAD


def read_task(path: str, require_labels: bool = True, prefix: str = "") -> TextPairs:
    """Any task file as text pairs: text-to-text JSONL, SQuAD JSON, or a classification TSV/JSONL (see above).

    prefix: the task's name for a classification file (default: the file's name without its extension).
    """
    import os

    if not os.path.isfile(path):
        raise DataError(f"task file {path} does not exist")
    if path.endswith(".json"):
        from .qa import read_squad

        questions = read_squad(path, require_labels)
        return TextPairs(path, [TextPair(f"question: {q.question} context: {q.context}",
                                         q.answers[0][0] if q.answers else ("" if q.labelled else None))
                                for q in questions.examples])
    if path.endswith(".jsonl") and _is_text_to_text(path):
        return read_text_pairs(path, require_labels)
    from .formats import read_task_file

    data = read_task_file(path, "classification", require_labels=require_labels)
    name = prefix or task_name(path)
    examples = []
    for example in data.examples:
        texts = example.texts
        source = (f"{name}: " + " ".join(f"sentence{i + 1}: {t}" for i, t in enumerate(texts)) if len(texts) > 1
                  else f"{name}: {texts[0]}")
        target = data.labels[example.label] if example.label != -1 else None
        examples.append(TextPair(source, target))
    return TextPairs(path, examples, lines=list(data.lines) or None, prefix=name)


def stored_prefix(model_dir: str) -> str:
    """The task prefix a text-to-text model was fine-tuned with on a classification file (its seq2seq
    objective's task_prefix, in config.json or an export's manifest); "" when it has none."""
    from ..opening import is_export

    if is_export(model_dir):
        from ..exports.manifest import read_manifest

        spec = (read_manifest(model_dir).get("source") or {}).get("spec") or {}
    else:
        from ..artifacts import read_config

        spec = read_config(model_dir).get("spec", {})
    for objective in spec.get("objectives") or []:
        if isinstance(objective, dict) and isinstance(objective.get("task_prefix"), str):
            return objective["task_prefix"]
    return ""


def task_name(path: str) -> str:
    """The prefix a classification file's examples get by default: its file name without the extension."""
    import os

    return os.path.splitext(os.path.basename(path))[0]


def _is_text_to_text(path: str) -> bool:
    with io.StringIO(read_text(path)) as handle:
        for line in handle:
            if line.strip():
                try:
                    return INPUT in json.loads(line)
                except (json.JSONDecodeError, TypeError):
                    return True  # let read_text_pairs name the line
    return True


def read_text_pairs(path: str, require_labels: bool = True) -> TextPairs:
    """The examples of a JSONL file; a record without its input (or, when required, its target) is a
    one-line error naming the line."""
    try:
        handle = io.StringIO(read_text(path))
    except OSError:
        raise DataError(f"{path} is not a readable file; give a .jsonl file of {{\"input\", \"target\"}} records") \
            from None
    examples, lines = [], []
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path} line {number} is not JSON; each line must be one "
                                "{\"input\": ..., \"target\": ...} record") from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {number} is not a JSON object")
            for field in (INPUT, TARGET) if require_labels else (INPUT,):
                if not isinstance(record.get(field), str) or not record[field].strip():
                    raise DataError(f"{path} line {number} has no '{field}' text; every record needs \"input\" "
                                    f"and \"target\" strings")
            source = record[INPUT]
            if isinstance(record.get(PREFIX), str) and record[PREFIX].strip():
                source = f"{record[PREFIX].strip()}: {source}"
            target = record.get(TARGET) if isinstance(record.get(TARGET), str) else None
            examples.append(TextPair(source, target))
            lines.append(number)
    if not examples:
        raise DataError(f"{path} holds no examples")
    return TextPairs(path, examples, lines=lines)


def text_metrics(predictions: list[str], targets: list[str]) -> dict[str, float]:
    """exact_match and f1 (SQuAD's normalisation, as fractions) and corpus BLEU (0-100) of generated texts."""
    from ..seq2seq import corpus_bleu

    n = max(len(predictions), 1)
    return {"exact_match": sum(exact_match(p, t) for p, t in zip(predictions, targets)) / n,
            "f1": sum(answer_f1(p, t, "1.1") for p, t in zip(predictions, targets)) / n,
            "bleu": corpus_bleu(predictions, targets).score}


def answers_in_text(directory: str) -> bool:
    """Whether a model (or export) directory turns a source text into a target text, so that `lmkit predict` and
    `lmkit eval --task` score the text it generates: an encoder-decoder (T5), or a decoder whose family writes a
    target after its source (a registered generator with source_prompt: GLM) and which holds no task head."""
    from ..opening import is_export, model_kind_of

    kind = model_kind_of(directory)
    if kind != "decoder":
        return kind == "encoder-decoder"
    if is_export(directory):
        from ..exports.manifest import read_manifest

        spec = (read_manifest(directory).get("source") or {}).get("spec") or {}
    else:
        from ..artifacts import read_config

        spec = read_config(directory).get("spec", {})
    from ..registry import get_host

    heads = ("sequence-head", "token-head", "span-head")
    decoder = (spec.get("decoder") or {}).get("type")
    return (decoder in get_host().components["generator"]
            and not any(isinstance(o, dict) and o.get("type") in heads for o in spec.get("objectives") or []))


def is_text_to_text_file(path: str) -> bool:
    """A .jsonl file of {"input", "target"} records (what a decoder that writes targets reads as text to text;
    its other task files are read as its other tasks)."""
    import os

    return path.endswith(".jsonl") and os.path.isfile(path) and _is_text_to_text(path)


class TextToTextKind:
    """lmkit.tasks.kinds' interface for text-to-text fine-tuning: the whole model is kept and trained to write the
    target: an encoder-decoder with the seq2seq objective, a decoder-only stack with the objective it names
    (`text_to_text_objective`: GLM's target as a [gMASK] span after its source); dev examples are scored on
    greedily generated text."""

    head = "seq2seq"  # an encoder-decoder's; a decoder's is its stack's text_to_text_objective (objective_for)
    name = "text-to-text"
    keeps_decoder = True

    def __init__(self, name: str, options):
        self.options = options
        self.prefix = ""  # a classification file's: the first file read names it (--train), so --dev matches
        self.writer = None  # a decoder-only model's text-to-text objective (reader()), which encodes the pairs

    def objective_for(self, key: str, stack_type: str, stack_class) -> str:
        """The objective the fine-tuned model trains with: seq2seq for an encoder-decoder, the decoder's own for a
        decoder-only stack; a one-line error for a decoder without one."""
        if key == "encoder":
            return self.head
        name = getattr(stack_class, "text_to_text_objective", None)  # a third-party stack may predate it
        if name is None:
            raise LmkitError(f"text-to-text fine-tuning trains a model to write a target after its source: an "
                             f"encoder-decoder (T5), or a decoder that writes into a blank (GLM); this decoder "
                             f"({stack_type}) has no text-to-text objective: fine-tune an encoder-decoder, or use "
                             "another --task")
        self.head = name
        return name

    def read(self, path: str, labels: tuple[str, ...] = (), require_labels: bool = True) -> TextPairs:
        self.prefix = self.prefix or task_name(path)  # unused by text-to-text JSONL and SQuAD files
        return read_task(path, require_labels, self.prefix)

    def head_options(self, data) -> dict:
        """The prefix of a classification file's examples, stored with the model (Seq2SeqOptions.task_prefix)."""
        return {"task_prefix": data.prefix} if data.prefix else {}

    def reader(self, model, tokenizer):
        """What encode() needs of the model: the token its decoder starts from (an encoder-decoder's), or the
        special ids of a decoder's text-to-text objective. The tokenizer is kept to read generated ids back as
        text (metrics, outputs)."""
        from ..seq2seq import source_suffix_ids

        self.tokenizer = tokenizer
        if model.kind == "decoder":  # the objective the stack names writes and collates its pairs
            self.head = type(model.decoder).text_to_text_objective
            self.writer = model.objectives[self.head]
            return self.writer.special_ids(tokenizer)
        self.source_suffix = source_suffix_ids(model.encoder, tokenizer)  # T5's </s> after every source
        return model.decoder.decoder_start_token_id(tokenizer)

    def encode(self, data: TextPairs, tokenizer, max_length: int, start_id):
        """(list of (source ids, target ids, start id, eos id), examples cut). Sources are encoded as
        lmkit.opening.OpenedModel.encode_sources encodes them for generation (the encoder's source_suffix
        appended); a source or target longer than max_length is cut (and counted), keeping the suffix.
        A decoder-only model's examples are its text-to-text objective's (encode_pair)."""
        if self.writer is not None:
            sources = tokenizer.encode_batch([e.source for e in data.examples])
            targets = tokenizer.encode_batch([e.target or "" for e in data.examples])
            encoded = [self.writer.encode_pair(s, t, max_length, start_id) for s, t in zip(sources, targets)]
            return [example for example, _ in encoded], sum(cut for _, cut in encoded)
        eos = tokenizer.eos_id
        if eos is None:
            raise DataError("text-to-text needs a tokenizer with </s>, which ends every target")
        suffix = list(self.source_suffix)
        sources = tokenizer.encode_batch([e.source for e in data.examples])
        targets = tokenizer.encode_batch([e.target or "" for e in data.examples])
        encoded, cut = [], 0
        for source, target in zip(sources, targets):
            if len(source) + len(suffix) > max_length or len(target) + 1 > max_length:
                cut += 1
                source, target = source[:max_length - len(suffix)], target[:max_length - 1]
            encoded.append((source + suffix, target, start_id, eos))
        return encoded, cut

    def collate(self, encoded, pad_id: int) -> dict[str, np.ndarray]:
        if self.writer is not None:
            return self.writer.collate(encoded, pad_id)
        from ..parallel import make_batch

        _, _, start, eos = encoded[0]
        batch = make_batch([(s, t) for s, t, _, _ in encoded], start, eos, pad_id)
        batch["attention_mask"] = batch["source_mask"]  # what the trainer counts tokens by
        return batch

    def predict(self, model, batch) -> list[list[int]]:
        """The batch's targets as generated with the model's own decoding settings (its spec's [decoding]), as
        `lmkit predict` and `lmkit eval --task` generate them, so the dev scores a fine-tuning run records are
        theirs. (They used to be greedy with at most twice the batch's longest gold target: a length that depended
        on the answers and on the batch, and a looping output scored otherwise than predict scores it.)"""
        from ..decoding.seq2seq_backend import Seq2SeqBackend
        from ..opening import build_decoding, generation_settings
        from ..seq2seq import Seq2SeqGenerator

        decoding = build_decoding(generation_settings(model.spec.to_dict()))  # what OpenedModel.decoding() gives
        was_training = model.training
        if self.writer is not None:
            results = self._predict_decoder(model, batch, decoding)
        else:
            source_ids, mask = batch["source_ids"].cpu().numpy(), batch["source_mask"].cpu().numpy()
            sources = [row[m].tolist() for row, m in zip(source_ids, mask)]
            start, eos = int(batch["target_ids"][0, 0]), self.tokenizer.eos_id
            generator = Seq2SeqGenerator(Seq2SeqBackend(model, pad_id=0), start, eos, eos)
            results = generator.generate(decoding, sources)
        model.train(was_training)
        return [r.tokens for r in results]

    def _predict_decoder(self, model, batch, decoding) -> list:
        """Generation by the decoder family's generator (GLM fills the [gMASK] after each source), over the model
        being fine-tuned, as lmkit.opening runs a model directory."""
        from ..opening import OpenedModel
        from ..torch_runtime import TorchRuntime

        device = next(model.parameters()).device
        where = "the model being fine-tuned"
        opened = OpenedModel(where, TorchRuntime(model, device, where), tokenizer=self.tokenizer, generation={},
                             model=model, decoder_type=model.spec.decoder.type)
        return opened.generate_ids(self.writer.prompts(batch), decoding)

    def metrics(self, predictions: list, batches: list[dict], encoded, data: TextPairs) -> dict[str, float]:
        texts = [target_text(self.tokenizer, tokens)
                 for predicted in predictions for tokens in predicted]
        return text_metrics(texts, [e.target for e in data.examples[:len(texts)]])

    def decide(self, scores):
        return scores

    def baseline(self, batches: list[dict], encoded, data: TextPairs, train: TextPairs) -> dict:
        """The dev metrics of answering every input with the most frequent training target."""
        target = Counter(e.target for e in train.examples).most_common(1)[0][0]
        return {"predicts": f"{target!r} for every input (the most frequent training target)",
                **text_metrics([target] * len(data.examples), [e.target for e in data.examples])}

    def outputs(self, scores: list, batches: list[dict], encoded, data: TextPairs) -> list[dict]:
        texts = [target_text(self.tokenizer, tokens)
                 for predicted in scores for tokens in predicted]
        return [{"line": line, "text": text} for line, text in zip(data.lines or range(1, len(texts) + 1), texts)]

    def labelled(self, data: TextPairs) -> bool:
        return all(e.target is not None for e in data.examples)

    tokenizer = None  # the fine-tuned model's, from reader()
    source_suffix: list[int] = []  # its encoder's, from reader()
