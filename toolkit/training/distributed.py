"""One process or many: torchrun's environment, the process group, and the few collectives training uses.

`torchrun --nproc-per-node N -m lmkit train ...` sets WORLD_SIZE, RANK and LOCAL_RANK; with them,
training joins a process group (gloo on CPU, NCCL on CUDA) and wraps the model in
DistributedDataParallel. Without them, every helper here is a no-op on one process.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .arguments import TrainingError


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """'auto' is the CUDA device when there is one (this process's, under torchrun), else the CPU."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise TrainingError(f"--device {choice!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu" and device.index not in (None, 0):  # torch takes cpu:1 and ignores the index
        raise TrainingError(f"--device {choice}: the CPU is one device, whose cores torch uses together; "
                            "use --device cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"--device {choice} asks for CUDA, which this machine does not have; "
                                "use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the training processes."""

    rank: int
    local_rank: int  # its place on this machine, which picks its GPU
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and draws the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor summed over all processes (in place)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, value) -> list:
        """Each process's `value` (a picklable object sent between our own processes), in rank order."""
        if not self.distributed:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others, e.g. to fill a cache that they then read."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    """This process's place in the run; under torchrun, joins the process group and leaves it after.

    Collectives on CPU tensors go through gloo and, where there is CUDA, those on GPU tensors
    through NCCL, so the group serves whichever device the arguments pick.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not dist.is_initialized():
        yield Processes(rank=0, local_rank=0, world_size=1)
        return
    joined_here = not dist.is_initialized()
    if joined_here:
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield Processes(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                        world_size=dist.get_world_size())
    finally:
        if joined_here:
            dist.destroy_process_group()
