"""Every command, run where torch cannot be imported: it works, or it says in one line how to install torch.

The commands are read from the click group (plugin commands included), so a new command is covered
without touching this file; one whose required arguments this file cannot fill makes the test fail
until a sample value is added to SAMPLES.
"""
import json
import os
import shutil
import subprocess
import sys

import click
import pytest

pytest.importorskip("torch")

from conftest import NO_TORCH  # noqa: E402

from lmkit.cli import cli  # noqa: E402
from lmkit.registry import get_host, reset_host  # noqa: E402

# The commands that need no torch; all others must give the install hint.
TORCH_FREE = {"plugins", "components", "presets", "show", "inspect", "plot", "tokenizer encode", "tokenizer train"}
HINT = ("needs", "pip install -c constraints.txt 'lmkit-toolkit[torch")  # then ]' or ,export,serve]' (lmkit export)

# What to pass for a parameter, by its name: (command, name) first, then the name alone.
SAMPLES = {
    ("inspect", "directory"): "{export}",
    ("plot", "model_dir"): "{trained}",
    ("tokenizer train", "kind"): "char",
    ("tokenizer encode", "path"): "{model}",
    "model_dir": "{model}", "directory": "{model}", "pretrained": "{model}", "src": "{model}",
    "path": "{text}", "source": "gpt2-tiny", "files": "{text}", "text": "hello", "texts": "hello",
    "out": "{out}", "options_json": "{text}", "weights_hdf5": "{text}", "vocab_path": "{text}",
    ("neurons", "prompts"): "the cat sat on the", ("neurons", "answer"): "mat",
    ("train-prefix", "data"): "{text}:positive",
    ("bench", "models"): "{model}",
}
# Options a command needs to get past its own argument checks to where it would load torch.
EXTRAS = {"eval": ["--data", "{text}"], "generate": ["--prompt", "hello"], "translate": ["--text", "hello"],
          "embed": ["--text", "hello"]}


def commands():
    """(words, command) of every command the CLI has, subcommands of groups included."""
    reset_host()
    get_host().add_commands(cli)

    def walk(command, path):
        if isinstance(command, click.Group):
            for name in command.list_commands(click.Context(command)):
                yield from walk(command.commands[name], [*path, name])
        else:
            yield path, command

    found = list(walk(cli, []))
    reset_host()
    return found


def invocation(words: list[str], command: click.Command, values: dict) -> list[str]:
    name = " ".join(words)
    args = list(words)
    for param in command.params:
        if not (param.required or isinstance(param, click.Argument)):
            continue
        sample = SAMPLES.get((name, param.name), SAMPLES.get(param.name))
        if sample is None:
            if not param.required:
                continue
            pytest.fail(f"lmkit {name}: add a sample value for its required parameter '{param.name}' to SAMPLES")
        value = sample.format(**values, out=os.path.join(values["root"], f"out-{'-'.join(words)}"))
        args += [value] if isinstance(param, click.Argument) else [param.opts[0], value]
    return args + [extra.format(**values) for extra in EXTRAS.get(name, [])]


CHILD = NO_TORCH + """
import contextlib, io, json
from lmkit.cli import main
from lmkit.registry import reset_host

results = {}
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    reset_host()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
    results[" ".join(args)] = {"code": code, "err": err.getvalue()}
assert sys.modules["torch"] is None, "torch was imported"
print(json.dumps(results))
"""


def test_every_command_works_or_gives_the_install_hint_without_torch(tiny_gpt2, tiny_gpt2_export, tmp_path):
    trained = tmp_path / "trained"
    shutil.copytree(tiny_gpt2, trained)
    (trained / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 - s, "lr": 1e-3}) + "\n"
                                                   for s in (1, 2, 3)))
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat\n" * 20)
    work = tmp_path / "work"
    work.mkdir()
    values = {"model": tiny_gpt2, "export": tiny_gpt2_export, "trained": str(trained), "text": str(text),
              "root": str(work)}
    found = commands()
    assert {"train", "finetune", "demo", "tokenizer train"} <= {" ".join(words) for words, _ in found}
    runs = {" ".join(words): invocation(words, command, values) for words, command in found}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(list(runs.values()))], capture_output=True,
                          text=True, timeout=300, cwd=work, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for name, args in runs.items():
        result = results[" ".join(args)]
        lines = result["err"].strip().splitlines()
        if name in TORCH_FREE:
            assert result["code"] == 0, f"lmkit {name} should work without torch: {result['err']}"
            continue
        assert result["code"] == 1 and len(lines) == 1, f"lmkit {name}: {result['err']}"
        assert lines[0].startswith("error: ") and all(part in lines[0] for part in HINT), f"lmkit {name}: {lines[0]}"
    # A command stopped for want of torch writes nothing: no --out, no default demo directory.
    stopped = {f"out-{name.replace(' ', '-')}" for name in runs if name not in TORCH_FREE} | {"lmkit-demo"}
    assert not stopped & set(os.listdir(work)), os.listdir(work)
