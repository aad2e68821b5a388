"""The README's first install (`.[torch]`) brings everything `lmkit export` needs; `[serve]` stays small."""
import re
from importlib.metadata import requires
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def extra_requirements(extra: str) -> set[str]:
    """The distribution names lmkit-toolkit's `extra` adds, as the installed metadata says."""
    names = set()
    for requirement in requires("lmkit-toolkit") or []:
        if re.search(rf"extra\s*==\s*[\"']{re.escape(extra)}[\"']", requirement):
            names.add(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower())
    return names


def test_the_first_install_covers_export():
    from lmkit.exports.export import EXPORT_NEEDS

    first = re.search(r"pip install [^\n]*-e '\.\[([\w,-]+)\]' && \.venv/bin/lmkit demo", README.read_text())
    assert first, "README's first install line changed shape"
    extras = first.group(1).split(",")
    brought = set().union(*(extra_requirements(extra) for extra in extras))
    assert set(EXPORT_NEEDS) <= brought, set(EXPORT_NEEDS) - brought


def test_the_serving_install_has_no_torch_and_no_onnx():
    # onnxruntime runs the export; starlette and uvicorn (pure Python) are lmkit serve's HTTP server.
    assert extra_requirements("serve") == {"onnxruntime", "starlette", "uvicorn"}
    assert extra_requirements("serve-gpu") == {"onnxruntime-gpu", "starlette", "uvicorn"}
