"""Sequence-to-sequence generation with an encoder-decoder model (translation, summarisation), and
scoring translations with corpus BLEU.

The decoding strategies are the ones decoder-only models use (lmkit.decoding), run over a backend
that takes the sources first (set_sources): Seq2SeqBackend on PyTorch, the export's on
onnxruntime. Every prompt is the decoder's start token, which its decoder_start_token_id chose.
BLEU is sacrebleu's corpus BLEU, reported with its signature so scores compare.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import DataError, LmkitError

log = logging.getLogger(__name__)

SUFFIX_ROLES = ("bos", "eos", "pad", "unk")


def source_suffix_ids(encoder, tokenizer) -> list[int]:
    """The token ids an encoder-decoder appends to every source it encodes: the encoder's `source_suffix`
    roles (lmkit.contract.Encoder; T5: ("eos",), as transformers' T5 tokenizer ends each input with </s>)
    looked up in the source tokenizer. Empty for stacks that declare none (the LSTM NMT families).
    DataError when the tokenizer has no token in a role."""
    ids = []
    for role in getattr(encoder, "source_suffix", ()) or ():
        if role not in SUFFIX_ROLES:
            raise DataError(f"the encoder's source_suffix names '{role}', not one of {', '.join(SUFFIX_ROLES)}")
        token = getattr(tokenizer, f"{role}_id", None)
        if token is None:
            raise DataError(f"the encoder ends every source with the tokenizer's {role} token, which this tokenizer "
                            "lacks; train one with it (T5: </s>)")
        ids.append(int(token))
    return ids


def target_text(tokenizer, ids) -> str:
    """A generated target as every command shows it (lmkit translate, generate, eval, predict, serve): without the
    tokenizer's special tokens and the spaces at its ends."""
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def encode_sources(tokenizer, texts: list[str], limit: int | None, suffix: list[int] | tuple = (),
                   truncate: bool | None = None) -> list[list[int]]:
    """Token ids of each source text, each followed by `suffix` (source_suffix_ids); an empty one is a one-line
    DataError naming it, and so is one longer than `limit` (suffix included) unless `truncate`: then it keeps
    its first tokens and the suffix, with a warning. truncate=False says the caller offers --truncate (the
    error names it); None, that it does not."""
    sources = [ids + list(suffix) if ids else ids for ids in tokenizer.encode_batch(texts)]
    label = (lambda i: "the source") if len(texts) == 1 else (lambda i: f"source {i + 1}")
    for i, ids in enumerate(sources):
        if not ids:
            raise DataError(f"{label(i)} is empty; give a sentence to translate")
        if limit is None or len(ids) <= limit:
            continue
        keep = limit - len(suffix)
        if truncate and keep > 0:
            log.warning("kept the first %d of the %d tokens of %s: the encoder reads %d", keep,
                        len(ids) - len(suffix), label(i), limit)
            sources[i] = ids[:keep] + list(suffix)
            continue
        hint = f", or pass --truncate to keep its first {keep} tokens" if truncate is False and keep > 0 else ""
        raise DataError(f"{label(i)} has {len(ids)} tokens, more than the model's maximum of {limit} "
                        f"(encoder.max_positions); split the sentence{hint}")
    return sources


@dataclass
class Seq2SeqGenerator:
    """Generates target sequences from source token ids over a backend with set_sources().

    start_id: the decoder's start token (Seq2SeqDecoder.decoder_start_token_id: <s>, or pad for T5);
    eos_id ends a target; pad_id pads finished rows.
    """

    backend: object
    start_id: int
    eos_id: int
    pad_id: int

    @classmethod
    def for_tokenizer(cls, backend, start_id: int, tokenizer) -> Seq2SeqGenerator:
        """The generator for a target-side tokenizer: its </s> ends a target, its pad (else </s>) pads."""
        from .parallel import special_ids

        _, eos, pad = special_ids(tokenizer)
        return cls(backend, start_id, eos, pad)

    def generate(self, decoding, sources: list[list[int]], batch_size: int = 64,
                 stop=None) -> list:
        """One Generation per source, in order, generated batch_size sources at a time; a target ends at eos or
        at a stop, left out of it (`stop`: token sequences, or lmkit.decoding.common.StopTexts).

        Every prompt is the same start token, so the sources are the keys that seed sampling's rows: a
        sentence samples the same target in any batch, in any position (see lmkit.decoding.sampling).
        """
        results = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start:start + batch_size]
            self.backend.set_sources(chunk)
            results.extend(decoding.generate(self.backend, [[self.start_id]] * len(chunk), eos_id=self.eos_id,
                                             pad_id=self.pad_id, stop=stop, keys=chunk))
        return results


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
    """sacrebleu's corpus BLEU (13a tokenisation, exp smoothing) with its signature.

    Where no hypothesis has four tokens (short answers: a class name, three words), 4-gram BLEU is 0 whatever
    they are, so the score then stops at the longest order the hypotheses have (sacrebleu's effective order,
    "eff:yes" in the signature); any other corpus gets standard BLEU.
    """
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise LmkitError(f"{len(hypotheses)} translations for {len(references)} references")
    metric = BLEU()
    result = metric.corpus_score(hypotheses, [references])
    if result.totals[-1] == 0 and result.sys_len > 0:  # not one 4-gram among the hypotheses
        metric = BLEU(effective_order=True)
        result = metric.corpus_score(hypotheses, [references])
    return BleuScore(result.score, str(metric.get_signature()), [float(p) for p in result.precisions],
                     float(result.bp), len(hypotheses))


def evaluate_bleu(model, decoding, pairs: list[tuple[str, str]], batch_size: int = 64):
    """(BleuScore, translations) of an encoder-decoder lmkit.opening.OpenedModel on the sources of `pairs`."""
    sources = model.encode_sources([s for s, _ in pairs])
    output = model.output_tokenizer
    results = model.generate_ids(sources, decoding, batch_size=batch_size)
    hypotheses = [target_text(output, r.tokens) for r in results]
    return corpus_bleu(hypotheses, [t for _, t in pairs]), hypotheses
