"""The distribution is `lmkit-toolkit`: `lmkit` on the package index is an unrelated package.

Every install command lmkit shows a user (the README, docs/, and the hints in its error messages)
must install this project: a clone (`.`), a wheel built from one, or the extra of the installed
`lmkit-toolkit`; never the bare name `lmkit`.
"""
import glob
import os
import re
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTRIBUTION = "lmkit-toolkit"
# What one `pip install` asks for: each quoted or bare argument after it on the line.
INSTALL = re.compile(r"pip install ((?:[^\n`\"]|\\\n)+)")


def install_targets(text: str) -> list[str]:
    targets = []
    for match in INSTALL.finditer(text):
        line = match.group(1).split("#")[0].split("&&")[0]
        words = [word.strip("'\"),;") for word in line.split()]
        skip = False
        for word in words:
            if skip:
                skip = False
                continue
            if word in ("-c", "--constraint", "-r", "--target", "--find-links", "-f", "--wheel-dir"):
                skip = True
                continue
            if word.startswith("-") and word not in ("-e",) or not word or word == "-e":
                continue
            targets.append(word)
    return targets


def shown_to_users() -> dict[str, str]:
    paths = [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)]
    for folder in ("toolkit", "plugins", "exports"):
        paths += glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)
    texts = {}
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            texts[os.path.relpath(path, ROOT)] = handle.read()
    return texts


def test_the_installed_distribution_is_lmkit_toolkit():
    assert metadata.distribution(DISTRIBUTION).metadata["Name"] == DISTRIBUTION
    assert "lmkit" in (metadata.distribution(DISTRIBUTION).read_text("top_level.txt") or "lmkit")


def test_a_bare_lmkit_install_is_caught():
    assert install_targets("pip install 'lmkit[serve]'   # edge") == ["lmkit[serve]"]
    assert install_targets("pip install -c constraints.txt lmkit") == ["lmkit"]


def test_no_install_command_names_the_other_lmkit():
    found = []
    for path, text in shown_to_users().items():
        for target in install_targets(text):
            name = re.split(r"[\[<>=!~ ]", target)[0]
            if name.lower() == "lmkit":
                found.append(f"{path}: pip install {target}")
    assert not found, "these install PyPI's unrelated lmkit: " + "; ".join(found)


def test_the_documented_installs_name_this_project():
    targets = [t for text in shown_to_users().values() for t in install_targets(text) if "lmkit" in t]
    assert targets
    for target in targets:
        assert target.startswith((".", "dist/lmkit_toolkit-", "lmkit-toolkit[", "lmkit-example", "path/to/lmkit-example",
                                  "'lmkit-toolkit")), target
