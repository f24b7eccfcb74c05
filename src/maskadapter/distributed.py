"""The one home of ``torch.distributed`` use: devices, the process group, collectives, sharding.

Evaluation, training and batch segmentation all run under ``torchrun`` (NCCL on GPUs, gloo on CPU) and
all call these helpers; in a plain single process every helper is a no-op that returns rank 0 of 1.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, TypeVar, Union

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "resolve_device", "init_distributed", "is_distributed", "all_reduce_sum", "broadcast_flag",
           "broadcast_object", "all_gather_object", "barrier", "cleanup", "shard", "env_rank"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and local rank of this process (0, 1, 0 without torchrun); ``created``: whether
    :func:`init_distributed` started the process group (and so should end it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes shared files."""
        return self.rank == 0


def env_rank() -> int:
    """This process's rank from torchrun's environment (0 outside torchrun), without touching torch.distributed."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(requested: Union[str, torch.device, None] = None) -> torch.device:
    """The device to run on: ``requested`` (``cpu``, ``cuda``, ``cuda:N``), or with None / ``auto`` CUDA when
    available, else the CPU. Under torchrun a bare ``cuda`` becomes this process's GPU (``LOCAL_RANK``).
    ValueError for a malformed name or CUDA without a GPU."""
    name = "auto" if requested is None else str(requested)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r}: {exc}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asks for CUDA, but no GPU is available")
        if device.index is None and "LOCAL_RANK" in os.environ:
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def init_distributed(device: Union[str, torch.device] = "cpu", timeout_min: int = 60) -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); NCCL for CUDA
    devices, gloo otherwise. An existing group is reused; without torchrun nothing is started."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this PyTorch build")
    device = torch.device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":  # NCCL collectives run on the current device: this process's GPU
        torch.cuda.set_device(device if device.index is not None else local)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_min))
    logger.info("process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, created=True)


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes (in place; returned). A no-op in a single process."""
    if is_distributed():
        if tensor.device.type == "cpu" and dist.get_backend() == "nccl":
            moved = tensor.to(_collective_device())
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved.cpu())
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_flag(flag: bool, device: Union[str, torch.device] = "cpu") -> bool:
    """True when ``flag`` is set on any process (every process gets the same answer)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t).item() > 0)


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every process (picklable objects; a no-op in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def cleanup(info: Optional[DistInfo] = None) -> None:
    """Leave the process group: always without ``info``, else only when ``info.created`` says this code started it."""
    if dist.is_available() and dist.is_initialized() and (info is None or info.created):
        dist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s disjoint, deterministic share of ``items``: every ``world_size``-th item from ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return list(items[rank::world_size])
