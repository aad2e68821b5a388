"""`lmkit eval`: perplexity of held-out text, or zero-/few-shot accuracy on a task file (click only at import)."""
import click

from .decoding_cli import unescape

# Options that belong to one of the two modes; giving one in the other mode is an error, not a no-op.
TEXT_ONLY = ("stride", "text_field")
TASK_ONLY = ("shots", "examples", "seed", "limit", "separator", "delimiter")


@click.command("eval")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--data", "paths", multiple=True,
              help="Text or .jsonl files, or directories of them, to measure perplexity on; repeatable.")
@click.option("--task", "task_path", metavar="FILE",
              help="A .jsonl task file of multiple-choice or cloze items to measure accuracy on "
                   "(see docs/evaluation.md); instead of --data.")
@click.option("--shots", default=0, show_default=True, type=click.IntRange(min=0),
              help="In-context examples before each task item.")
@click.option("--examples", "examples_path", metavar="FILE",
              help="A .jsonl file of items to draw the in-context examples from.  "
                   "[default: the task file, never the item being scored]")
@click.option("--seed", default=0, show_default=True, type=int, help="Which in-context examples each item gets.")
@click.option("--limit", type=click.IntRange(min=1), help="Score only the first N task items.")
@click.option("--separator", default="\\n\\n", show_default=True,
              help="Text between in-context examples and before the item (backslash escapes allowed).")
@click.option("--delimiter", default=" ", show_default="a space",
              help="Text between a context and its answer, unless whitespace is already there.")
@click.option("--stride", type=click.IntRange(min=1),
              help="Tokens between windows; each scored token sees at least context - stride before it.  "
                   "[default: half the context]")
@click.option("--context", type=click.IntRange(min=2),
              help="Tokens per window, or per task prompt and answer.  [default: the --seq-len the model was "
                   "trained at, else the model's context]")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Windows, or task answers, per forward pass.")
@click.option("--text-field", default="text", show_default=True, help="The field of .jsonl records to read.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--strategy", help="Translation models: greedy, beam or sample.  [default: the model's]")
@click.option("--num-beams", type=int, help="Translation models, beam: hypotheses kept per sentence.")
@click.option("--length-penalty", type=float, help="Translation models, beam: length normalisation exponent.")
@click.pass_context
def eval_command(ctx, model_dir, paths, task_path, shots, examples_path, seed, limit, separator, delimiter,
                 stride, context, batch_size, text_field, device, as_json, **decoding):
    """Score MODEL_DIR on text (--data) or on a task (--task).

    With --data: perplexity, bits per token and bits per byte with a sliding window, so long texts
    are scored with full context. Each document is preceded by the end-of-text token, as in
    training, so every token of it is scored.

    With --task: each item's answers are scored by their log-likelihood given the prompt (SHOTS
    examples, then the item's context). Multiple choice reports accuracy by summed, per-token and
    per-character log-likelihood; cloze (LAMBADA-style) reports greedy exact-match accuracy and the
    answers' perplexity.

    An encoder-decoder model (Seq2Seq, NMT) is scored on parallel text instead (--data SOURCE --data
    TARGET, or .tsv files): corpus BLEU of its translations, with sacrebleu's signature. With --task, on
    a text-to-text JSONL file ({"input", "target"} records, T5): exact match, F1 and BLEU of the text it
    generates.
    """
    from ..errors import LmkitError

    if bool(paths) == bool(task_path):
        raise LmkitError("give either --data (perplexity of text) or --task (accuracy on a task file), "
                         "not " + ("both" if paths else "neither"))
    given = {name for name in ctx.params
             if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    wrong = [name for name in (TEXT_ONLY if task_path else TASK_ONLY) if name in given]
    if wrong:
        flag = "--" + wrong[0].replace("_", "-")
        raise LmkitError(f"{flag} applies to {'--data' if task_path else '--task'} only; leave it out")
    from .translate import evaluate_text_to_text, evaluate_translation

    if not task_path and evaluate_translation(model_dir, paths, decoding, device=device, as_json=as_json):
        return
    if task_path and evaluate_text_to_text(model_dir, task_path, decoding, device=device, as_json=as_json,
                                           limit=limit):
        return
    if task_path:
        _evaluate_task(model_dir, task_path, shots=shots, examples_path=examples_path, seed=seed, limit=limit,
                       separator=unescape(separator, "--separator"),
                       delimiter=unescape(delimiter, "--delimiter"), context=context,
                       batch_size=batch_size, device=device, as_json=as_json)
    else:
        _evaluate_text(model_dir, paths, stride=stride, context=context, batch_size=batch_size,
                       text_field=text_field, device=device, as_json=as_json)


def _load(model_dir, device, what, decoder: bool = True, opened_too: bool = False):
    """(model, tokenizer, device) of a model that can be scored left to right (and the OpenedModel, opened_too);
    decoder=False also takes a model whose objectives score text (ELMo's biLM)."""
    from ..errors import ArtifactError, require_torch
    from ..opening import is_export, open_model

    if is_export(model_dir):
        raise ArtifactError(f"{model_dir} is an export directory; {what} runs on its model directory, with PyTorch")
    require_torch("lmkit eval")
    opened = open_model(model_dir, device=device)
    model, tokenizer = opened.model, opened.tokenizer
    if model.decoder is None and (decoder or not any(_scores_text(o) for o in model.objectives.values())):
        # Masked LM models language but scores only the tokens it masked: no perplexity of a text (a trial's
        # `lmkit eval --data` on a RoBERTa divided by zero tokens scored).
        raise ArtifactError(f"{model_dir} has no decoder; {what} needs a left-to-right language model"
                            + ("" if decoder else " or an objective that scores text (ELMo's biLM), and "
                               f"{' and '.join(model.objectives) or 'no objective'} "
                               f"{'do' if len(model.objectives) > 1 else 'does'} not; score a fine-tuned "
                               "model on its task with lmkit predict MODEL --data FILE"))
    if tokenizer is None:
        from ..opening import no_tokenizer

        raise no_tokenizer(model_dir, "read the text with")
    model.eval()
    return (model, tokenizer, opened.runtime.device) + ((opened,) if opened_too else ())


def _scores_text(objective) -> bool:
    """Whether an objective scores a text's every token (lmkit.contract.Objective.score_text is its own)."""
    from ..objectives.base import ObjectiveModule

    method = getattr(type(objective), "score_text", None)
    return method is not None and method is not ObjectiveModule.score_text


RECURRENT_WINDOW = 1024  # tokens per window for a decoder without a position limit, unless --context says


def _window(model, context, model_dir: str) -> int:
    from ..errors import LmkitError

    limit = model.decoder.max_positions
    if limit is None:  # a recurrent LM reads any length; windows keep memory bounded all the same
        return context or RECURRENT_WINDOW
    if context and context > limit:
        raise LmkitError(f"--context {context} is beyond the model's {limit} positions; give at most {limit}")
    if context:
        return context
    from ..artifacts import trained_length

    trained = trained_length(model_dir)
    if trained is not None and trained < limit:
        # Positions past the trained length were never trained: windows reaching them scored a model
        # trained at 128 of 256 positions at perplexity 3.43 where its own length gave 2.59 (a user's trial).
        click.echo(f"note: windows of {trained} tokens, the length {model_dir} was trained on (its "
                   f"trainer_state.json); --context sets another, up to the model's {limit}", err=True)
        return trained
    return limit


def _evaluate_text(model_dir, paths, *, stride, context, batch_size, text_field, device, as_json):
    import json

    import numpy as np

    from ..data import load_tokens, text_bytes
    from ..errors import LmkitError

    model, tokenizer, device, opened = _load(model_dir, device, "perplexity", decoder=False, opened_too=True)
    if model.decoder is None:
        _evaluate_without_decoder(model, tokenizer, device, paths, context=context, stride=stride,
                                  batch_size=batch_size, text_field=text_field, as_json=as_json)
        return
    from ..evaluation import Score, score_tokens

    context = _window(model, context, model_dir)
    stride = stride or max(context // 2, 1)
    if stride >= context:
        raise LmkitError(f"--stride {stride} must be smaller than --context {context}, so windows overlap")
    if opened.generator is not None:  # the family writes text its own way (GLM: a [gMASK] span per document)
        # Its documents as its pre-training data reads them (lmkit.documents: sentences per line, documents apart
        # at blank lines and file ends, one per .jsonl record), each written left to right the family's way.
        from ..documents import load_corpus

        corpus = load_corpus(paths, tokenizer, text_field)
        starts = corpus.offsets[corpus.doc_starts]
        documents = [corpus.tokens[a:b].tolist() for a, b in zip(starts[:-1], starts[1:]) if b > a]
        if not documents:
            raise LmkitError("the evaluation data has no tokens to score; give files that contain text")
        nll, count = opened.generator.score_documents(documents, context, batch_size, stride=stride)
        score, n_documents = Score(nll=nll, tokens=count), len(documents)
    else:
        stream = load_tokens(paths, tokenizer, text_field=text_field, progress=True, what="evaluation data")
        tokens = np.concatenate([[tokenizer.eos_id], np.asarray(stream.tokens, dtype=np.int64)])
        score = score_tokens(model.decoder, tokens, context=context, stride=stride, batch_size=batch_size,
                             device=str(device), progress=True)
        n_documents = stream.documents
    score.bytes = text_bytes(paths, text_field=text_field)
    result = {**score.as_dict(), "documents": n_documents, "context": context, "stride": stride}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"perplexity      {score.perplexity:.4f}")
    click.echo(f"bits per token  {score.bits_per_token:.4f}")
    click.echo(f"bits per byte   {score.bits_per_byte:.4f}")
    click.echo(f"tokens          {score.tokens:,} in {n_documents:,} document{'s' if n_documents != 1 else ''} "
               f"(window {context}, stride {stride})")


def _evaluate_without_decoder(model, tokenizer, device, paths, *, context, stride, batch_size, text_field, as_json):
    """Perplexity of a model without a decoder, from its objectives' own scores (ELMo: forward and backward
    language models), over windows of `context` tokens that do not overlap."""
    import json
    import math

    import numpy as np

    from ..data import load_tokens
    from ..errors import LmkitError
    from ..evaluation import score_with_objectives

    if stride is not None:
        raise LmkitError("--stride slides windows for a left-to-right model; this model reads both ways, so its "
                         "windows do not overlap: leave --stride out")
    limit = model.encoder.max_positions
    context = context or (limit or RECURRENT_WINDOW)
    if limit is not None and context > limit:
        raise LmkitError(f"--context {context} is beyond the model's {limit} positions; give at most {limit}")
    token_inputs = model.feature_stack.token_inputs(tokenizer)  # lmkit.token_inputs: ELMo's char ids
    stream = load_tokens(paths, tokenizer, text_field=text_field, progress=True, what="evaluation data",
                         spellings=token_inputs is not None)
    tokens = np.concatenate([[tokenizer.eos_id], np.asarray(stream.tokens, dtype=np.int64)])
    context = min(context, len(tokens))
    if context < 2:
        raise LmkitError("the evaluation data has no tokens to score; give files that contain text")
    inputs = None
    if token_inputs is not None:  # every word as the text spells it, an unknown one too, not as <unk>
        from ..token_inputs import window_inputs

        spellings = stream.spellings.shifted(1)  # the end-of-text token put before the stream
        inputs = lambda starts, width: window_inputs(token_inputs, tokenizer, tokens, spellings, starts, width)  # noqa: E731
    scores = score_with_objectives(model, tokens, context, batch_size=batch_size, device=str(device), inputs=inputs)
    nll, count = sum(s.nll for s in scores.values()), sum(s.tokens for s in scores.values())
    if not count:
        raise LmkitError(f"the model's objectives ({', '.join(model.objectives)}) scored no token of "
                         "the text; perplexity needs a left-to-right language model or an objective that scores text")
    result = {"perplexity": math.exp(nll / count), **{f"{name}_perplexity": s.perplexity for name, s in scores.items()},
              "tokens": count, "documents": stream.documents, "context": context,
              "scores": {name: s.as_dict() for name, s in scores.items()}}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for name, score in scores.items():
        click.echo(f"{name + ' perplexity':<22}{score.perplexity:.4f}  ({score.tokens:,} tokens)")
    click.echo(f"{'mean perplexity':<22}{result['perplexity']:.4f}  exp of the mean NLL of all of them")
    click.echo(f"{'windows':<22}{context} tokens, not overlapping, in {stream.documents:,} documents")


def _evaluate_task(model_dir, task_path, *, shots, examples_path, seed, limit, separator, delimiter, context,
                   batch_size, device, as_json):
    import json
    import os

    from .. import fewshot
    from ..errors import LmkitError

    # The task file is read and checked before the model is loaded: a typo costs no waiting.
    items = fewshot.read_items(task_path)
    kind = fewshot.task_kind(items)
    same_file = examples_path is None or (os.path.exists(examples_path)
                                          and os.path.samefile(examples_path, task_path))
    pool = items if same_file else fewshot.read_items(examples_path, what="examples file")
    available = len(pool) - 1 if same_file else len(pool)
    if shots > available:
        items_word = "item" if available == 1 else "items"
        source = f"{task_path} has only {available} other {items_word}" if same_file else \
            f"{examples_path} has only {available} {items_word}"
        raise LmkitError(f"--shots {shots} needs {shots} in-context examples but {source}; "
                         "give fewer --shots or a larger --examples file")
    scored_items = items[:limit] if limit else items

    model, tokenizer, device = _load(model_dir, device, "task evaluation")
    window = _window(model, context, model_dir)
    prompted = fewshot.build_prompts(scored_items, tokenizer, window, examples=pool, shots=shots, seed=seed,
                                     exclude_self=same_file, separator=separator, delimiter=delimiter)
    scores = fewshot.score(model.decoder, prompted, batch_size=batch_size, device=str(device), progress=True)
    result = {"task": task_path, **fewshot.summarize(prompted, scores), "shots": shots, "seed": seed,
              "examples": task_path if same_file else examples_path, "context": window}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    shown = f"{shots}" if not shots else f"{shots} from {result['examples']}, seed {seed}"
    click.echo(f"task            {task_path}: {kind}, {len(prompted):,} items")
    click.echo(f"shots           {shown}")
    if kind == fewshot.MULTIPLE_CHOICE:
        click.echo(f"accuracy        {result['accuracy']:.2%}  by summed log-likelihood of each choice")
        click.echo(f"  per token     {result['accuracy_per_token']:.2%}  by log-likelihood per answer token")
        click.echo(f"  per char      {result['accuracy_per_char']:.2%}  by log-likelihood per character of the "
                   "choice (lm-eval-harness acc_norm)")
        click.echo(f"chance          {result['chance']:.2%}")
    else:
        click.echo(f"accuracy        {result['accuracy']:.2%}  greedy decoding gives the answer exactly")
        click.echo(f"perplexity      {result['perplexity']:.4f}  per answer token "
                   f"({result['answer_tokens']:,} tokens)")
        click.echo(f"  per answer    {result['perplexity_per_answer']:.4f}  exp(mean answer NLL) "
                   "(lm-eval-harness lambada perplexity)")
    if result["items_truncated"] or result["shots_used"] < shots:
        click.echo(f"fitted          {window} positions: {result['shots_used']:.2f} examples per item on "
                   f"average, {result['items_truncated']:,} items' contexts cut on the left")
