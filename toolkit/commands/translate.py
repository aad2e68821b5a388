"""`lmkit translate`: sequence-to-sequence generation with an encoder-decoder model or export directory
(click only at import)."""
from __future__ import annotations

import json

import click

from ..seq2seq import target_text
from .decoding_cli import decoding_flags, decoding_options, show_warnings


@click.command("translate")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--text", "texts", multiple=True, metavar="TEXT", help="A source sentence; repeat for a batch.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False),
              help="A file of source sentences, one per line.  [default: --text, else stdin]")
@decoding_flags
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Sentences decoded together.")
@click.option("--json", "as_json", is_flag=True, help="Print tokens, text and scores as JSON.")
@click.option("--truncate", is_flag=True,
              help="Keep the first tokens of a source longer than the encoder reads (with a warning), not fail.")
@click.option("--device", default="auto", show_default=True,
              help="auto (cuda when PyTorch, or onnxruntime for an export, has it), cpu, cuda or cuda:N.")
def translate_command(model_dir, texts, input_path, strategy, batch_size, as_json, truncate, device, **flags):
    """Translate each source sentence with the encoder-decoder model in MODEL_DIR.

    MODEL_DIR is a model directory (run with PyTorch) or its export directory (run with
    onnxruntime); greedy, beam search and sampling are the same code as for `lmkit generate`.
    """
    texts = list(texts) or _read_sources(input_path)
    given = {key: value for key, value in flags.items() if value is not None}
    model = open_encoder_decoder(model_dir, device)
    show_warnings()
    results = generate_from_sources(model, texts, strategy, given, batch_size=batch_size, truncate=truncate)
    echo_translations(texts, results, model.output_tokenizer, as_json)


def echo_translations(texts, results, tokenizer, as_json: bool) -> None:
    """One translation per line (alternatives after it), or JSON with tokens and scores."""

    def decode(ids):
        return target_text(tokenizer, ids)

    if as_json:
        click.echo(json.dumps([{"source": text, **result.to_dict(decode)} for text, result in zip(texts, results)],
                              indent=2))
        return
    for result in results:
        for generation in [result] + result.alternatives:
            click.echo(decode(generation.tokens) + generation.tail)


def open_encoder_decoder(model_dir: str, device: str, provider: str | None = None):
    """lmkit.open_model of a model or export directory that must be an encoder-decoder."""
    from ..errors import ArtifactError, require_torch
    from ..opening import is_export, model_kind_of, open_model

    if not is_export(model_dir):
        require_torch("lmkit translate on a model directory")
    if model_kind_of(model_dir) != "encoder-decoder":  # before torch or onnxruntime loads anything
        raise ArtifactError(f"{model_dir} is not an encoder-decoder model; translate needs an encoder and a "
                            "decoder (e.g. the seq2seq-tiny or nmt-tiny presets); lmkit generate continues text")
    return open_model(model_dir, device=device, provider=provider)


def generate_from_sources(model, texts: list[str], strategy: str | None, given: dict, *, batch_size: int = 64,
                          prefix=None, truncate: bool | None = None, stop: list[list[int]] | None = None):
    """One Generation per source text, from an encoder-decoder OpenedModel (its decoder's cache started from `prefix`,
    a lmkit.prefix.CachePrefix, when given; a source too long for the encoder cut to its first tokens with
    `truncate`, else refused, naming --truncate where the command offers it (truncate=False; None: it does not); a
    target ending where it produces one of the `stop` token sequences); `generate`
    shares it."""
    from ..errors import ArtifactError
    from ..registry import get_host

    if model.tokenizer is None:
        raise ArtifactError(f"{model.directory} has no tokenizer.json to read sources with")
    host = get_host()
    name, options = decoding_options(model.generation, strategy, given, host)
    decoding = host.component("decoding", name).load()(options)
    sources = model.encode_sources(texts, truncate=truncate)
    return model.generate_ids(sources, decoding, batch_size=batch_size, prefix=prefix, stop=stop)


def _read_sources(path: str | None) -> list[str]:
    from .inputs import input_lines

    lines, _ = input_lines(path, "--text SENTENCE", "source sentences")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise click.UsageError(f"line {number} of the input is empty; give one sentence per line")
    if not lines:
        raise click.UsageError("the input holds no sentences; give one per line")
    return lines


def evaluate_translation(model_dir: str, paths, decoding: dict, *, device: str, as_json: bool) -> bool:
    """`lmkit eval` on an encoder-decoder model: print corpus BLEU and return True; False for other models."""
    from ..errors import ArtifactError
    from ..opening import is_export, model_kind_of

    try:
        is_export(model_dir)
    except ArtifactError:
        return False  # neither kind of directory: the perplexity path says what it lacks
    if model_kind_of(model_dir) != "encoder-decoder":
        if any(value is not None for value in decoding.values()):
            raise click.UsageError("--strategy, --num-beams and --length-penalty apply to translation models only")
        return False
    import time

    from ..parallel import read_pairs
    from ..seq2seq import corpus_bleu

    pairs = read_pairs(paths)
    given = {key: value for key, value in decoding.items() if value is not None}
    strategy = given.pop("strategy", None)
    started = time.perf_counter()
    model = open_encoder_decoder(model_dir, device)
    tokenizer = model.output_tokenizer
    results = generate_from_sources(model, [s for s, _ in pairs], strategy, given)
    hypotheses = [target_text(tokenizer, r.tokens) for r in results]
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


def evaluate_text_to_text(model_dir: str, task_path: str, decoding: dict, *, device: str, as_json: bool,
                          limit: int | None = None) -> bool:
    """`lmkit eval --task` on an encoder-decoder model, or on a decoder that writes targets after sources (GLM
    fine-tuned text to text) given a text-to-text JSONL file: exact match, F1 and BLEU of the text it generates for
    each record (lmkit.tasks.text_to_text); True when it was one, else False."""
    from ..errors import ArtifactError
    from ..opening import is_export, model_kind_of
    from ..tasks.text_to_text import answers_in_text, is_text_to_text_file

    try:
        is_export(model_dir)
    except ArtifactError:
        return False
    encoder_decoder = model_kind_of(model_dir) == "encoder-decoder"
    if not encoder_decoder and not (answers_in_text(model_dir) and is_text_to_text_file(task_path)):
        return False
    import time

    from ..tasks.text_to_text import read_task, stored_prefix, text_metrics

    # A classification file is read with the prefix the model was fine-tuned with, whatever the file's name.
    data = read_task(task_path, prefix=stored_prefix(model_dir))  # checked before the model loads
    examples = data.examples[:limit] if limit else data.examples
    given = {key: value for key, value in decoding.items() if value is not None}
    strategy = given.pop("strategy", None)
    started = time.perf_counter()
    model = open_encoder_decoder(model_dir, device) if encoder_decoder else _open_writer(model_dir, device)
    results = generate_from_sources(model, [e.source for e in examples], strategy, given)
    texts = [target_text(model.output_tokenizer, r.tokens) for r in results]
    scores = text_metrics(texts, [e.target for e in examples])
    record = {"task": task_path, "examples": len(examples), **scores, "seconds": time.perf_counter() - started}
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        click.echo(f"task            {task_path}: text-to-text, {len(examples):,} examples")
        click.echo(f"exact match     {scores['exact_match']:.2%}")
        click.echo(f"f1              {scores['f1']:.2%}")
        click.echo(f"bleu            {scores['bleu']:.2f}")
    return True


def _open_writer(model_dir: str, device: str):
    """lmkit.open_model of a decoder that writes targets after sources (GLM), torch needed for a model directory."""
    from ..errors import require_torch
    from ..opening import is_export, open_model

    if not is_export(model_dir):
        require_torch("lmkit eval on a model directory")
    return open_model(model_dir, device=device)
