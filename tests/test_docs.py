"""The documentation stays in step with the code."""
import pathlib
import runpy

DOCS = pathlib.Path(__file__).parents[1] / "docs"


def test_the_cli_reference_is_current():
    reference = runpy.run_path(str(DOCS / "cli_reference.py"))["reference"]()
    assert (DOCS / "cli.md").read_text() == reference, "run: python docs/cli_reference.py > docs/cli.md"


def test_local_links_resolve():
    import re

    for page in [*DOCS.rglob("*.md"), DOCS.parent / "README.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def command_lines():
    """(page, line) of every `lmkit ...` command line in README.md and docs/: in code blocks and inline code."""
    import re

    for page in [DOCS.parent / "README.md", *sorted(DOCS.rglob("*.md"))]:
        if page.name == "cli.md":  # generated from the commands' --help
            continue
        text = page.read_text()
        snippets = []
        for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
            snippets += block.replace("\\\n", " ").splitlines()
        prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
        snippets += re.findall(r"`([^`\n]+)`", prose)
        for snippet in snippets:
            if re.search(r"(^|[\s$(])lmkit\s+-{0,2}[a-z]", snippet):
                yield page.relative_to(DOCS.parent), snippet.strip()


def check_command_line(line: str) -> str | None:
    """What is wrong with one `lmkit ...` line against the CLI, or None."""
    import shlex

    import click

    from lmkit.cli import cli

    try:
        words = shlex.split(line.split(" #")[0])
    except ValueError:
        return f"cannot parse {line!r}"
    words = words[words.index("lmkit") + 1:]
    for stop, word in enumerate(words):
        if word in ("|", "||", "&&", ";", ">", ">>", "2>", "<") or word.startswith((">", "2>", "|")):
            words = words[:stop]
            break
    command, path = cli, ["lmkit"]
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        if words[0] not in command.commands:
            if words[0].isupper() or words[0] in ("...", "<command>"):  # a placeholder for any command
                return None
            return f"{' '.join(path)} has no command '{words[0]}'"
        path.append(words[0])
        command = command.commands[words.pop(0)]
    flags = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    flags |= {"--help", "-h"} | ({"--version", "-V"} if command is cli else set())
    for word in words:
        flag = word.split("=")[0]
        if flag.startswith("--") and len(flag) > 2 or flag.startswith("-") and flag[1:2].isalpha():
            if flag not in flags:
                return f"{' '.join(path)} has no option {flag}"
    return None


def test_every_command_line_in_the_docs_names_real_commands_and_options():
    from lmkit.cli import cli
    from lmkit.registry import get_host, reset_host

    reset_host()
    get_host().add_commands(cli)  # plugin commands too
    try:
        lines = list(command_lines())
        wrong = [f"{page}: {line}  <- {problem}" for page, line in lines
                 if (problem := check_command_line(line)) is not None]
    finally:
        reset_host()
    assert len(lines) > 50  # the docs are full of them: the search finds them
    assert not wrong, "\n".join(wrong)


def test_the_docs_check_catches_a_flag_that_does_not_exist():
    assert check_command_line("lmkit train runs/m --data c/ --beta3 0.98") == "lmkit train has no option --beta3"
    assert check_command_line("lmkit trian runs/m") == "lmkit has no command 'trian'"
    assert check_command_line("torchrun --nproc-per-node 2 -m lmkit train m --data c --steps 9") is None
    assert check_command_line("lmkit tokenizer train a.txt --kind char --out t --vocab-size=9") is None
