"""Cache prefixes: trained keys/values a causal decoder starts from, one per attribute (no torch here).

A prefix is what a decoder's key/value cache would hold after P positions, for every layer: an array
(n_layers, 2, n_heads, P, head_dim), keys at [:, 0] and values at [:, 1], the same for every row of a
batch. Generating "with a prefix" starts the cache from it instead of from nothing; the real tokens
then sit at positions P, P+1, ... (as Hugging Face's past_key_values and PEFT's prefix tuning place
them), so a prefix made from the keys/values of P real tokens gives exactly what feeding those
tokens first gives. Contrastive prefixes (Qian et al. 2022, lmkit.plugins.prefixes) train them.

A prefix file is one safetensors file, `prefixes.safetensors` in a prefix directory: a tensor
`prefix.<attribute>` per attribute and, in the header's metadata under "lmkit-prefix", JSON with
the attributes, the geometry (n_layers, n_heads, head_dim, length) and how they were made. Both the
PyTorch backend and the export runtime read it with numpy, so a prefix works on an export as is.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .errors import ArtifactError, LmkitError, did_you_mean

PREFIX_FILE = "prefixes.safetensors"
METADATA_KEY = "lmkit-prefix"


@dataclass(frozen=True)
class CachePrefix:
    """One attribute's prefix: keys_values float32 (n_layers, 2, n_heads, length, head_dim); see the module."""

    keys_values: np.ndarray
    attribute: str = ""
    source: str = ""  # the file it came from, for error messages

    @property
    def n_layers(self) -> int:
        return self.keys_values.shape[0]

    @property
    def n_heads(self) -> int:
        return self.keys_values.shape[2]

    @property
    def length(self) -> int:
        return self.keys_values.shape[3]

    @property
    def head_dim(self) -> int:
        return self.keys_values.shape[4]

    def check_fits(self, n_layers: int, n_heads: int, head_dim: int, model: str = "this model") -> None:
        """LmkitError in one line, naming both geometries, unless the prefix was made for this cache geometry."""
        theirs = (self.n_layers, self.n_heads, self.head_dim)
        if theirs != (n_layers, n_heads, head_dim):
            raise LmkitError(
                f"the prefix {self.attribute!r} from {self.source or 'the prefix file'} was trained for a model of "
                f"{_geometry(*theirs)}, but {model} has {_geometry(n_layers, n_heads, head_dim)}; "
                "train a prefix for this model with lmkit train-prefix")

    def positions_left(self, max_length: int | None) -> int | None:
        """The positions a model reading at most max_length (None: no limit) has left after the prefix;
        LmkitError when the prefix leaves none."""
        if max_length is None:
            return None
        if self.length >= max_length:
            raise LmkitError(f"the prefix has {self.length} positions and the model reads at most {max_length}; "
                             "train a shorter prefix")
        return max_length - self.length


def _geometry(n_layers: int, n_heads: int, head_dim: int) -> str:
    return f"{n_layers} layers, {n_heads} heads of {head_dim} dimensions (width {n_heads * head_dim})"


def prefix_path(path: str) -> str:
    """The prefix file of a prefix directory (or the file itself); ArtifactError when there is none."""
    if not os.path.exists(path):
        raise ArtifactError(f"{path} does not exist; give the --out directory of lmkit train-prefix")
    file = os.path.join(path, PREFIX_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ArtifactError(f"{path} holds no prefix file ({PREFIX_FILE}); give the --out directory of "
                            "lmkit train-prefix")
    return file


def read_prefix_info(path: str) -> dict:
    """The metadata of a prefix file or directory: attributes, n_layers, n_heads, head_dim, length, ..."""
    from safetensors.numpy import safe_open

    from .artifacts import read_safetensors_header

    file = prefix_path(path)
    try:
        header = read_safetensors_header(file)  # whole, and not a pickle, before safetensors reads it
    except ArtifactError:
        if file == path:  # a file given in place of the directory: say what is wanted, not how its bytes are wrong
            raise ArtifactError(f"{path} is not a prefix file (not safetensors); give the --out directory of lmkit "
                                "train-prefix") from None
        raise
    with safe_open(file, framework="numpy") as tensors:
        metadata = tensors.metadata() or {}
    try:
        info = json.loads(metadata[METADATA_KEY])
        attributes = list(info["attributes"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{file} is not a prefix file of lmkit (no {METADATA_KEY} metadata); make one with "
                            "lmkit train-prefix") from None
    missing = [name for name in attributes if f"prefix.{name}" not in header]
    if missing:
        raise ArtifactError(f"{file} lists the attribute {missing[0]!r} but holds no tensor for it; train the "
                            "prefixes again")
    return info


def load_prefix(path: str, attribute: str | None = None) -> CachePrefix:
    """One attribute's prefix from a prefix file or directory; with one attribute in it, `attribute` may be None.

    Errors (one line): no prefix file, an attribute the file does not have (naming those it has).
    """
    from safetensors.numpy import safe_open

    file = prefix_path(path)
    info = read_prefix_info(file)
    attributes = info["attributes"]
    if attribute is None:
        if len(attributes) != 1:
            raise LmkitError(f"{path} holds prefixes for {', '.join(attributes)}; pick one with --attribute")
        attribute = attributes[0]
    if attribute not in attributes:
        raise LmkitError(f"{path} has no prefix for the attribute {attribute!r}{did_you_mean(attribute, attributes)}; "
                         f"it has {', '.join(attributes)}")
    with safe_open(file, framework="numpy") as tensors:
        keys_values = np.asarray(tensors.get_tensor(f"prefix.{attribute}"), dtype=np.float32)
    if keys_values.ndim != 5 or keys_values.shape[1] != 2:
        raise ArtifactError(f"{file}: the prefix {attribute!r} has shape {keys_values.shape}, not (n_layers, 2, "
                            "n_heads, length, head_dim); train the prefixes again")
    return CachePrefix(keys_values, attribute, path)


def save_prefixes(directory: str, prefixes: dict[str, np.ndarray], info: dict) -> str:
    """Write `prefixes` {attribute: (n_layers, 2, n_heads, length, head_dim)} and `info` to directory/PREFIX_FILE,
    atomically; returns the file's path. info gets the attributes and geometry added."""
    from safetensors.numpy import save

    from .artifacts import atomic_write

    first = next(iter(prefixes.values()))
    n_layers, _, n_heads, length, head_dim = first.shape
    info = {**info, "attributes": list(prefixes), "n_layers": n_layers, "n_heads": n_heads,
            "head_dim": head_dim, "length": length}
    os.makedirs(directory, exist_ok=True)
    data = save({f"prefix.{name}": np.ascontiguousarray(value, dtype=np.float32) for name, value in prefixes.items()},
                metadata={METADATA_KEY: json.dumps(info)})
    path = os.path.join(directory, PREFIX_FILE)
    with atomic_write(path, "wb") as out:
        out.write(data)
    return path
