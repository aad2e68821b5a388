"""Sharded training: PyTorch FSDP2 (`fully_shard`) over the model's blocks, and its optimizer state
checkpointed with torch.distributed.checkpoint (DCP), resumable on any number of processes.

`torchrun --nproc-per-node N -m lmkit train MODEL --shard ...` keeps 1/N of every parameter, gradient
and optimizer moment on each process: a block's full weights exist only while it runs (FSDP2
all-gathers them before its forward and backward and frees them after). What is sharded:

    each element of every outermost nn.ModuleList (the transformer blocks, the LSTM layers): a unit
    the rest (embeddings, final norm, lm_head): one root unit around the training loss

A checkpoint of a sharded run writes:

    model.safetensors       the full weights, gathered to the first process a tensor at a time
                            (the artifact every other command reads: generate, export, finetune)
    optimizer.dcp/          the optimizer's moments as DCP shards, one file per process, each
                            tensor named `<parameter name>.<key>` as in optimizer.safetensors

DCP records each shard's place in the whole tensor, so a checkpoint saved by N processes loads on
M processes, sharded or not (M = 1 included). Only tensors are stored: no pickled Python objects are
read back. The optimizer's state must be elementwise (a moment shaped as its parameter, or a scalar
such as Adam's step); factored moments (Adafactor's) are refused with --shard.

Source: torch.distributed.fsdp.fully_shard and torch.distributed.checkpoint (PyTorch >= 2.6 docs,
"Getting Started with Fully Sharded Data Parallel (FSDP2)").
"""
from __future__ import annotations

import torch
from torch import nn

from .arguments import TrainingError

OPTIMIZER_DCP = "optimizer.dcp"


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The elements of every outermost nn.ModuleList in `model`: the units FSDP2 shards one by one."""
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):  # what lies inside a block is sharded with the block
                units.extend(block for block in child if all(block is not unit for unit in units))  # ALBERT: once
            else:
                visit(child)

    visit(model)
    return units


def shard(loss_module: nn.Module, model: nn.Module) -> None:
    """Shard `model`'s blocks, then `loss_module` (whose forward runs the model) as the root unit.

    The root is the loss wrapper rather than the model because training calls `model.loss`, not
    `model.forward`: FSDP2 gathers a unit's parameters in hooks on its forward.
    """
    from torch.distributed.fsdp import fully_shard

    for unit in shard_units(model):
        fully_shard(unit)
    fully_shard(loss_module)


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state dict on the CPU, gathered one tensor at a time (every process takes part)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def check_elementwise(optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimizer whose state is not shaped as its (sharded) parameters."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for key, value in optimizer.state.get(parameter, {}).items():
                if value.dim() and value.shape != parameter.shape:
                    raise TrainingError(f"the optimizer keeps '{key}' shaped {list(value.shape)} for a parameter "
                                        f"of {list(parameter.shape)}, which --shard cannot split; train without "
                                        "--shard or with an elementwise optimizer such as adamw")


def _optimizer_tensors(optimizer: torch.optim.Optimizer, parameter_names: dict) -> dict[str, torch.Tensor]:
    return {f"{parameter_names[parameter]}.{key}": value
            for group in optimizer.param_groups for parameter in group["params"]
            for key, value in optimizer.state.get(parameter, {}).items()}


def save_optimizer_dcp(optimizer: torch.optim.Optimizer, parameter_names: dict, directory: str) -> None:
    """Every process writes its shards of the optimizer state into `directory` (a DCP checkpoint)."""
    import torch.distributed.checkpoint as dcp

    check_elementwise(optimizer)
    dcp.save(_optimizer_tensors(optimizer, parameter_names), checkpoint_id=directory)


def load_optimizer_dcp(optimizer: torch.optim.Optimizer, parameter_names: dict, directory: str) -> None:
    """Fill the optimizer's state from a DCP checkpoint written by any number of processes.

    Each parameter gets state tensors shaped (and, when sharded, placed) as itself, or scalars, named
    as the checkpoint names them; DCP then reads into each process the part it holds.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(directory)
    saved = reader.read_metadata().state_dict_metadata
    by_name = {name: parameter for parameter, name in parameter_names.items()}
    targets: dict[str, torch.Tensor] = {}
    for key, meta in saved.items():
        name, _, field = key.rpartition(".")
        parameter = by_name.get(name)
        if parameter is None or not isinstance(meta, TensorStorageMetadata):
            raise TrainingError(f"{directory} holds optimizer state '{key}' that this model has no parameter "
                                "for; the checkpoint belongs to another model")
        dtype = meta.properties.dtype
        if list(meta.size) == list(parameter.shape):
            targets[key] = torch.zeros_like(parameter, dtype=dtype)
        elif len(meta.size) == 0:
            targets[key] = torch.zeros((), dtype=dtype)
        else:
            raise TrainingError(f"{directory}: the optimizer state '{key}' has shape {list(meta.size)}, its "
                                f"parameter {list(parameter.shape)}; the checkpoint belongs to another model")
    import warnings

    import torch.distributed as dist

    with warnings.catch_warnings():  # one process reading a checkpoint of many (no torchrun) is a plain read
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(targets, storage_reader=reader, no_dist=not dist.is_initialized())
    for key, tensor in targets.items():
        name, _, field = key.rpartition(".")
        optimizer.state.setdefault(by_name[name], {})[field] = tensor


def load_full_optimizer_into_shards(optimizer: torch.optim.Optimizer, parameter_names: dict, path: str) -> None:
    """Fill a sharded run's optimizer from an unsharded checkpoint's optimizer.safetensors: each moment is
    split over the processes as its parameter is."""
    from safetensors.torch import load
    from torch.distributed.tensor import distribute_tensor

    from ..artifacts import read_safetensors_header

    read_safetensors_header(path)  # whole, and not a pickle
    with open(path, "rb") as handle:
        tensors = load(handle.read())
    by_name = {name: parameter for parameter, name in parameter_names.items()}
    for key, tensor in sorted(tensors.items()):
        name, _, field = key.rpartition(".")
        parameter = by_name.get(name)
        if parameter is None or (tensor.dim() and tensor.shape != parameter.shape):
            raise TrainingError(f"{path} holds optimizer state '{key}' that does not fit this model's parameters "
                                "(or is factored, which --shard cannot split); the checkpoint belongs to another "
                                "model, or resume it without --shard")
        if tensor.dim():  # a moment; a scalar (Adam's step) stays on the CPU, as torch keeps it
            tensor = tensor.to(parameter.device)
            if is_sharded(parameter):
                # Every process read the whole tensor: each keeps its own part, with no communication.
                tensor = distribute_tensor(tensor, parameter.device_mesh, parameter.placements, src_data_rank=None)
        optimizer.state.setdefault(parameter, {})[field] = tensor
