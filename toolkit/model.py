"""How a checked spec becomes a torch module, and how a model directory becomes one again."""
from __future__ import annotations

import os

from . import __version__
from .artifacts import (
    CONFIG,
    WEIGHTS,
    atomic_write,
    atomic_write_json,
    find_weights,
    read_config,
    read_safetensors_header,
)
from .contract import EncoderOutput, model_kind
from .errors import ArtifactError, LmkitError, PluginError, SpecError, require_torch
from .registry import PluginHost, check_components, get_host
from .spec import ModelSpec, Part, resolve

torch = require_torch("building a model")
from torch import nn  # noqa: E402


def build_stack(part: Part | None) -> nn.Module | None:
    """An encoder or decoder module from its options (lmkit.contract.Encoder, CausalDecoder, Seq2SeqDecoder)."""
    if part is None:
        return None
    factory = part.component.load()
    return factory(part.options) if part.options is not None else factory()


def build_objective(part: Part, model: nn.Module) -> nn.Module:
    """An objective built for `model`, whose stacks are in place (lmkit.contract.Objective.for_model):
    BERT's masked-LM head sized to and tied with the encoder."""
    return part.component.load().for_model(part.options, model)


class ComposedModel(nn.Module):
    """An encoder and/or decoder with the objectives that train them, as one spec describes.

    State-dict names start with the part they belong to (`decoder.h.0.attn.c_attn.weight`,
    `objectives.masked-lm.dense.weight`), which is what `lmkit show` counts per part.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.kind = model_kind(spec.encoder is not None, spec.decoder is not None)
        self.encoder = build_stack(spec.encoder)
        self.decoder = build_stack(spec.decoder)
        # The decoder of an encoder-decoder says whether the encoder's states fit it, as a SpecError, then takes
        # what it shares with the encoder (T5's one embedding).
        if self.kind == "encoder-decoder":
            self.decoder.check_encoder(self.encoder)
            self.decoder.tie_to_encoder(self.encoder)
        self.objectives = nn.ModuleDict({part.type: build_objective(part, self) for part in spec.objectives})
        # Where the weights came from (config.json's PROVENANCE keys): every save writes it again, so a model
        # fine-tuned, trained further or copied still names its base model (an export's card reads it).
        self.provenance: dict = {}

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted sum of the objectives' losses, and each one's value for logging."""
        if not self.spec.objectives:
            raise SpecError("the spec has no objectives to train with; add e.g. [[objectives]] type = \"causal-lm\"")
        total, parts = 0.0, {}
        for part in self.spec.objectives:
            objective = self.objectives[part.type]
            if "unlabeled" in batch and not getattr(objective, "reads_unlabeled", False):
                # A batch of unlabelled text (CVT's) trains only the objectives that read it.
                parts[part.type] = next(iter(batch.values())).new_zeros((), dtype=torch.float32)
                continue
            value = objective(self, batch)
            parts[part.type] = value.detach()
            total = total + part.weight * value
        return total, parts

    @property
    def feature_stack(self) -> nn.Module:
        """The stack that embeds and that task heads read: the encoder when there is one (BERT, CoVe, an
        NMT model's encoder), else the decoder (GPT)."""
        return self.encoder if self.encoder is not None else self.decoder

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **options) -> EncoderOutput:
        """The feature stack's features (lmkit.contract.Stack.features): token states (B, T, D) and, where the
        family has one, a pooled vector (B, D). `options` go to the stack (CoVe's `word_vectors`)."""
        return self.feature_stack.features(input_ids, attention_mask, **options)


# config.json keys that say where a model's weights came from, not how it is built: kept by every rewrite.
# imported_from: {"format", "model_type", "name", "architectures"} of the checkpoint lmkit import-hf read.
PROVENANCE = ("imported_from",)


def provenance(config: dict) -> dict:
    """The PROVENANCE entries of a config.json, to carry into the config of a model made from it."""
    return {key: config[key] for key in PROVENANCE if key in config}


def build_model(spec: ModelSpec, seed: int | None = 0) -> ComposedModel:
    """A freshly initialised model; the same seed gives the same weights."""
    if seed is not None:
        torch.manual_seed(seed)
    try:
        return ComposedModel(spec)
    except ImportError as error:
        raise PluginError(f"a component of this spec failed to import: {error}") from None


# -- saving ----------------------------------------------------------------------------------------


def describe_build(spec: ModelSpec, host: PluginHost, tokenizer=None, target_tokenizer=None) -> dict:
    """config.json: the resolved spec and where every part came from."""
    components, plugins = {}, {}
    for key, part in _named_parts(spec):
        origin = host.provenance(part.component.plugin)
        components[key] = {"type": part.type, "plugin": origin["plugin"]}
        plugins[origin["plugin"]] = {k: v for k, v in origin.items() if k != "plugin"}
    resolved = spec.to_dict()
    if tokenizer is not None:
        resolved["tokenizer"] = {"type": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                                 **({"reverse": True} if tokenizer.reverse else {})}
        if target_tokenizer is not None:
            resolved["tokenizer"]["target"] = {"type": target_tokenizer.kind, "vocab_size": target_tokenizer.vocab_size}
        component = host.components["tokenizer"].get(tokenizer.kind)
        if component is not None:
            origin = host.provenance(component.plugin)
            components["tokenizer"] = {"type": tokenizer.kind, "plugin": origin["plugin"]}
            plugins[origin["plugin"]] = {k: v for k, v in origin.items() if k != "plugin"}
    else:
        resolved.pop("tokenizer", None)
    return {"lmkit_version": __version__, "spec": resolved, "components": components, "plugins": plugins}


def _named_parts(spec: ModelSpec):
    for key, part in (("encoder", spec.encoder), ("decoder", spec.decoder), ("decoding", spec.decoding)):
        if part is not None:
            yield key, part
    for part in spec.objectives:
        yield f"objectives.{part.type}", part


def save_weights(model: nn.Module | dict[str, torch.Tensor], path: str, metadata: dict | None = None) -> None:
    """Write a model's weights (or a state dict already gathered, as a sharded run's) as safetensors."""
    from safetensors.torch import save

    tensors = model if isinstance(model, dict) else model.state_dict()
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    payload = save(state, metadata={"format": "pt", **(metadata or {})})
    with atomic_write(path, "wb") as out:
        out.write(payload)


TARGET_TOKENIZER = "target_tokenizer"  # the folder of an encoder-decoder model's target-side tokenizer


def save_model(directory: str, model: ComposedModel, host: PluginHost, tokenizer=None,
               target_tokenizer=None) -> None:
    """Write a model directory (into a directory that is staged by the caller)."""
    os.makedirs(directory, exist_ok=True)
    save_weights(model, os.path.join(directory, WEIGHTS))
    if tokenizer is not None:
        tokenizer.save(directory)
    if target_tokenizer is not None:
        target_tokenizer.save(os.path.join(directory, TARGET_TOKENIZER))
    config = describe_build(model.spec, host, tokenizer, target_tokenizer)
    # A stack that shares parameters across layers (ALBERT) says how many it would have without
    # sharing; `lmkit show` reports the difference.
    stacks = {"encoder": model.encoder, "decoder": model.decoder}
    unshared = {key: stack.parameters_without_sharing() for key, stack in stacks.items() if stack is not None}
    unshared = {key: n for key, n in unshared.items()
                if n != sum(p.numel() for p in stacks[key].parameters())}  # only where sharing saves
    if unshared:
        config["parameters_without_sharing"] = unshared
    config.update(model.provenance)
    atomic_write_json(os.path.join(directory, CONFIG), config)


# -- loading ---------------------------------------------------------------------------------------


def spec_from_config(config: dict, directory: str, host: PluginHost) -> ModelSpec:
    """Rebuild the spec of a model directory, naming the plugin to install when one is missing."""
    check_components(config, directory, host)
    spec_table = dict(config["spec"])
    tokenizer = spec_table.pop("tokenizer", None)
    try:
        spec = resolve(spec_table, host)
    except LmkitError as error:
        raise ArtifactError(f"{directory}/{CONFIG} no longer resolves: {error}") from None
    spec.tokenizer = tokenizer
    return spec


def check_weights_match(model: nn.Module, tensors: dict[str, dict], path: str) -> None:
    """Refuse weights that do not fit the spec, naming the first tensor that differs."""
    expected = {name: list(t.shape) for name, t in model.state_dict().items()}
    for name, shape in expected.items():
        if name not in tensors:
            raise ArtifactError(f"{path} does not match the spec: tensor '{name}' is missing")
        if tensors[name]["shape"] != shape:
            raise ArtifactError(f"{path} does not match the spec: tensor '{name}' has shape "
                                f"{tensors[name]['shape']} in the file, the spec builds {shape}")
    for name in tensors:
        if name not in expected:
            raise ArtifactError(f"{path} does not match the spec: the file has tensor '{name}', "
                                "which the spec does not build")


def load_weights(model: nn.Module, path: str) -> None:
    from safetensors.torch import load_file

    check_weights_match(model, read_safetensors_header(path), path)
    model.load_state_dict(load_file(path), strict=True)


def load_model(directory: str, host: PluginHost | None = None, device: str = "cpu"):
    """(model, tokenizer or None, config) from a model directory written by lmkit.

    The model comes in eval mode (no dropout), ready to run; the trainer switches it to training.
    """
    host = host or get_host()
    config = read_config(directory)
    spec = spec_from_config(config, directory, host)
    weights = find_weights(directory)
    model = build_model(spec, seed=None)
    load_weights(model, weights)
    model.provenance = provenance(config)
    model.to(device).eval()
    tokenizer = None
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
        from .tokenizers import load_tokenizer

        tokenizer = load_tokenizer(directory)
    return model, tokenizer, config


def load_target_tokenizer(directory: str):
    """The target-side tokenizer of an encoder-decoder model directory (or export directory), or None
    when both sides share tokenizer.json."""
    path = os.path.join(directory, TARGET_TOKENIZER)
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        return None
    from .tokenizers import load_tokenizer

    return load_tokenizer(path)


# -- composing -------------------------------------------------------------------------------------


def stack_vocab_size(part: Part | None) -> int | None:
    """The rows of a stack's token embedding: its option of the shared vocabulary's name, vocab_size (None
    for a stack without one, CoVe's)."""
    from .options import options_to_dict

    return options_to_dict(part.options).get("vocab_size") if part is not None and part.options else None


def _stack_tokenizer(spec: ModelSpec):
    """The spec's tokenizer, with the special tokens its stacks read (lmkit.contract.Stack.special_tokens)
    added where it lacks them (GLM's [gMASK], [S], ...: new rows of the embedding, learned in training),
    and the roles the stacks give them (special_token_roles) where the tokenizer has no token in that role."""
    from .tokenizers import Tokenizer, load_tokenizer

    tokenizer = load_tokenizer(spec.tokenizer["path"])
    stacks = [part.component.load() for part in (spec.encoder, spec.decoder) if part is not None]
    wanted = [token for stack in stacks for token in stack.special_tokens]
    missing = [token for token in dict.fromkeys(wanted) if tokenizer.token_to_id(token) is None]
    if missing:
        tokenizer.hf_tokenizer.add_special_tokens(missing)
    roles = {role: token for stack in stacks for role, token in stack.special_token_roles.items()}
    roles = {**roles, **tokenizer.special_tokens}  # the tokenizer's own roles stay
    if roles != tokenizer.special_tokens:
        tokenizer = Tokenizer(tokenizer.hf_tokenizer, tokenizer.kind, roles, reverse=tokenizer.reverse)
    if "reverse" in spec.tokenizer:  # true: a backward language model, every text read right to left
        tokenizer = tokenizer.reversed() if spec.tokenizer["reverse"] else tokenizer.forward()
    return tokenizer


def _size_vocabularies(spec: ModelSpec, raw: dict, explicit: set[str], say) -> bool:
    """Set raw[stack]["vocab_size"] to its tokenizer's size for each stack with a vocab_size the user left to
    the preset or default; True when one changed."""
    if not spec.tokenizer or "path" not in spec.tokenizer:
        return False
    from .tokenizers import load_tokenizer

    tokenizer = _stack_tokenizer(spec)
    target = spec.tokenizer.get("target")
    target = load_tokenizer(target) if isinstance(target, str) and spec.encoder and spec.decoder else None
    changed = False
    for key, part in (("encoder", spec.encoder), ("decoder", spec.decoder)):
        size = stack_vocab_size(part)
        side = target if key == "decoder" and target is not None else tokenizer
        if size is None or key in explicit or size == side.vocab_size:
            continue
        raw[key]["vocab_size"] = side.vocab_size
        changed = True
        which = "target tokenizer" if side is target else "tokenizer"
        why = (f"{size - side.vocab_size} of its rows would never be used" if size > side.vocab_size
               else "too few for its tokens")
        say(f"{key}.vocab_size {side.vocab_size}, the {which}'s: it was {size}, {why}; --set {key}.vocab_size=N "
            "to choose")
    return changed


def _composed_from(spec: ModelSpec, weights: str | None) -> tuple[str, ...]:
    """The paths a composed model is made from: its weights and its tokenizers' folders."""
    tokenizers = [(spec.tokenizer or {}).get(key) for key in ("path", "target")]
    return tuple(path for path in (weights, *tokenizers) if isinstance(path, str))


def attach_tokenizers(spec: ModelSpec):
    """(tokenizer, target tokenizer or None): `tokenizer.target` names the target side's own tokenizer
    for an encoder-decoder model; the decoder's vocabulary must then fit it, the encoder's the other."""
    if not spec.tokenizer or "path" not in spec.tokenizer:
        if spec.tokenizer and isinstance(spec.tokenizer.get("target"), str):
            raise SpecError("tokenizer.target needs tokenizer.path too: give --set tokenizer=SOURCE_TOKENIZER "
                            "before --set tokenizer.target=TARGET_TOKENIZER")
        return None, None
    from .tokenizers import load_tokenizer

    tokenizer = _stack_tokenizer(spec)
    wanted = spec.tokenizer.get("type")
    if wanted and wanted != tokenizer.kind:
        raise SpecError(f"tokenizer: {spec.tokenizer['path']} is a {tokenizer.kind} tokenizer, "
                        f"the spec asks for {wanted}; drop tokenizer.type or train a {wanted} tokenizer")
    target = None
    if isinstance(spec.tokenizer.get("target"), str):
        if spec.encoder is None or spec.decoder is None:
            raise SpecError("tokenizer.target is the target side's tokenizer of an encoder-decoder model; this "
                            "spec does not have both an encoder and a decoder")
        target = load_tokenizer(spec.tokenizer["target"])

    for key, part in (("encoder", spec.encoder), ("decoder", spec.decoder)):
        size = stack_vocab_size(part)
        side = target if key == "decoder" and target is not None else tokenizer
        if size is not None and size < side.vocab_size:
            raise SpecError(f"{key}.vocab_size={size} is smaller than the {'target ' if side is target else ''}"
                            f"tokenizer's {side.vocab_size} tokens; set --set {key}.vocab_size={side.vocab_size} "
                            "(or more)")
    return tokenizer, target


# Overrides that leave a preset the preset: the tokenizer it reads (and the vocabulary sized to it), its name.
_KEEPS_PRESET = ("tokenizer", "name", "based_on")


def compose(source: str, overrides: list[str], out: str, *, force: bool = False, seed: int = 0,
            weights: str | None = None, host: PluginHost | None = None, say=None) -> dict:
    """Resolve a preset or spec file with overrides and write a model directory to `out`.

    A stack's vocab_size that the user did not set (with --set or in their spec file) is sized to the
    tokenizer it reads (the target tokenizer for an encoder-decoder's decoder); `say` gets one line for
    each. A composition that changes a preset keeps a name of its own (the --out folder's) and records
    the preset as `based_on`.
    """
    from .artifacts import check_out, staged_directory
    from .spec import apply_overrides, load_source, read_toml

    host = host or get_host()
    say = say or (lambda message: None)
    raw = apply_overrides(load_source(source, host), overrides)  # an unknown source fails here, in one line
    own = {} if source in host.presets else read_toml(source)  # what the user's spec file itself sets
    given = [a.partition("=")[0].strip() for a in overrides]
    preset = source if source in host.presets else own.get("preset")
    changed = [key for key in given if key.split(".")[0] not in _KEEPS_PRESET] + [
        key for key in own if key not in (*_KEEPS_PRESET, "preset")]
    if isinstance(preset, str) and changed:  # no longer the preset: a name of its own, and where it started
        if "name" not in given and "name" not in own or raw.get("name") == preset:
            raw["name"] = os.path.basename(os.path.normpath(out)) or preset
        raw["based_on"] = preset
    spec = resolve(raw, host)
    check_out(out, force, inputs=_composed_from(spec, weights))  # before the notes below, which a refusal would follow
    explicit = {key for key in ("encoder", "decoder")
                if f"{key}.vocab_size" in given or "vocab_size" in (own.get(key) or {})}
    if _size_vocabularies(spec, raw, explicit, say):
        spec = resolve(raw, host)
    tokenizer, target_tokenizer = attach_tokenizers(spec)
    for part in spec.objectives:  # what training would refuse is refused now (lmkit.contract.Objective)
        try:
            part.component.load().check_composition(part.options, spec, tokenizer)
        except SpecError as error:
            raise SpecError(f"objectives.{part.type}: {error}") from None
    model = build_model(spec, seed)
    for stack, side in ((model.encoder, tokenizer), (model.decoder, target_tokenizer or tokenizer)):
        if stack is not None and side is not None:
            stack.bind_tokenizer(side)  # lmkit.contract.Stack: what a stack derives from its vocabulary
    if weights is not None:
        load_weights(model, weights)
    with staged_directory(out, force=force, inputs=_composed_from(spec, weights)) as stage:
        save_model(stage, model, host, tokenizer, target_tokenizer)
    return describe_build(spec, host, tokenizer, target_tokenizer)
