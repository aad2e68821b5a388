"""`lmkit generate`: continue prompts with a model directory's decoder (click only at import)."""
from __future__ import annotations

import json
import sys

import click

from .decoding_cli import decoding_flags, decoding_options, show_warnings, unescape
from .translate import echo_translations, generate_from_sources


@click.command("generate")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT",
              help="A prompt; repeat for a batch.  [default: --input, else one prompt per line of stdin]")
@click.option("--input", "input_path", type=click.Path(dir_okay=False),
              help="A file of prompts, one per line (blank lines skipped), generated as one batch.")
@decoding_flags
@click.option("--stop", "stops", multiple=True, metavar="TEXT",
              help="End a continuation (an encoder-decoder's target too) where its text comes to hold this text, "
                   "the text cut where it begins (backslash escapes: \\n \\t \\r \\\\ \\xHH \\uHHHH); repeatable.")
@click.option("--stream/--no-stream", default=None,
              help="Print the text as it is produced.  [default: on for a single prompt without --json]")
@click.option("--json", "as_json", is_flag=True,
              help="Print tokens, text, score and finish reason as JSON. score is the log-probability of the "
                   "tokens and of the eos or stop tokens that ended them (as transformers scores a beam's eos).")
@click.option("--truncate", is_flag=True, help="Keep the end of a prompt too long for the model's context (an "
              "encoder-decoder's source: its first tokens), with a warning.")
@click.option("--prefix", "prefix_path", type=click.Path(), metavar="DIR",
              help="Start from a trained key/value prefix (the --out of lmkit train-prefix): the cache every "
                   "prompt continues from, for decoder-only models and their exports.")
@click.option("--attribute", metavar="NAME", help="The attribute whose prefix --prefix uses (one of those it was "
                                                  "trained for; needed when it holds several).")
@click.option("--device", default="auto", show_default=True,
              help="auto (cuda when PyTorch, or onnxruntime for an export, has it), cpu, cuda or cuda:N.")
@click.option("--provider", metavar="NAME",
              help="Export directories only: the onnxruntime execution provider to run on, e.g. "
                   "CPUExecutionProvider or CUDAExecutionProvider, in place of --device; an error if it is not "
                   "the one that runs.")
def generate_command(model_dir, prompts, input_path, strategy, stops, stream, as_json, truncate, prefix_path,
                     attribute, device, provider, **flags):
    """Continue each prompt with the model in MODEL_DIR and print prompt and continuation.

    MODEL_DIR is a model directory (run with PyTorch) or an export directory from `lmkit export`
    (run with onnxruntime, without PyTorch); the decoding strategies are the same code for both.

    The decoding flags override the model's decoding settings; each one belongs to the strategies
    whose options have its name (--num-beams: beam).
    """
    from ..decoding.common import fit_prompts, stop_texts
    from ..opening import is_export, open_model
    from ..registry import get_host

    exported = is_export(model_dir)
    if provider is not None and not exported:
        raise click.UsageError("--provider picks an onnxruntime execution provider for an export directory; "
                               f"{model_dir} is a model directory, run with PyTorch: use --device")
    if provider is not None and device != "auto":
        raise click.UsageError("give --device or --provider, not both: --provider names the execution provider "
                               "that takes the place of the device")
    if attribute is not None and prefix_path is None:
        raise click.UsageError("--attribute picks one of a prefix file's prefixes; give the file with --prefix")
    prefix = None
    if prefix_path is not None:  # read before the model, so a wrong name fails fast
        from ..prefix import load_prefix

        prefix = load_prefix(prefix_path, attribute)
    if prompts and input_path is not None:
        raise click.UsageError("give --prompt or --input, not both")
    texts = list(prompts) or _read_prompts(input_path)
    if stream and (as_json or len(texts) > 1):
        raise click.UsageError("--stream prints one prompt's text as it is produced; give a single prompt "
                               "and no --json")
    show_warnings()

    if not exported:
        from ..errors import require_torch

        require_torch("lmkit generate on a model directory")
    model = open_model(model_dir, device=device, provider=provider)
    rewrites = model.kind == "decoder" and model.generator is not None  # GLM fills blanks: no continuation to stream
    if stream and rewrites:
        raise click.UsageError("--stream prints a continuation as it is produced; this model fills the blanks of "
                               "its prompt instead: leave --stream out")
    asked_to_stream = stream
    stream = stream if stream is not None else len(texts) == 1 and not as_json and not rewrites
    given = {key: value for key, value in flags.items() if value is not None}
    if any(not text for text in stops):
        raise click.UsageError("--stop needs a non-empty text")
    stops = [unescape(text, "--stop") for text in stops]
    if model.kind == "encoder-decoder":  # the prompts are source sentences: sequence-to-sequence generation
        output = model.output_tokenizer  # what the decoder writes (None: refused below, with what to do)
        stop = stop_texts(stops, output) if output is not None else []
        results = generate_from_sources(model, texts, strategy, given, prefix=prefix, truncate=truncate, stop=stop)
        echo_translations(texts, results, model.output_tokenizer, as_json)
        return
    if model.kind == "encoder":
        model.backend()  # says, in one line, that this model (or export) embeds but does not generate
    tokenizer = model.tokenizer
    if tokenizer is None:
        from ..opening import no_tokenizer

        raise no_tokenizer(model_dir, "read prompts with")
    backward = tokenizer.reverse  # a backward LM writes the text before its prompt, right to left
    if asked_to_stream and backward:
        raise click.UsageError("--stream prints text left to right as it is produced; this model writes what comes "
                               "before its prompt, right to left: leave --stream out")
    stream = stream and not backward
    host = get_host()
    name, options = decoding_options(model.generation, strategy, given, host)
    decoding = host.component("decoding", name).load()(options)

    stop = stop_texts(stops, tokenizer)
    ids = tokenizer.encode_batch(texts)
    if truncate:
        ids = [row or ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) for row in ids]
        room = None if model.max_positions is None else model.max_positions - (prefix.length if prefix else 0)
        ids = fit_prompts(ids, room, options.max_new_tokens, truncate=True)
    _note_untrained_positions(model_dir, model.max_positions, max(map(len, ids)) + options.max_new_tokens
                              + (prefix.length if prefix else 0))

    printer = _TextStream(tokenizer, texts[0], ids[0]) if stream else None
    results = model.generate_ids(ids, decoding, stop=stop, on_token=printer, prefix=prefix)
    if printer is not None:
        printer.finish(results[0].tail)

    if as_json:
        click.echo(json.dumps([{"prompt": text, **result.to_dict(tokenizer.decode)}
                               for text, result in zip(texts, results)], indent=2))
        return
    # A backward model's tokens come before the prompt: decoded with it, in reading order.
    outputs = [tokenizer.decode(prompt + generation.tokens) if backward and generation.output is None
               else text + tokenizer.continuation(prompt, generation.tokens) + generation.tail if generation.output is None
               else tokenizer.decode(generation.output)
               for text, prompt, result in zip(texts, ids, results) for generation in [result] + result.alternatives]
    if printer is not None:
        outputs = outputs[1:]  # already streamed
    if outputs:
        if printer is not None:
            click.echo()
        click.echo("\n\n".join(outputs))


def _note_untrained_positions(model_dir: str, max_positions: int | None, reach: int) -> None:
    """A note on stderr when a generation reaches positions its model was never trained at: a model trained on
    128-token windows of 256 positions wrote incoherent text from about position 128 on (a user's trial)."""
    from ..artifacts import trained_length

    trained = trained_length(model_dir)  # an export has no training state: no note
    if trained is not None and max_positions is not None and trained < max_positions and reach > trained:
        click.echo(f"note: {model_dir} was trained on {trained}-token windows (its trainer_state.json) and this "
                   f"generation reaches position {min(reach, max_positions)}: text past {trained} may lose its "
                   f"way; train with a longer --seq-len, or ask for fewer tokens", err=True)


def _read_prompts(path: str | None) -> list[str]:
    """The non-blank lines of --input, else of stdin."""
    from .inputs import input_lines

    lines, where = input_lines(path, "--prompt TEXT", "prompts")
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise click.UsageError(f"{where if where == 'stdin' else '--input ' + where} holds no prompts; "
                               "give one per line, or use --prompt TEXT")
    return texts


class _TextStream:
    """on_token for one prompt: prints the prompt, then new text as soon as it is whole characters."""

    def __init__(self, tokenizer, prompt: str, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.prompt = prompt  # printed with the first text, so an error before it prints nothing
        self.prompt_ids = prompt_ids  # what the continuation's first token is decoded after (Tokenizer.continuation)
        self.tokens: list[int] = []
        self.printed = 0  # characters of the continuation printed so far

    def __call__(self, row: int, token: int) -> None:
        self.tokens.append(token)
        self._print(final=False)

    def finish(self, tail: str = "") -> None:
        """tail: the text a stop that began inside a token left before it (Generation.tail)."""
        self._print(final=True, tail=tail)
        click.echo()

    def _print(self, final: bool, tail: str = "") -> None:
        text = self.tokenizer.continuation(self.prompt_ids, self.tokens) + tail
        if not final and text.endswith("\ufffd"):  # the first bytes of a character that spans tokens
            return
        click.echo(self.prompt + text[self.printed:], nl=False)
        sys.stdout.flush()
        self.prompt, self.printed = "", len(text)
