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
