"""`lmkit translate`: translate sentences with an encoder-decoder model directory (click only at import)."""
from __future__ import annotations

import json
import sys

import click

from .decoding_cli import decoding_flags, decoding_options, is_export


@click.command("translate")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--text", "texts", multiple=True, metavar="TEXT", help="A source sentence; repeat for a batch.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False),
              help="A file of source sentences, one per line.  [default: --text, else stdin]")
@decoding_flags
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Sentences decoded together.")
@click.option("--json", "as_json", is_flag=True, help="Print tokens, text and scores as JSON.")
@click.option("--device", default="auto", show_default=True,
              help="auto (cuda when PyTorch, or onnxruntime for an export, has it), cpu, cuda or cuda:N.")
def translate_command(model_dir, texts, input_path, strategy, batch_size, as_json, device, **flags):
    """Translate each source sentence with the encoder-decoder model in MODEL_DIR.

    MODEL_DIR is a model directory (run with PyTorch) or its export directory (run with
    onnxruntime); greedy, beam search and sampling are the same code as for `lmkit generate`.
    """
    texts = list(texts) or _read_sources(input_path)
    given = {key: value for key, value in flags.items() if value is not None}
    results, tokenizer = translate_texts(model_dir, texts, strategy, given, batch_size=batch_size, device=device)
    echo_translations(texts, results, tokenizer, as_json)


def echo_translations(texts, results, tokenizer, as_json: bool) -> None:
    """One translation per line (alternatives after it), or JSON with tokens and scores."""

    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=True).strip()

    if as_json:
        click.echo(json.dumps([{"source": text, **result.to_dict(decode)} for text, result in zip(texts, results)],
                              indent=2))
        return
    for result in results:
        for generation in [result] + result.alternatives:
            click.echo(decode(generation.tokens))


def is_encoder_decoder(directory: str, exported: bool) -> bool:
    """Whether a model or export directory translates (has an encoder and a decoder), without torch."""

    from ..artifacts import read_config

    if exported:
        from ..exports.manifest import read_manifest

        return read_manifest(directory).get("architecture") == "encoder-decoder"  # a damaged one: one line
    spec = read_config(directory).get("spec", {})
    return bool(spec.get("encoder")) and bool(spec.get("decoder"))


def translate_texts(model_dir: str, texts: list[str], strategy: str | None, given: dict, *, batch_size: int = 64,
                    device: str = "auto", provider: str | None = None):
    """(one Generation per text, tokenizer) from a model or export directory; `generate` shares it."""
    from ..registry import get_host
    from ..translation import encode_sources, translate_ids

    host = get_host()
    if is_export(model_dir):
        from ..exports.seq2seq_runtime import load_translator as load_exported

        translator = load_exported(model_dir, device=device, provider=provider)
    else:
        from ..errors import require_torch

        require_torch("lmkit translate on a model directory")
        from ..translation import load_translator

        translator = load_translator(model_dir, device)
    name, options = decoding_options(translator.decoding, strategy, given, host)
    decoding = host.component("decoding", name).load()(options)
    sources = encode_sources(translator.tokenizer, texts, translator.max_positions)
    output = translator.output_tokenizer
    return translate_ids(translator.backend, decoding, output, sources, batch_size), output


def _read_sources(path: str | None) -> list[str]:
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            lines = [line.rstrip("\r\n") for line in handle]
    elif sys.stdin.isatty():
        raise click.UsageError("give --text SENTENCE, --input FILE, or sentences on stdin, one per line")
    else:
        lines = [line.rstrip("\r\n") for line in sys.stdin]
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise click.UsageError(f"line {number} of the input is empty; give one sentence per line")
    if not lines:
        raise click.UsageError("the input holds no sentences; give one per line")
    return lines


def evaluate_translation(model_dir: str, paths, decoding: dict, *, device: str, as_json: bool) -> bool:
    """`lmkit eval` on an encoder-decoder model: print corpus BLEU and return True; False for other models."""
    import os

    from ..artifacts import CONFIG

    exported = _looks_exported(model_dir)
    if not exported and not os.path.isfile(os.path.join(model_dir, CONFIG)):
        return False
    if not is_encoder_decoder(model_dir, exported):
        if any(value is not None for value in decoding.values()):
            raise click.UsageError("--strategy, --num-beams and --length-penalty apply to translation models only")
        return False
    import time

    from ..parallel import read_pairs
    from ..translation import corpus_bleu

    pairs = read_pairs(paths)
    given = {key: value for key, value in decoding.items() if value is not None}
    strategy = given.pop("strategy", None)
    started = time.perf_counter()
    results, tokenizer = translate_texts(model_dir, [s for s, _ in pairs], strategy, given, device=device)
    hypotheses = [tokenizer.decode(r.tokens, skip_special_tokens=True).strip() for r in results]
    score = corpus_bleu(hypotheses, [t for _, t in pairs])
    seconds = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps({**score.as_dict(), "seconds": seconds}, indent=2))
    else:
        click.echo(f"BLEU            {score.score:.2f}")
        click.echo(f"signature       {score.signature}")
        click.echo(f"precisions      {' / '.join(f'{p:.1f}' for p in score.precisions)}  "
                   f"(brevity penalty {score.brevity_penalty:.3f})")
        click.echo(f"sentences       {score.sentences:,} in {seconds:.1f} s")
    return True


def _looks_exported(directory: str) -> bool:
    import os

    from ..exports.manifest import MANIFEST

    return os.path.isfile(os.path.join(directory, MANIFEST))
