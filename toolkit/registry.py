"""Finding, loading and isolating plugins, and the registry of what they add.

Every plugin, built-in or not, is an entry point in the `lmkit` group. Each one is imported and
asked to register on its own: a plugin that raises is recorded with its error and everything else
keeps working. Two plugins that claim the same name make that name unusable, with an error that
names both, instead of one silently winning.

Environment:
    LMKIT_LOAD_PLUGINS   comma-separated entry-point or distribution names to load (empty: none)
    LMKIT_STRICT_PLUGINS =1 re-raises a plugin's error instead of recording it
    LMKIT_TRACE_PLUGINS  =1 prints every hook call to stderr
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, did_you_mean, one_of

GROUP = "lmkit"

# hook name -> the component kind it registers
COMPONENT_HOOKS = {
    "register_tokenizers": "tokenizer",
    "register_encoders": "encoder",
    "register_decoders": "decoder",
    "register_objectives": "objective",
    "register_decoding_strategies": "decoding",
    "register_exporters": "exporter",
    "register_export_runtimes": "export-runtime",
    "register_importers": "importer",
    "register_hf_exporters": "hf-exporter",
    "register_optimizers": "optimizer",
    "register_schedules": "schedule",
    "register_task_recipes": "task-recipe",
    "register_generators": "generator",
    "register_training_recipes": "training-recipe",
}
KINDS = tuple(COMPONENT_HOOKS.values())


def import_object(target: str) -> Any:
    """Import "package.module:Attribute" (the attribute may be dotted)."""
    module_name, _, attribute = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj


@dataclass
class Component:
    """One registered part: what it is called, where it lives, which options it takes."""

    kind: str
    name: str
    target: Any  # "module:Attr" or the object itself
    options: Any = None  # a dataclass type, or "module:Class"
    summary: str = ""
    plugin: str = ""

    def load(self) -> Any:
        """The component's class or factory (imports its module, and so torch, here)."""
        return import_object(self.target) if isinstance(self.target, str) else self.target

    def options_class(self) -> type | None:
        return import_object(self.options) if isinstance(self.options, str) else self.options


@dataclass
class Preset:
    name: str
    spec: dict
    summary: str = ""
    plugin: str = ""


@dataclass
class PluginInfo:
    """What `lmkit plugins` shows about one entry point."""

    name: str
    module: str
    distribution: str = ""
    version: str = ""
    status: str = "ok"  # ok | error | skipped
    error: str = ""
    hooks: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)  # "kind:name"

    def as_dict(self) -> dict:
        return {
            "name": self.name, "module": self.module, "distribution": self.distribution,
            "version": self.version, "status": self.status, "error": self.error,
            "hooks": self.hooks, "components": self.components,
        }


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"


class PluginHost:
    """Loads the entry points of the `lmkit` group and keeps what they registered."""

    def __init__(self, entry_points_: list[EntryPoint] | None = None, only: str | None = None):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        if os.environ.get("LMKIT_TRACE_PLUGINS") == "1":
            self.pm.trace.root.setwriter(lambda text: sys.stderr.write(text))
            self.pm.enable_tracing()
        self.strict = os.environ.get("LMKIT_STRICT_PLUGINS") == "1"
        self.plugins: dict[str, PluginInfo] = {}
        self.components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self.presets: dict[str, Preset] = {}
        # (kind, name) -> every plugin that claimed it, when more than one did
        self.conflicts: dict[tuple[str, str], list[str]] = {}
        if only is None:
            only = os.environ.get("LMKIT_LOAD_PLUGINS")
        allowed = None if only is None else {n.strip() for n in only.split(",") if n.strip()}
        if entry_points_ is None:
            entry_points_ = list(entry_points(group=GROUP))
        for ep in entry_points_:
            self._load(ep, allowed)

    # -- loading -------------------------------------------------------------------------------

    def _load(self, ep: EntryPoint, allowed: set[str] | None) -> None:
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name, module=ep.value,
            distribution=dist.metadata["Name"] if dist else "",
            version=dist.version if dist else "",
        )
        if info.name in self.plugins:
            other = self.plugins[info.name]
            info.status, info.error = "error", (
                f"entry point '{ep.name}' is declared by both {other.distribution} {other.version} "
                f"and {info.distribution} {info.version}; uninstall one of them"
            )
            self.plugins[f"{ep.name} ({info.distribution})"] = info
            return
        self.plugins[info.name] = info
        if allowed is not None and ep.name not in allowed and info.distribution not in allowed:
            info.status = "skipped"
            info.error = "not listed in LMKIT_LOAD_PLUGINS"
            return
        try:
            module = ep.load()
            self.pm.register(module, name=ep.name)
            self._check_hooks(module)
            info.hooks = sorted(impl.name for impl in self.pm.get_hookcallers(module) or [])
            self._collect(module, info)
        except Exception as error:  # noqa: BLE001 - one broken plugin must not take lmkit down
            if self.strict:
                raise
            self._forget(info)
            info.status, info.error = "error", _one_line(error)
            if os.environ.get("LMKIT_DEBUG") == "1":
                traceback.print_exc()

    def _check_hooks(self, module) -> None:
        """Reject `register_decoder` and other near-misses that pluggy would silently ignore."""
        known = [name for name in dir(hookspecs) if name.startswith("register_")]
        for caller in self.pm.get_hookcallers(module) or []:
            if caller.spec is None:
                raise PluginError(f"unknown hook '{caller.name}'{did_you_mean(caller.name, known)}")

    def _collect(self, module, info: PluginInfo) -> None:
        for hook_name, kind in COMPONENT_HOOKS.items():
            for impl in self._impls(hook_name, module):
                impl.function(**self._arguments(impl, self._component_registrar(kind, info)))
        for impl in self._impls("register_presets", module):
            impl.function(**self._arguments(impl, self._preset_registrar(info)))

    def _impls(self, hook_name: str, module):
        return [impl for impl in getattr(self.pm.hook, hook_name).get_hookimpls()
                if impl.plugin is module]

    @staticmethod
    def _arguments(impl, register) -> dict:
        return {"register": register} if "register" in impl.argnames else {}

    def _component_registrar(self, kind: str, info: PluginInfo):
        def register(name: str, target, *, options=None, summary: str = "") -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"{kind} names must be non-empty strings, got {name!r}")
            existing = self.components[kind].get(name)
            if existing is not None:
                claimants = self.conflicts.setdefault((kind, name), [existing.plugin])
                claimants.append(info.name)
                info.components.append(f"{kind}:{name}")
                return
            self.components[kind][name] = Component(kind, name, target, options, summary, info.name)
            info.components.append(f"{kind}:{name}")

        return register

    def _preset_registrar(self, info: PluginInfo):
        def register(name: str, spec: dict, *, summary: str = "") -> None:
            if not isinstance(spec, dict):
                raise PluginError(f"preset '{name}' must be a dict spec, got {type(spec).__name__}")
            if name in self.presets:
                claimants = self.conflicts.setdefault(("preset", name), [self.presets[name].plugin])
                claimants.append(info.name)
            else:
                self.presets[name] = Preset(name, spec, summary, info.name)
            info.components.append(f"preset:{name}")

        return register

    def _forget(self, info: PluginInfo) -> None:
        """Drop everything a plugin registered before it failed."""
        for kind in KINDS:
            for name in [n for n, c in self.components[kind].items() if c.plugin == info.name]:
                del self.components[kind][name]
        for name in [n for n, p in self.presets.items() if p.plugin == info.name]:
            del self.presets[name]
        for claimants in self.conflicts.values():
            while info.name in claimants:
                claimants.remove(info.name)
        self.conflicts = {key: c for key, c in self.conflicts.items() if len(c) > 1}
        info.components = []
        plugin = self.pm.get_plugin(info.name)
        if plugin is not None:
            self.pm.unregister(plugin)

    # -- lookups -------------------------------------------------------------------------------

    def component(self, kind: str, name: str) -> Component:
        """The component `name` of `kind`, or a one-line error with what is available."""
        self._refuse_conflict(kind, name)
        registered = self.components.get(kind, {})
        if name not in registered:
            raise PluginError(
                f"unknown {kind} '{name}'{did_you_mean(name, registered)}; "
                f"available: {one_of(registered)}{self._hint()}"
            )
        return registered[name]

    def instantiate(self, kind: str, name: str, values: dict | None = None, where: str | None = None):
        """The component `name` of `kind` built from its options (`values`, checked against its dataclass).

        For parts the core builds as they are (optimizers, schedules, task recipes, strategies); model
        parts go through lmkit.model.build_stack and build_objective. `where` is how errors name the options.
        """
        from .options import build_options

        component = self.component(kind, name)
        options_class = component.options_class()
        where = where or f"{kind} {name}"
        if options_class is None:
            if values:
                raise PluginError(f"{where} takes no options, got {', '.join(values)}")
            return component.load()()
        return component.load()(build_options(options_class, dict(values or {}), where))

    def preset(self, name: str) -> Preset:
        self._refuse_conflict("preset", name)
        if name not in self.presets:
            raise PluginError(
                f"unknown preset '{name}'{did_you_mean(name, self.presets)}; "
                f"available: {one_of(self.presets)} (lmkit presets lists them){self._hint()}"
            )
        return self.presets[name]

    def _refuse_conflict(self, kind: str, name: str) -> None:
        claimants = self.conflicts.get((kind, name))
        if claimants:
            who = " and ".join(self.describe(plugin) for plugin in claimants)
            raise PluginError(
                f"{kind} '{name}' is registered by both {who}; uninstall one, or pick the "
                "plugins to load with LMKIT_LOAD_PLUGINS"
            )

    def describe(self, plugin_name: str) -> str:
        info = self.plugins.get(plugin_name)
        if info is None:
            return plugin_name
        return f"plugin '{info.name}' ({info.distribution} {info.version})".replace(" )", ")")

    def _hint(self) -> str:
        broken = [p.name for p in self.plugins.values() if p.status == "error"]
        return f"; plugins that failed to load: {', '.join(broken)} (see lmkit plugins)" if broken else ""

    def provenance(self, plugin_name: str) -> dict:
        """What config.json records about the plugin that built a component."""
        info = self.plugins[plugin_name]
        return {"plugin": info.name, "module": info.module,
                "distribution": info.distribution, "version": info.version}

    def add_commands(self, cli) -> None:
        """Let every loaded plugin add its subcommands; a plugin that raises is recorded."""
        for impl in self.pm.hook.register_commands.get_hookimpls():
            info = self.plugins.get(impl.plugin_name)
            added: list[str] = []
            add_command = cli.add_command

            def recording(command, name=None, added=added, add_command=add_command):  # what @cli.command() and
                added.append(name or command.name)  # cli.add_command both call
                add_command(command, name)

            cli.add_command = recording
            try:
                impl.function(cli=cli)
                if info is not None:  # listed with the rest of what it registered (lmkit plugins)
                    info.components.extend(f"command:{name}" for name in added)
            except Exception as error:  # noqa: BLE001
                if self.strict:
                    raise
                if info is not None:
                    info.status, info.error = "error", f"register_commands: {_one_line(error)}"
            finally:
                del cli.add_command  # the group's own method again


def check_components(record: dict, directory: str, host: PluginHost, kinds: set[str] | None = None) -> None:
    """PluginError naming the plugin to install (or why it did not load) for the first component `record` (a model
    directory's config.json, an export's manifest "source") names that is not registered; kinds: only these
    (an export decodes with its strategy, and runs its graphs without the model's classes)."""
    for key, origin in record.get("components", {}).items():
        kind = "objective" if key.startswith("objectives.") else key
        if kinds is not None and kind not in kinds or origin.get("type") in host.components.get(kind, {}):
            continue
        plugin = record.get("plugins", {}).get(origin.get("plugin"), {})
        loaded = host.plugins.get(origin.get("plugin", ""))
        if loaded is not None and loaded.status == "error":
            raise PluginError(f"{directory} needs {kind} '{origin.get('type')}' from plugin '{loaded.name}', "
                              f"which failed to load: {loaded.error}")
        if loaded is not None and loaded.status == "skipped":
            raise PluginError(f"{directory} needs {kind} '{origin.get('type')}' from plugin '{loaded.name}', "
                              "which LMKIT_LOAD_PLUGINS leaves out; add it there")
        distribution = plugin.get("distribution") or origin.get("plugin")
        raise PluginError(
            f"{directory} needs {kind} '{origin.get('type')}' from plugin '{origin.get('plugin')}' "
            f"({distribution} {plugin.get('version', '')}".rstrip() + f"), which is not installed; "
            f"install it with: pip install {distribution}"
        )


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The plugin host of this process, loaded on first use."""
    global _host
    if _host is None:
        _host = PluginHost()
    return _host


def reset_host() -> None:
    """Forget the loaded plugins (tests, and after installing a plugin in-process)."""
    global _host
    _host = None
