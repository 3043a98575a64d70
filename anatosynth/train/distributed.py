"""Multi-process training through ``torchrun`` and DistributedDataParallel (no home-made distribution).

``torchrun --nproc_per_node N anatosynth pretrain ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_distributed` then joins the process group (NCCL on CUDA, gloo on CPU, ``env://``), so the same
code runs as 2 CPU processes in tests. Without those variables everything is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["DistContext", "init_distributed", "wrap_model", "unwrap_model", "barrier", "all_mean",
           "broadcast_flag", "shutdown", "pick_device"]


@dataclass
class DistContext:
    """Where this process stands: its rank, the world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, TensorBoard, checkpoints and model.pt."""
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → this rank's CUDA device when CUDA is present, else the CPU."""
    from anatosynth.options import resolve_device

    device = resolve_device(name)  # the one check and wording of every verb's --device
    if device.type == "cuda" and name in ("auto", "cuda"):
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1, else return a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    import torch.distributed as dist

    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, initialised=True)


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when running in several processes."""
    if ctx.world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain MONAI network (drops DDP's ``module.`` prefix from state_dict keys)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def barrier(ctx: DistContext) -> None:
    if ctx.initialised:
        import torch.distributed as dist

        dist.barrier()


def all_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of a scalar tensor over ranks (for logging the global loss)."""
    if not ctx.initialised:
        return value
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ctx.world_size


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when rank 0 says so (used to stop all ranks together on a time limit)."""
    if not ctx.initialised:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=ctx.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def shutdown(ctx: DistContext) -> None:
    if ctx.initialised:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
