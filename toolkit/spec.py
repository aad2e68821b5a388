"""A model is a composition: a spec names its parts, and this module checks and resolves it.

A spec is a table (a TOML file, or a preset plus `--set key=value` overrides):

    preset = "gpt-mini"                  # optional, in files: start from a preset
    [tokenizer]                          # optional: what to tokenize with
    path = "tok/"                        # a trained tokenizer (dir or file); `type` is read from it
    reverse = true                       # optional: read every text right to left (a backward LM)
    [decoder]                            # and/or [encoder]
    type = "gpt2"                        # a registered decoder; the other keys are its options
    n_layers = 4
    [[objectives]]
    type = "causal-lm"
    weight = 1.0
    [decoding]
    strategy = "greedy"                  # a registered decoding strategy, and its options

Resolving checks every name against the registry and every option against the component's
options dataclass. Nothing here imports torch.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import tomllib

from .errors import AssignmentError, LmkitError, SpecError, did_you_mean, one_of
from .options import build_options, options_to_dict, parse_value
from .registry import Component, PluginHost

TOP_LEVEL = ("preset", "name", "based_on", "tokenizer", "encoder", "decoder", "objectives", "decoding")
SINGLE_PARTS = ("encoder", "decoder")


@dataclass
class Part:
    """One chosen component with its checked options."""

    kind: str
    type: str
    options: Any
    component: Component
    weight: float | None = None  # objectives only

    def to_dict(self) -> dict:
        key = "strategy" if self.kind == "decoding" else "type"
        out = {key: self.type}
        if self.weight is not None:
            out["weight"] = self.weight
        if self.options is not None:
            out.update(options_to_dict(self.options))
        return out


@dataclass
class ModelSpec:
    """A checked composition, ready to build."""

    name: str | None = None
    based_on: str | None = None  # the preset a changed composition started from (its name is then its own)
    tokenizer: dict | None = None  # {"type": ..., "path": ...} until composed; then {"type", "vocab_size"}
    encoder: Part | None = None
    decoder: Part | None = None
    objectives: list[Part] = field(default_factory=list)
    decoding: Part | None = None

    def parts(self) -> list[Part]:
        single = [p for p in (self.encoder, self.decoder, self.decoding) if p is not None]
        return single + self.objectives

    def to_dict(self) -> dict:
        out: dict = {}
        if self.name:
            out["name"] = self.name
        if self.based_on:
            out["based_on"] = self.based_on
        if self.tokenizer:
            out["tokenizer"] = dict(self.tokenizer)
        for key in SINGLE_PARTS:
            part = getattr(self, key)
            if part is not None:
                out[key] = part.to_dict()
        if self.objectives:
            out["objectives"] = [p.to_dict() for p in self.objectives]
        if self.decoding is not None:
            out["decoding"] = self.decoding.to_dict()
        return out


# -- reading ---------------------------------------------------------------------------------------


def read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path} is not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path} is not valid TOML: it is not UTF-8 text") from None
    except OSError as error:
        raise SpecError(f"cannot read spec {path}: {error.strerror}") from None


def load_source(source: str, host: PluginHost) -> dict:
    """The raw spec table for a preset name or a TOML file path."""
    if source in host.presets:
        raw = copy.deepcopy(host.preset(source).spec)
        raw.setdefault("name", source)
        return raw
    if not (source.endswith(".toml") or os.path.isfile(source)):
        raise SpecError(
            f"'{source}' is neither a preset nor a .toml file{did_you_mean(source, host.presets)}; "
            f"presets: {one_of(host.presets)}"
        )
    if not os.path.isfile(source):
        raise SpecError(f"spec file {source} does not exist")
    raw = read_toml(source)
    _paths_from(raw, os.path.dirname(os.path.abspath(source)))
    base = raw.pop("preset", None)
    if base is not None:
        if not isinstance(base, str):
            raise SpecError(f"{source}: preset must be a preset name, got {base!r}")
        raw = merge(copy.deepcopy(host.preset(base).spec), raw)
        raw.setdefault("name", base)
    return raw


def _paths_from(raw: dict, directory: str) -> None:
    """A spec file's tokenizer paths, read from the file's directory as a compose file's are (a trial's
    `cd sub && lmkit compose ../spec.toml` looked for its "tok/" in sub/); absolute paths stay as they are."""
    tokenizer = raw.get("tokenizer")
    if isinstance(tokenizer, str):
        raw["tokenizer"] = os.path.join(directory, tokenizer)
    elif isinstance(tokenizer, dict):
        for key in ("path", "target"):
            if isinstance(tokenizer.get(key), str):
                tokenizer[key] = os.path.join(directory, tokenizer[key])


def merge(base: dict, update: dict) -> dict:
    """`update` laid over `base`; tables merge key by key, everything else is replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def apply_overrides(raw: dict, assignments: list[str]) -> dict:
    """Apply `--set a.b=value` assignments; `tokenizer=DIR` is short for `tokenizer.path=DIR`."""
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AssignmentError(f"--set {assignment!r}: expected key=value, e.g. --set decoder.n_layers=4")
        value = parse_value(text.strip())
        path = key.split(".")
        if path[0] not in TOP_LEVEL or path[0] == "preset":
            allowed = [k for k in TOP_LEVEL if k != "preset"]
            raise SpecError(f"--set {key}: unknown key '{path[0]}'{did_you_mean(path[0], allowed)}; "
                            f"allowed: {', '.join(allowed)}")
        if path == ["tokenizer"]:
            raw["tokenizer"] = {"path": str(text.strip())}
            continue
        if path[0] == "objectives" and len(path) >= 2:
            _set_objective(raw, path[1:], value, key)
            continue
        node = raw
        for step in path[:-1]:
            child = node.setdefault(step, {})
            if not isinstance(child, dict):
                raise SpecError(f"--set {key}: '{step}' is a value, not a table")
            node = child
        node[path[-1]] = value
    return raw


def _set_objective(raw: dict, path: list[str], value, key: str) -> None:
    objectives = raw.setdefault("objectives", [])
    selector = path[0]
    if selector.isdigit():
        index = int(selector)
        if index >= len(objectives):
            raise SpecError(f"--set {key}: there are only {len(objectives)} objectives")
        target = objectives[index]
    else:
        matches = [o for o in objectives if isinstance(o, dict) and o.get("type") == selector]
        if not matches:
            if len(path) == 1 or path[1] != "weight" and len(path) > 2:
                raise SpecError(f"--set {key}: no objective '{selector}' in the spec")
            target = {"type": selector}
            objectives.append(target)
        else:
            target = matches[0]
    if len(path) == 1:
        raise SpecError(f"--set {key}: name an option, e.g. objectives.{selector}.weight=0.5")
    target[path[1]] = value


# -- resolving -------------------------------------------------------------------------------------


def resolve(raw: dict, host: PluginHost) -> ModelSpec:
    """Check a raw spec table against the registry and the components' option schemas."""
    if not isinstance(raw, dict):
        raise SpecError("a spec must be a table")
    for key in raw:
        if key not in TOP_LEVEL:
            raise SpecError(f"unknown spec key '{key}'{did_you_mean(key, TOP_LEVEL)}; "
                            f"allowed: {', '.join(TOP_LEVEL)}")
    spec = ModelSpec(name=raw.get("name"), based_on=raw.get("based_on"))
    for key in ("name", "based_on"):
        if getattr(spec, key) is not None and not isinstance(getattr(spec, key), str):
            raise SpecError(f"{key}: {getattr(spec, key)!r} is not a string")
    spec.tokenizer = _resolve_tokenizer(raw.get("tokenizer"), host)
    for key in SINGLE_PARTS:
        if raw.get(key) is not None:
            setattr(spec, key, _resolve_part(key, key, raw[key], host))
    if spec.encoder is None and spec.decoder is None:
        raise SpecError("a spec needs an encoder or a decoder (or both); e.g. [decoder] type = \"gpt2\"")
    objectives = raw.get("objectives", [])
    if not isinstance(objectives, list):
        raise SpecError("objectives must be a list of tables, e.g. [[objectives]] type = \"causal-lm\"")
    spec.objectives = [_resolve_part("objective", f"objectives[{i}]", o, host, weighted=True)
                       for i, o in enumerate(objectives)]
    seen = [p.type for p in spec.objectives]
    duplicates = {t for t in seen if seen.count(t) > 1}
    if duplicates:
        raise SpecError(f"objectives: '{sorted(duplicates)[0]}' is listed twice; list each objective once")
    if raw.get("decoding") is not None:
        spec.decoding = _resolve_part("decoding", "decoding", raw["decoding"], host, type_key="strategy")
    return spec


def _resolve_tokenizer(raw, host: PluginHost) -> dict | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, dict):
        raise SpecError(f"tokenizer: expected a table or a path, got {raw!r}")
    allowed = ("type", "path", "vocab_size", "target", "reverse")
    for key in raw:
        if key not in allowed:
            raise SpecError(f"tokenizer: unknown key '{key}'{did_you_mean(key, allowed)}; "
                            f"allowed: {', '.join(allowed)}")
    if "type" in raw:
        host.component("tokenizer", raw["type"])
    if "reverse" in raw and not isinstance(raw["reverse"], bool):
        raise SpecError(f"tokenizer.reverse: {raw['reverse']!r} is not true or false (true: every text is read "
                        "right to left, for a backward language model)")
    if "path" in raw and not isinstance(raw["path"], str):
        raise SpecError(f"tokenizer.path: {raw['path']!r} is not a path")
    if "target" in raw and not isinstance(raw["target"], (str, dict)):
        raise SpecError(f"tokenizer.target: {raw['target']!r} is not a path (the target side's tokenizer, for "
                        "encoder-decoder models)")
    return dict(raw)


def _resolve_part(kind: str, where: str, raw, host: PluginHost, *, weighted: bool = False,
                  type_key: str = "type") -> Part:
    if isinstance(raw, str):
        raw = {type_key: raw}
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a table with '{type_key}', got {raw!r}")
    values = dict(raw)
    name = values.pop(type_key, None)
    if name is None:
        registered = host.components[kind]
        raise SpecError(f"{where}: '{type_key}' is missing; one of: {one_of(registered)}")
    try:
        component = host.component(kind, name)
    except LmkitError as error:
        raise SpecError(f"{where}.{type_key}: {error}") from None
    weight = None
    if weighted:
        weight = values.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise SpecError(f"{where}.weight: {weight!r} is not a non-negative number")
        weight = float(weight)
    options_class = component.options_class()
    if options_class is None:
        if values:
            raise SpecError(f"{where}: {kind} '{name}' takes no options, got '{next(iter(values))}'")
        options = None
    else:
        options = build_options(options_class, values, where)
    return Part(kind, name, options, component, weight)
