"""Translating with an encoder-decoder model directory, and scoring translations with corpus BLEU.

The decoding strategies are the ones decoder-only models use (lmkit.decoding), run over
Seq2SeqBackend; BLEU is sacrebleu's corpus BLEU, reported with its signature so scores compare.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import DataError, LmkitError


def encode_sources(tokenizer, texts: list[str], limit: int | None) -> list[list[int]]:
    """Token ids of each source text; an empty or too long one is a one-line error naming it."""
    sources = tokenizer.encode_batch(texts)
    label = (lambda i: "the source") if len(texts) == 1 else (lambda i: f"source {i + 1}")
    for i, ids in enumerate(sources):
        if not ids:
            raise DataError(f"{label(i)} is empty; give a sentence to translate")
        if limit is not None and len(ids) > limit:
            raise DataError(f"{label(i)} has {len(ids)} tokens, more than the model's maximum of {limit} "
                            "(encoder.max_positions); split the sentence")
    return sources


def translate_ids(backend, decoding, tokenizer, sources: list[list[int]], batch_size: int = 64):
    """One Generation per source, in order, generated batch_size sources at a time.

    tokenizer: the target side's (its <s>, </s> and padding drive the decoder). Every prompt is the
    same <s>, so the sources are the keys that seed sampling's rows: a sentence samples the same
    translation in any batch, in any position (see lmkit.decoding.sampling).
    """
    from .parallel import special_ids

    bos, eos, pad = special_ids(tokenizer)
    results = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        backend.set_sources(chunk)
        results.extend(decoding.generate(backend, [[bos]] * len(chunk), eos_id=eos, pad_id=pad, keys=chunk))
    return results


@dataclass
class Translator:
    """What translating needs, from a model directory (PyTorch) or an export directory (onnxruntime)."""

    tokenizer: object
    backend: object  # a Backend with set_sources()
    decoding: tuple[str, dict] | None  # the model's default strategy and its options
    max_positions: int | None
    model: object = None  # the ComposedModel, for a model directory
    target_tokenizer: object = None  # the target side's own tokenizer; None: both sides share `tokenizer`

    @property
    def output_tokenizer(self):
        """The tokenizer of the translations: the target side's."""
        return self.target_tokenizer or self.tokenizer


def load_translator(model_dir: str, device: str = "auto") -> Translator:
    """The Translator of a model directory with an encoder and a decoder."""
    from .decoding.seq2seq_backend import Seq2SeqBackend
    from .errors import ArtifactError
    from .model import load_model, load_target_tokenizer
    from .parallel import source_pad_id
    from .training.distributed import resolve_device

    resolved = resolve_device(device)
    model, tokenizer, _ = load_model(model_dir, device=str(resolved))
    if model.kind != "encoder-decoder":
        raise ArtifactError(f"{model_dir} is not an encoder-decoder model; translate needs an encoder and a "
                            "decoder (e.g. the seq2seq-tiny or nmt-tiny presets)")
    if tokenizer is None:
        raise ArtifactError(f"{model_dir} has no tokenizer.json to read sources with")
    from .options import options_to_dict

    decoding = model.spec.decoding
    return Translator(tokenizer, Seq2SeqBackend(model, resolved, pad_id=source_pad_id(tokenizer)),
                      None if decoding is None else (decoding.type, options_to_dict(decoding.options)),
                      model.encoder.max_positions, model, load_target_tokenizer(model_dir))


@dataclass
class BleuScore:
    score: float
    signature: str
    precisions: list[float]
    brevity_penalty: float
    sentences: int

    def as_dict(self) -> dict:
        return {"bleu": self.score, "signature": self.signature, "precisions": self.precisions,
                "brevity_penalty": self.brevity_penalty, "sentences": self.sentences}


def corpus_bleu(hypotheses: list[str], references: list[str]) -> BleuScore:
    """sacrebleu's corpus BLEU (13a tokenisation, exp smoothing) with its signature."""
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise LmkitError(f"{len(hypotheses)} translations for {len(references)} references")
    metric = BLEU()
    result = metric.corpus_score(hypotheses, [references])
    return BleuScore(result.score, str(metric.get_signature()), [float(p) for p in result.precisions],
                     float(result.bp), len(hypotheses))


def evaluate_bleu(translator: Translator, decoding, pairs: list[tuple[str, str]], batch_size: int = 64):
    """(BleuScore, translations) of the sources of `pairs` against their targets."""
    sources = encode_sources(translator.tokenizer, [s for s, _ in pairs], translator.max_positions)
    output = translator.output_tokenizer
    results = translate_ids(translator.backend, decoding, output, sources, batch_size)
    hypotheses = [output.decode(r.tokens, skip_special_tokens=True).strip() for r in results]
    return corpus_bleu(hypotheses, [t for _, t in pairs]), hypotheses
