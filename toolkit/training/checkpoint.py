"""Checkpoints in the model directory, written so that a crash at any instant leaves the last one readable.

A checkpoint is three files beside config.json and tokenizer.json:

    model.safetensors      the weights, as lmkit.model.save_weights writes them
    optimizer.safetensors  every tensor of the optimizer's state, named `<parameter name>.<key>`
                           (AdamW: exp_avg, exp_avg_sq, and step as a 0-d float32 tensor); a
                           sharded run (--shard) writes optimizer.dcp/ instead (lmkit.training.sharding)
    trainer_state.json     the step, the arguments, each process's RNG state, the data position,
                           the spec and tokenizer the run was started with, and what training
                           carries between steps besides the weights (a stateful LM's state)

They are written whole into `.checkpoint.partial/`, which is then renamed `.checkpoint.ready/`: that
rename is the commit. The files then move over the directory's own, trainer_state.json last. A crash
before the commit leaves the previous checkpoint as it was; a crash after it leaves a complete
checkpoint that `finish_interrupted_save`, run before training reads the directory, moves into place.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil

import torch

from ..artifacts import WEIGHTS, atomic_write, atomic_write_json, read_json, read_safetensors_header
from ..errors import ArtifactError
from ..model import save_weights
from .arguments import TrainingError

OPTIMIZER = "optimizer.safetensors"
STATE = "trainer_state.json"
STATE_FORMAT = "lmkit-trainer-state/1"
OPTIMIZER_DCP = "optimizer.dcp"  # a folder: the optimizer state of a sharded run, one file per process
PARTIAL = ".checkpoint.partial"
READY = ".checkpoint.ready"
FILES = (WEIGHTS, OPTIMIZER, OPTIMIZER_DCP, STATE)  # moved in this order: the state, which names the step, last


def _fsync_directory(directory: str) -> None:
    """Make the renames inside `directory` durable, not just the files' contents."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def save_checkpoint(directory: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    parameter_names: dict[torch.nn.Parameter, str], state: dict) -> None:
    """Write a checkpoint into the model directory (see the module docstring for how)."""
    stage = begin_checkpoint(directory)
    save_weights(model, os.path.join(stage, WEIGHTS))
    save_optimizer_state(optimizer, parameter_names, os.path.join(stage, OPTIMIZER))
    commit_checkpoint(directory, state)


def begin_checkpoint(directory: str) -> str:
    """An empty staging folder for the next checkpoint's files, which commit_checkpoint moves into place."""
    stage = os.path.join(directory, PARTIAL)
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    return stage


def commit_checkpoint(directory: str, state: dict) -> None:
    """Write trainer_state.json into the staged checkpoint, commit it and move its files into place."""
    atomic_write_json(os.path.join(directory, PARTIAL, STATE), state)
    os.replace(os.path.join(directory, PARTIAL), os.path.join(directory, READY))
    _fsync_directory(directory)
    finish_interrupted_save(directory)


def finish_interrupted_save(directory: str) -> None:
    """Move a committed checkpoint into place, and drop one whose writing never finished."""
    ready = os.path.join(directory, READY)
    if os.path.isdir(ready):
        # The optimizer's state is in one of two formats: the other one's file, left by an earlier run
        # sharded differently, goes (it would otherwise be read for a step it does not belong to).
        if os.path.exists(os.path.join(ready, STATE)):
            for name, other in ((OPTIMIZER, OPTIMIZER_DCP), (OPTIMIZER_DCP, OPTIMIZER)):
                if os.path.exists(os.path.join(ready, name)):
                    _remove(os.path.join(directory, other))
        for name in FILES:
            if os.path.exists(os.path.join(ready, name)):  # absent: moved before the interruption
                if os.path.isdir(os.path.join(directory, name)):  # a rename cannot replace a folder
                    shutil.rmtree(os.path.join(directory, name))
                os.replace(os.path.join(ready, name), os.path.join(directory, name))
        _fsync_directory(directory)
        shutil.rmtree(ready)
    shutil.rmtree(os.path.join(directory, PARTIAL), ignore_errors=True)


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def read_trainer_state(directory: str) -> dict:
    path = os.path.join(directory, STATE)
    if not os.path.isfile(path):
        raise TrainingError(f"{directory} has no {STATE} to resume from: no checkpoint of a training run was "
                            "saved there; train it without --resume")
    state = read_json(path, "the checkpoint cannot be resumed")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ArtifactError(f"{path} is not an lmkit trainer state ({STATE_FORMAT}); the checkpoint cannot be "
                            "resumed")
    return state


# -- optimizer state ---------------------------------------------------------------------------------


def save_optimizer_state(optimizer: torch.optim.Optimizer, parameter_names: dict[torch.nn.Parameter, str],
                         path: str) -> None:
    from safetensors.torch import save

    tensors = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for key, value in optimizer.state.get(parameter, {}).items():
                tensors[f"{parameter_names[parameter]}.{key}"] = value.detach().cpu().contiguous()
    payload = save(tensors, metadata={"format": "pt", "optimizer": type(optimizer).__name__})
    with atomic_write(path, "wb") as out:
        out.write(payload)


def load_optimizer_state(optimizer: torch.optim.Optimizer, parameter_names: dict[torch.nn.Parameter, str],
                         path: str) -> None:
    """Restore the state `save_optimizer_state` wrote, checking that it fits these parameters."""
    from safetensors.torch import load

    read_safetensors_header(path)  # whole, and not a pickle
    # Read into memory rather than mapped from the file (load_file): the optimizer updates these
    # tensors in place every step, and file-backed pages made CPU steps many times slower.
    with open(path, "rb") as handle:
        tensors = load(handle.read())
    by_name = {name: parameter for parameter, name in parameter_names.items()}
    per_parameter: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, field = key.rpartition(".")
        parameter = by_name.get(name)
        if parameter is None:
            raise ArtifactError(f"{path} holds optimizer state for '{name}', which the model does not have; "
                                "the checkpoint belongs to another model")
        # A state is a scalar, or shaped as its parameter; a factored moment (Adafactor's row and column
        # variances) keeps the parameter's rank with 1 on the axes it averages over.
        if tensor.dim() and (tensor.dim() != parameter.dim()
                             or any(t not in (1, p) for t, p in zip(tensor.shape, parameter.shape))):
            raise ArtifactError(f"{path}: the optimizer state '{key}' has shape {list(tensor.shape)}, its "
                                f"parameter {list(parameter.shape)}; the checkpoint belongs to another model")
        per_parameter.setdefault(name, {})[field] = tensor
    # Optimizer.load_state_dict addresses parameters by their position across the groups.
    ordered = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    state = {index: per_parameter[parameter_names[parameter]] for index, parameter in enumerate(ordered)
             if parameter_names[parameter] in per_parameter}
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


# -- random number generators ------------------------------------------------------------------------


def _encode(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state(device: torch.device) -> dict:
    """This process's generator states, base64-encoded: the CPU's, and its GPU's when it has one."""
    state = {"torch_cpu": _encode(torch.get_rng_state())}
    if device.type == "cuda":
        state["torch_cuda"] = _encode(torch.cuda.get_rng_state(device))
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(_decode(state["torch_cpu"]))
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(_decode(state["torch_cuda"]), device)


def save_carried(tensors: dict[str, torch.Tensor]) -> str | None:
    """Tensors training carries between steps (lmkit.contract.Objective.carried_state: a stateful LM's
    hidden state per stream) as base64 safetensors for trainer_state.json; None when there are none."""
    if not tensors:
        return None
    from safetensors.torch import save

    return base64.b64encode(save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})).decode("ascii")


def load_carried(text: str, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return {name: tensor.to(device) for name, tensor in load(base64.b64decode(text)).items()}


# -- what the run was started with -------------------------------------------------------------------


def fingerprint(table: dict) -> str:
    return hashlib.sha256(json.dumps(table, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def first_difference(old, new, path: str = "") -> tuple[str, object, object] | None:
    """(dotted path, old value, new value) of the first place two JSON values differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new)):
            found = first_difference(a, b, f"{path}[{index}]")
            if found:
                return found
        return None
    return None if old == new else (path or "spec", old, new)
