"""`lmkit finetune`: train a task head on a pretrained model (click only at import)."""
from __future__ import annotations

import json

import click
from click.core import ParameterSource

from ..tasks.chunks import SCHEMES
from .optimizer_cli import optimizer_flags

# What a --resume may give besides --out: the rest are the run's own, saved with it.
RESUME_MAY_GIVE = {"out", "resume", "steps", "device", "as_json"}
TASK_KINDS = ("classification", "similarity", "regression", "multiple-choice", "token-classification",
              "question-answering", "text-to-text")


def _names(value: str | None) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip()) if value else ()


@click.command("finetune")
@click.argument("pretrained", type=click.Path(file_okay=False), required=False)
@click.option("--task", "kind", type=click.Choice(TASK_KINDS),
              help="classification (one text, or an ordered pair: entailment), similarity (an unordered pair), "
                   "regression, multiple-choice (context, choices), token-classification (CoNLL: NER, POS, "
                   "chunking), question-answering (SQuAD v1.1/v2.0, encoders only) or text-to-text (JSONL input/target, "
                   "an encoder-decoder generating the target: T5; or GLM writing it into a [gMASK] after the input).")
@click.option("--train", "train_path", type=click.Path(dir_okay=False),
              help="Training examples: .jsonl, or .tsv with a header row; CoNLL for token-classification, "
                   "SQuAD .json for question-answering.")
@click.option("--dev", "dev_path", type=click.Path(dir_okay=False),
              help="Dev examples, evaluated every --eval-every steps; the best step is kept in OUT/best.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The fine-tuned model directory.")
@click.option("--labels", help="The label set, comma-separated, in index order.  [default: the training file's, sorted]")
@click.option("--text-fields", help="The fields (or TSV columns) holding the text(s), comma-separated.  "
                                    "[default: text, sentence, text_a,text_b, sentence1,sentence2, ...]")
@click.option("--label-field", default="label", show_default=True, help="The field (or column) of the label.")
@click.option("--tag-column", default=-1, show_default=True, type=int,
              help="token-classification: the CoNLL column of the tags (-1: the last).")
@click.option("--tag-scheme", default="auto", show_default=True, type=click.Choice(SCHEMES),
              help="token-classification: how tags form entities for entity F1: conlleval's lenient reading, "
                   "or one scheme read strictly as seqeval does (auto: conlleval for B/I/O tags, the scheme the "
                   "tags spell for IOBES, IOE and BILOU, none for tags without entities such as POS).")
@click.option("--aux-lm-weight", type=float,
              help="λ of GPT's auxiliary language-model loss.  [default: the recipe's: 0.5 for a decoder, none for "
                   "an encoder]")
@click.option("--recipe", metavar="NAME",
              help="How the stack reads examples and features: a registered task recipe (lmkit components --kind "
                   "task-recipe).  [default: the one the stack names: encoder or decoder]")
@click.option("--pattern", metavar="PATTERN",
              help="Fine-tune as cloze (GLM): each example written into PATTERN, its text fields in braces and one "
                   "[MASK] for the answer, e.g. \"{text} Is it good? [MASK]\"; needs --verbalizer.")
@click.option("--verbalizer", metavar="LABEL=WORD,...",
              help="Cloze: the word of each label, e.g. \"0=no,1=yes\"; a label is scored by its word's probability "
                   "in the blank.  [labels: the verbalizer's, in its order, unless --labels]")
@click.option("--multi-token", "multi_token", type=click.Choice(["sum", "mean"]),
              help="Cloze: score a word of several tokens by the sum or the mean of its tokens' log-probabilities, "
                   "written into the blank one after another.  [default: refuse such words]")
@click.option("--noisy-tune", "noisy_tune", default=0.0, show_default=True, type=float, metavar="LAMBDA",
              help="NoisyTune (Wu et al. 2022): before the first step, add U(-λ/2, λ/2) times each pretrained "
                   "tensor's own standard deviation to it, once, seeded by --seed; the paper's λ is 0.15, 0 is off.")
@click.option("--epochs", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Passes over the training file.")
@click.option("--steps", type=click.IntRange(min=1), help="Optimizer steps, in place of --epochs.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Examples per step.")
@click.option("--lr", type=float,
              help="Peak learning rate.  [default: the stack's recipe: 5e-5 for an encoder (BERT) and for "
                   "text-to-text (T5), 6.25e-5 for a decoder (GPT), at width 768; times 768/d_model for narrower "
                   "models]")
@click.option("--warmup-ratio", type=click.FloatRange(0, 1),
              help="Share of the steps spent warming up.  [default: the stack's recipe: 0.1 for an encoder (BERT), "
                   "0.002 for a decoder (GPT)]")
@click.option("--max-length", type=click.IntRange(min=4), help="Tokens per sequence.  [default: the model's context; 512 for a model without one]")
@click.option("--truncate/--no-truncate", default=True, show_default=True,
              help="Cut longer examples (longest text first) with a warning, or fail.")
@click.option("--unlabeled", "unlabeled", metavar="FILE",
              help="Unlabelled text, one sentence per line, for a recipe that learns from it (--recipe cvt).")
@optimizer_flags
@click.option("--multitask", metavar="NAME=FILE,...",
              help="Several tagging tasks trained at once on one model, for a recipe that can (--recipe cvt), in "
                   "place of --train: e.g. ner=ner.conll,pos=pos.conll; --dev then takes the same NAME=FILE form.")
@click.option("--label-smoothing", "label_smoothing", type=click.FloatRange(0, 1, max_open=True),
              help="Label smoothing of a classification or tagging head's cross-entropy.  [default: the recipe's: "
                   "0.1 for cvt (Clark et al. 2018), else 0]")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="An option of the fine-tuned model's spec, as lmkit compose takes them, e.g. encoder.dropout=0.5 "
                   "or objectives.cvt.unlabeled_dropout=0.2; repeat for more.")
@click.option("--dropout", default=0.1, show_default=True, type=float, help="Dropout before the head.")
@click.option("--eval-every", type=int, help="Steps between dev evaluations.  [default: one epoch]")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the head's init, order and dropout.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--resume", is_flag=True,
              help="Go on with the run in --out from its last checkpoint (saved at every evaluation); only --steps "
                   "(raised) and --device may change.")
@click.option("--json", "as_json", is_flag=True, help="Print the best dev record as JSON.")
def finetune_command(pretrained, kind, train_path, dev_path, out, labels, text_fields, label_field, tag_column,
                     tag_scheme, aux_lm_weight, recipe, pattern, verbalizer, multi_token, noisy_tune, unlabeled,
                     optimizer, optimizer_options, schedule, schedule_options, multitask, label_smoothing, overrides,
                     epochs, steps, batch_size, lr, warmup_ratio, max_length, truncate, dropout, eval_every, seed,
                     device, force, resume, as_json):
    """Fine-tune PRETRAINED on a labelled task file into OUT, with a linear head on its sequence features
    (--task text-to-text: no head; an encoder-decoder learns to write each target from its input).

    The stack's task recipe decides how it reads examples: a decoder (GPT) reads GPT's input transformations
    (start text [delim text] extract) and adds the auxiliary LM loss; an encoder (BERT, or an
    encoder-decoder's encoder) reads [CLS] a [SEP] b [SEP] and its pooled state. Metrics on
    --dev: accuracy (plus F1 and Matthews correlation for two classes, macro F1 for more), Pearson and
    Spearman for regression, entity-level F1 (see --tag-scheme) and token accuracy for token
    classification, exact match and F1 for QA (the official SQuAD v1.1 or v2.0 script's).
    """
    from ..errors import require_torch

    require_torch("lmkit finetune")
    from ..options import parse_assignments
    from ..tasks.finetune import TaskOptions, finetune
    from ..tasks.finetune import resume as resume_run

    if resume:
        if noisy_tune:
            raise click.UsageError("--noisy-tune shakes the weights once, at a run's start; a resumed run goes on from "
                                   "the weights it saved: leave --noisy-tune out")
        if (pretrained is not None or kind or train_path or dev_path or unlabeled or optimizer or schedule
                or overrides or label_smoothing is not None or multitask or pattern or verbalizer or multi_token):
            raise click.UsageError("--resume goes on with the run in --out, with its own model and task files; "
                                   "leave PRETRAINED, --task, --train and --dev out")
        # Any other setting given goes with the run's own (a trial's --lr and --batch-size were dropped unsaid).
        context = click.get_current_context()
        given = [f"--{name.replace('_', '-')}" for name in context.params
                 if name not in RESUME_MAY_GIVE
                 and context.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
        if given:
            raise click.UsageError(f"--resume goes on with the settings the run was started with; only --steps (raised) "
                                   f"and --device may change: leave {', '.join(given)} out")
        record = resume_run(out, steps=steps, device=None if device == "auto" else device)
        _report(record, out, as_json)
        return
    training = dict(epochs=epochs, steps=steps, batch_size=batch_size, max_length=max_length, lr=lr,
                    warmup_ratio=warmup_ratio, seed=seed, eval_every=eval_every, device=device, force=force,
                    optimizer={"optimizer": optimizer, "schedule": schedule,
                               "optimizer_options": parse_assignments(optimizer_options, "--optimizer-set"),
                               "schedule_options": parse_assignments(schedule_options, "--schedule-set")})
    if multitask is not None:
        from ..tasks.finetune import finetune_multitask, parse_task_files

        if pretrained is None or train_path is not None:
            raise click.UsageError("--multitask names the tasks' training files: give PRETRAINED and leave --train out")
        options = TaskOptions(kind=kind or "token-classification", labels=_names(labels), dropout=dropout,
                              truncate=truncate, tag_column=tag_column, tag_scheme=tag_scheme, recipe=recipe,
                              noisy_tune=noisy_tune, unlabeled=unlabeled, label_smoothing=label_smoothing,
                              overrides=tuple(overrides), multitask=multitask, multitask_dev=dev_path)
        record = finetune_multitask(pretrained, out, parse_task_files(multitask, "--multitask"),
                                    parse_task_files(dev_path, "--dev") if dev_path else {}, options, **training)
        _report(record, out, as_json)
        return
    missing = [flag for flag, value in (("PRETRAINED", pretrained), ("--task", kind), ("--train", train_path))
               if value is None]
    if missing:
        raise click.UsageError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} needed to start a "
                               "fine-tuning run")
    options = TaskOptions(kind=kind, text_fields=_names(text_fields), label_field=label_field,
                          labels=_names(labels), aux_lm_weight=aux_lm_weight, dropout=dropout, truncate=truncate,
                          tag_column=tag_column, tag_scheme=tag_scheme, recipe=recipe, noisy_tune=noisy_tune,
                          unlabeled=unlabeled, label_smoothing=label_smoothing, overrides=tuple(overrides),
                          pattern=pattern, verbalizer=verbalizer, multi_token=multi_token)
    record = finetune(pretrained, out, train_path, dev_path, options, **training)
    _report(record, out, as_json)


def _report(record: dict, out: str, as_json: bool) -> None:
    from ..tasks.finetune import BEST

    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    if "tasks" in record:  # --multitask: each task's dev metrics at the best step, and its model
        for name, metrics in record["tasks"].items():
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            click.echo(f"{name}: {shown or 'no --dev file'}  ({out}/{BEST}/{name})")
        return
    names = ("entity_f1", "accuracy", "f1", "mcc", "macro_f1", "pearson", "spearman", "exact_match")
    shown = {k: record[k] for k in names if k in record}
    if shown:
        click.echo(f"best dev step {record['step']}: " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
        baseline = record.get("baseline") or {}
        if any(k in baseline for k in shown):
            click.echo(f"baseline, predicting {baseline['predicts']}: "
                       + "  ".join(f"{k} {baseline[k]:.4f}" for k in shown if k in baseline))
        click.echo(f"{out}/{BEST}")
    else:
        click.echo(out)
