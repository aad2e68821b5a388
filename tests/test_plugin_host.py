"""The plugin host: isolation of broken plugins, conflicts, filtering, hook-name checks."""
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest

from lmkit.errors import PluginError
from lmkit.registry import PluginHost

GOOD = '''
from lmkit.hookspecs import hookimpl

@hookimpl
def register_decoders(register):
    register("toy", "{name}.model:Toy", summary="a toy decoder")

@hookimpl
def register_presets(register):
    register("toy-small", {{"decoder": {{"type": "toy"}}}})
'''


@pytest.fixture
def make_plugin(tmp_path, monkeypatch):
    """Write a plugin module and return an entry point for it (no pip needed in-process)."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(name: str, source: str) -> EntryPoint:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return EntryPoint(name=name, value=name, group="lmkit")

    return make


def test_a_good_plugin_registers_components_and_presets(make_plugin):
    host = PluginHost([make_plugin("goodplug", GOOD.format(name="goodplug"))])
    assert host.plugins["goodplug"].status == "ok"
    assert host.component("decoder", "toy").plugin == "goodplug"
    assert host.preset("toy-small").spec == {"decoder": {"type": "toy"}}
    assert host.plugins["goodplug"].components == ["decoder:toy", "preset:toy-small"]


def test_a_plugin_that_fails_at_import_is_recorded_and_the_rest_loads(make_plugin):
    broken = make_plugin("brokenplug", "raise ImportError('needs libfoo >= 2')")
    good = make_plugin("goodplug2", GOOD.format(name="goodplug2"))
    host = PluginHost([broken, good])
    assert host.plugins["brokenplug"].status == "error"
    assert host.plugins["brokenplug"].error == "ImportError: needs libfoo >= 2"
    assert host.component("decoder", "toy").plugin == "goodplug2"


def test_a_plugin_that_fails_while_registering_leaves_nothing_behind(make_plugin):
    source = '''
    from lmkit.hookspecs import hookimpl

    @hookimpl
    def register_decoders(register):
        register("half", "x:Y")
        raise RuntimeError("registration bug")
    '''
    host = PluginHost([make_plugin("halfplug", source)])
    assert host.plugins["halfplug"].status == "error"
    assert "registration bug" in host.plugins["halfplug"].error
    assert "half" not in host.components["decoder"]
    with pytest.raises(PluginError, match="plugins that failed to load: halfplug"):
        host.component("decoder", "half")


def test_two_plugins_claiming_one_name_is_an_error_naming_both(make_plugin):
    first = make_plugin("firstplug", GOOD.format(name="firstplug"))
    second = make_plugin("secondplug", GOOD.format(name="secondplug"))
    host = PluginHost([first, second])
    with pytest.raises(PluginError) as error:
        host.component("decoder", "toy")
    message = str(error.value)
    assert "firstplug" in message and "secondplug" in message and "\n" not in message
    with pytest.raises(PluginError, match="firstplug.*secondplug"):
        host.preset("toy-small")


def test_a_misspelt_hook_is_refused_with_a_suggestion(make_plugin):
    source = '''
    from lmkit.hookspecs import hookimpl

    @hookimpl
    def register_decoder(register):
        register("toy", "x:Y")
    '''
    host = PluginHost([make_plugin("typoplug", source)])
    assert host.plugins["typoplug"].status == "error"
    assert "did you mean 'register_decoders'" in host.plugins["typoplug"].error


def test_load_plugins_variable_restricts_what_is_imported(make_plugin, monkeypatch):
    kept = make_plugin("keptplug", GOOD.format(name="keptplug"))
    skipped = make_plugin("skippedplug", "raise SystemError('must never be imported')")
    monkeypatch.setenv("LMKIT_LOAD_PLUGINS", "keptplug")
    host = PluginHost([kept, skipped])
    assert host.plugins["skippedplug"].status == "skipped"
    assert host.plugins["keptplug"].status == "ok"
    assert PluginHost([kept, skipped], only="").plugins["keptplug"].status == "skipped"


def test_strict_mode_reraises(make_plugin, monkeypatch):
    monkeypatch.setenv("LMKIT_STRICT_PLUGINS", "1")
    with pytest.raises(ImportError, match="strict"):
        PluginHost([make_plugin("strictplug", "raise ImportError('strict')")])


def test_unknown_component_suggests_the_close_name(make_plugin):
    host = PluginHost([make_plugin("goodplug3", GOOD.format(name="goodplug3"))])
    with pytest.raises(PluginError, match=r"unknown decoder 'tyo' \(did you mean 'toy'\?\); available: toy"):
        host.component("decoder", "tyo")


def test_registering_the_built_ins_does_not_import_torch():
    code = ("import sys; from lmkit.registry import PluginHost; host = PluginHost(); "
            "assert host.components['decoder'] and host.components['tokenizer'], host.plugins; "
            "print(sorted(m for m in ('torch', 'tokenizers', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_hook_is_documented():
    """Each extension point appears in the plugin-authoring guide as name(args)."""
    import inspect
    import pathlib

    from lmkit import hookspecs

    guide = (pathlib.Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("register_"):
            signature = f"{name}({', '.join(inspect.signature(function).parameters)})"
            assert signature in guide, f"docs/plugins.md does not document {signature}"
