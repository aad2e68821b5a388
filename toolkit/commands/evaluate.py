"""`lmkit eval`: perplexity, bits per token and bits per byte of a model on held-out text (click only at import)."""
import click


@click.command("eval")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--data", "paths", multiple=True, required=True,
              help="Text or .jsonl files, or directories of them; repeatable.")
@click.option("--stride", type=click.IntRange(min=1),
              help="Tokens between windows; each scored token sees at least context - stride before it.  "
                   "[default: half the context]")
@click.option("--context", type=click.IntRange(min=2), help="Tokens per window.  [default: the model's context]")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Windows per forward pass.")
@click.option("--text-field", default="text", show_default=True, help="The field of .jsonl records to read.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--strategy", help="Translation models: greedy, beam or sample.  [default: the model's]")
@click.option("--num-beams", type=int, help="Translation models, beam: hypotheses kept per sentence.")
@click.option("--length-penalty", type=float, help="Translation models, beam: length normalisation exponent.")
def eval_command(model_dir, paths, stride, context, batch_size, text_field, device, as_json, **decoding):
    """Score MODEL_DIR on text with a sliding window, so long texts are scored with full context.

    Each document is preceded by the end-of-text token, as in training, so every token of it is scored.
    An encoder-decoder model (Seq2Seq, NMT) is scored on parallel text instead (--data SOURCE --data
    TARGET, or .tsv files): corpus BLEU of its translations, with sacrebleu's signature.
    """
    import json

    from .translate import evaluate_translation

    if evaluate_translation(model_dir, paths, decoding, device=device, as_json=as_json):
        return

    import numpy as np

    from ..data import load_tokens, text_bytes
    from ..errors import ArtifactError, LmkitError, require_torch

    require_torch("lmkit eval")
    from ..evaluation import score_tokens
    from ..model import load_model
    from ..training.distributed import resolve_device

    device = resolve_device(device)
    model, tokenizer, _ = load_model(model_dir, device=str(device))
    if model.decoder is None:
        raise ArtifactError(f"{model_dir} has no decoder; perplexity needs a left-to-right language model")
    if tokenizer is None:
        raise ArtifactError(f"{model_dir} has no tokenizer.json to read the text with")
    model.eval()
    limit = model.decoder.max_positions
    context = context or limit
    if context > limit:
        raise LmkitError(f"--context {context} is beyond the model's {limit} positions; give at most {limit}")
    stride = stride or max(context // 2, 1)
    if stride >= context:
        raise LmkitError(f"--stride {stride} must be smaller than --context {context}, so windows overlap")
    stream = load_tokens(paths, tokenizer, text_field=text_field, progress=True, what="evaluation data")
    tokens = np.concatenate([[tokenizer.eos_id], np.asarray(stream.tokens, dtype=np.int64)])
    score = score_tokens(model.decoder, tokens, context=context, stride=stride, batch_size=batch_size,
                         device=str(device), progress=True)
    score.bytes = text_bytes(paths, text_field=text_field)
    result = {**score.as_dict(), "documents": stream.documents, "context": context, "stride": stride}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"perplexity      {score.perplexity:.4f}")
    click.echo(f"bits per token  {score.bits_per_token:.4f}")
    click.echo(f"bits per byte   {score.bits_per_byte:.4f}")
    click.echo(f"tokens          {score.tokens:,} in {stream.documents:,} documents "
               f"(window {context}, stride {stride})")
