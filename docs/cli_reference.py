"""Write docs/cli.md from the commands' own --help texts (tests/test_docs.py checks it is current).

    python docs/cli_reference.py > docs/cli.md
"""
import click

from lmkit.cli import cli
from lmkit.registry import get_host


def walk(command: click.Command, path: list[str]):
    yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            yield from walk(command.commands[name], [*path, name])


def own(command: click.Command) -> bool:
    """lmkit's own commands: a plugin's (added to the group when plugins load) documents itself."""
    return command.callback is None or command.callback.__module__.startswith("lmkit.")


def reference() -> str:
    parts = ["# CLI reference", "", "Generated from `--help` by `python docs/cli_reference.py > docs/cli.md`.", ""]
    get_host().add_commands(cli)  # lmkit's own plugins add commands too (lmkit neurons)
    foreign = {name: command for name, command in cli.commands.items() if not own(command)}
    for name in foreign:
        del cli.commands[name]
    try:
        for path, command in walk(cli, ["lmkit"]):
            with click.Context(command, info_name=" ".join(path), terminal_width=100, max_content_width=100,
                               help_option_names=["-h", "--help"]) as ctx:
                text = command.get_help(ctx)
            parts += [f"## {' '.join(path)}", "", "```", text, "```", ""]
    finally:
        cli.commands.update(foreign)
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference(), end="")
