"""The `lmkit` command line.

Results go to stdout, progress and logs to stderr. Errors are one line on stderr with exit status 1
(2 for usage errors); LMKIT_DEBUG=1 shows the traceback instead. Torch is imported inside the
commands that need it, never at start-up, so `lmkit --help` stays fast.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading

import click

from . import __version__
from .errors import LmkitError
from .registry import KINDS, get_host


def debug() -> bool:
    return os.environ.get("LMKIT_DEBUG") == "1"


def echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def echo_table(rows: list[dict], columns: list[str]) -> None:
    """Aligned columns, the last one left ragged."""
    if not rows:
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns[:-1]}
    click.echo("  ".join(c.upper().ljust(widths.get(c, 0)) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(str(row.get(c, "")).ljust(widths.get(c, 0)) for c in columns).rstrip())


class LmkitGroup(click.Group):
    """Lists commands in the order they were added (core first, then plugins)."""

    def list_commands(self, ctx):
        return list(self.commands)


@click.group(cls=LmkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="lmkit")
def cli():
    """Compose, train, run and export the classic language models.

    Every model family is a plugin; `lmkit plugins` lists what is installed.
    """


# -- what is installed -----------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json):
    """Installed plugins: version, what they register, and load errors."""
    host = get_host()
    rows = [info.as_dict() for info in host.plugins.values()]
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        row["version"] = f"{row['distribution']} {row['version']}".strip()
        row["registers"] = row["error"] if row["status"] != "ok" else ", ".join(row["components"]) or "-"
    echo_table(rows, ["name", "version", "status", "registers"])


@cli.command()
@click.option("--kind", type=click.Choice(KINDS), help="Only components of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output, with each option schema.")
def components(kind, as_json):
    """Components that specs can name: tokenizers, encoders, decoders, objectives, ..."""
    from .options import describe_options

    host = get_host()
    rows = []
    for component_kind in [kind] if kind else KINDS:
        for name, component in sorted(host.components[component_kind].items()):
            row = {"kind": component_kind, "name": name, "plugin": component.plugin,
                   "summary": component.summary}
            if (component_kind, name) in host.conflicts:
                row["conflict"] = host.conflicts[(component_kind, name)]
            if as_json:
                try:
                    row["options"] = describe_options(component.options_class())
                except Exception as error:  # noqa: BLE001 - one bad schema must not hide the rest
                    row["options_error"] = str(error)
            rows.append(row)
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        if "conflict" in row:
            row["summary"] = f"CONFLICT: registered by {' and '.join(row['conflict'])}"
    echo_table(rows, ["kind", "name", "plugin", "summary"])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output, with each preset's spec.")
def presets(as_json):
    """Named compositions to start from (lmkit compose PRESET)."""
    host = get_host()
    rows = [{"name": p.name, "plugin": p.plugin, "summary": p.summary, "spec": p.spec}
            for p in sorted(host.presets.values(), key=lambda p: p.name)]
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        parts = [f"{k}={row['spec'][k].get('type')}" for k in ("encoder", "decoder")
                 if isinstance(row["spec"].get(k), dict)]
        row["parts"] = " ".join(parts)
    echo_table(rows, ["name", "plugin", "parts", "summary"])


# -- tokenizers ------------------------------------------------------------------------------------


@cli.group()
def tokenizer():
    """Train and inspect tokenizers (Hugging Face `tokenizers` format)."""


@tokenizer.command("train")
@click.argument("files", nargs=-1, required=True)
@click.option("--kind", required=True, help="Tokenizer kind, e.g. bytelevel-bpe, bpe, wordpiece, unigram, char.")
@click.option("--vocab-size", type=click.IntRange(min=1), help="Target vocabulary size.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="Any other option of the kind.")
@click.option("--text-field", default="text", show_default=True, help="The field of .jsonl records to read.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def tokenizer_train(files, kind, vocab_size, assignments, text_field, out, force):
    """Train a tokenizer on FILES: text files, .jsonl files, or directories of them."""
    from .artifacts import staged_directory
    from .options import build_options, parse_value

    component = get_host().component("tokenizer", kind)
    values = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise click.UsageError(f"--set {assignment!r}: expected KEY=VALUE")
        values[key.strip()] = parse_value(text.strip())
    if vocab_size is not None:
        values["vocab_size"] = vocab_size
    options = build_options(component.options_class(), values, f"tokenizer {kind}")
    with staged_directory(out, force=force, inputs=files) as stage:
        trained = component.load().train(list(files), options, text_field=text_field)
        trained.save(stage)
    # A small text runs out of pieces (merges, unigram pieces, characters) before the size asked for.
    sentinels = getattr(options, "sentinels", 0)  # T5's come on top of --vocab-size
    trained_size = trained.vocab_size - sentinels
    size = f"{trained.vocab_size} tokens" + (f" ({trained_size} trained, {sentinels} sentinels)" if sentinels else "")
    asked = "asked for" if vocab_size is not None else "of the kind's default --vocab-size"
    short = (f"; {trained_size} is fewer than the {options.vocab_size} {asked}: the trainer found no more pieces in "
             "this text (more text gives more)" if trained_size < options.vocab_size else "")
    click.echo(f"trained a {kind} tokenizer with {size}{short}: {out}", err=True)
    click.echo(out)


@tokenizer.command("encode")
@click.argument("path")
@click.argument("text", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print ids and tokens as JSON.")
def tokenizer_encode(path, text, as_json):
    """Encode TEXT (or stdin) with the tokenizer at PATH."""
    from .tokenizers import load_tokenizer

    loaded = load_tokenizer(path)
    text = sys.stdin.read() if text is None else text
    ids = loaded.encode(text)
    if as_json:
        echo_json({"ids": ids, "tokens": [loaded.id_to_token(i) for i in ids]})
    else:
        click.echo(" ".join(map(str, ids)))


# -- models ----------------------------------------------------------------------------------------


@cli.command()
@click.argument("source")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a spec value, e.g. decoder.n_layers=4 or tokenizer=tok/.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option("--seed", default=0, show_default=True, help="Seed of the weight initialisation.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Start from these safetensors weights.")
@click.option("--no-tokenizer", is_flag=True,
              help="Compose without a tokenizer on purpose (to show, export or load weights into): no warning.")
def compose(source, assignments, out, force, seed, weights, no_tokenizer):
    """Build a model directory from a preset name or a spec .toml file.

    A vocab_size you do not set is sized to the tokenizer (--set tokenizer=DIR).
    """
    from .model import compose as compose_model

    def say(message: str) -> None:
        click.echo(message, err=True)

    if no_tokenizer and any(a.partition("=")[0].strip().startswith("tokenizer") for a in assignments):
        raise click.UsageError("--no-tokenizer composes without a tokenizer, and --set names one; leave one out")
    built = compose_model(source, list(assignments), out, force=force, seed=seed, weights=weights, say=say)
    if "vocab_size" not in (built["spec"].get("tokenizer") or {}) and not no_tokenizer:
        say(f"warning: {out} has no tokenizer, so it cannot be trained, fine-tuned or generated from; compose it "
            "with --set tokenizer=DIR (lmkit tokenizer train makes one), or pass --no-tokenizer if that is meant")
    parts = ", ".join(f"{k}={v['type']}" for k, v in built["components"].items())
    click.echo(f"composed {parts}: {out}", err=True)
    click.echo(out)


@cli.command()
@click.argument("directory", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(directory, as_json):
    """The resolved spec of a model directory and its parameter count per part."""
    from .artifacts import find_weights, parameter_counts, read_config, read_safetensors_header

    config = read_config(directory)
    counts = parameter_counts(read_safetensors_header(find_weights(directory)))
    summary = {"directory": directory, "lmkit_version": config.get("lmkit_version"),
               "spec": config["spec"], "components": config.get("components", {}),
               "plugins": config.get("plugins", {}), "parameters": {**counts, "total": sum(counts.values())}}
    # Parts that share parameters across layers (ALBERT): what the same part would have unshared.
    unshared = {part: n for part, n in config.get("parameters_without_sharing", {}).items() if part in counts}
    if unshared:
        summary["parameters_without_sharing"] = unshared
        summary["parameters_saved_by_sharing"] = {part: n - counts[part] for part, n in unshared.items()}
    if as_json:
        echo_json(summary)
        return
    click.echo(f"{directory}  (lmkit {summary['lmkit_version']})")
    spec = config["spec"]
    for key, value in spec.items():
        if isinstance(value, list):
            for item in value:
                click.echo(f"  {key}: {_inline(item)}")
        elif isinstance(value, dict):
            click.echo(f"  {key}: {_inline(value)}")
        else:
            click.echo(f"  {key}: {value}")
    click.echo("parameters:")
    for part, count in summary["parameters"].items():
        click.echo(f"  {part:<24} {count:>14,}")
    for part, saved in summary.get("parameters_saved_by_sharing", {}).items():
        click.echo(f"cross-layer sharing saves {saved:,} parameters of the {part} "
                   f"({unshared[part]:,} without sharing, {counts[part] / unshared[part]:.1%} of them kept)")


def _inline(table: dict) -> str:
    return " ".join(f"{k}={json.dumps(v)}" if not isinstance(v, str) else f"{k}={v}" for k, v in table.items())


# -- commands that live in their own modules -------------------------------------------------------
# Each module imports only click at the top; torch and friends are imported inside the command.
from .commands.bench import bench_command  # noqa: E402
from .commands.demo import demo_command  # noqa: E402
from .commands.embed import embed_command  # noqa: E402
from .commands.evaluate import eval_command  # noqa: E402
from .commands.export import export_command  # noqa: E402
from .commands.export_hf import export_hf_command  # noqa: E402
from .commands.finetune import finetune_command  # noqa: E402
from .commands.generate import generate_command  # noqa: E402
from .commands.import_hf import import_hf_command  # noqa: E402
from .commands.inspect_export import inspect_command  # noqa: E402
from .commands.plot import plot_command  # noqa: E402
from .commands.predict import predict_command  # noqa: E402
from .commands.serve import serve_command  # noqa: E402
from .commands.train import train_command  # noqa: E402
from .commands.translate import translate_command  # noqa: E402

for _command in (demo_command, train_command, finetune_command, eval_command, generate_command, translate_command,
                 predict_command, embed_command, plot_command, import_hf_command, export_command, inspect_command,
                 serve_command, bench_command):
    cli.add_command(_command)
cli.add_command(export_hf_command)


# -- entry point -----------------------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, docker stop, systemd), raised where Ctrl-C's KeyboardInterrupt is, so a command ends the
    same way: the half-written --out removed (lmkit.artifacts), a run's checkpoint kept and its resume command
    named. The default action killed the process and left staging directories behind."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def _chain(error: BaseException | None):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: plugin commands added, errors turned into one line and an exit status."""
    if threading.current_thread() is threading.main_thread():  # only the main thread may set a handler
        signal.signal(signal.SIGTERM, _terminate)
    try:
        get_host().add_commands(cli)
        cli.main(args=argv, prog_name="lmkit", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.Abort as abort:
        # click turns Ctrl-C into Abort; a run with a checkpoint says how to go on (lmkit.training.InterruptedRun)
        hint = getattr(abort.__cause__ or abort.__context__, "hint", None)
        terminated = any(isinstance(error, Terminated) for error in _chain(abort))
        word = "terminated" if terminated else "aborted"
        click.echo(f"{word}; {hint}" if hint else word, err=True)
        sys.exit(128 + signal.SIGTERM if terminated else 130)
    except click.UsageError as error:  # exit 2, in one line like every other error
        if debug():
            raise
        command = error.ctx.command_path if error.ctx is not None else "lmkit"
        click.echo(f"error: {error.format_message()} (see: {command} --help)", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        if debug():
            raise
        click.echo(f"error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except LmkitError as error:
        if debug():
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        click.echo("terminated" if terminated else "interrupted", err=True)
        sys.exit(128 + signal.SIGTERM if terminated else 130)
    except Exception as error:  # noqa: BLE001
        if debug():
            raise
        if isinstance(error, ModuleNotFoundError) and (error.name or "").partition(".")[0] == "torch":
            # A command that needs torch imported it without saying so: the install hint every command gives.
            from .errors import require_torch

            try:
                require_torch(_command_name(argv))
            except LmkitError as missing:
                click.echo(f"error: {missing}", err=True)
                sys.exit(1)
        click.echo(f"internal error: {type(error).__name__}: {error} (set LMKIT_DEBUG=1 for the traceback; "
                   "please report it)", err=True)
        sys.exit(1)


def _command_name(argv: list[str] | None) -> str:
    """`lmkit train`, `lmkit tokenizer train`: the command words at the start of the arguments."""
    words, group = ["lmkit"], cli
    for word in sys.argv[1:] if argv is None else argv:
        command = group.commands.get(word) if isinstance(group, click.Group) else None
        if command is None:
            break
        words.append(word)
        group = command
    return " ".join(words)
