"""Data-parallel training with torch.distributed, launched by `torchrun` (or `accelerate launch`).

    torchrun --nproc_per_node=4 train_bc.py ...      # one node, four GPUs (or CPU processes)

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) a run is
a world of one and nothing here talks to anyone: the single-process path is the same
code. With it, each process takes one device (`cuda:LOCAL_RANK`, or the CPU with the
gloo backend), gradients of the trainable parameters are averaged by
DistributedDataParallel, and rank 0 alone logs, evaluates and writes checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    def shard(self, global_batch: int) -> slice:
        """This rank's slice of a global batch (which must split evenly)."""
        if global_batch % self.world_size:
            raise ValueError(
                f"the global batch size {global_batch} does not split evenly over "
                f"{self.world_size} processes; use a multiple of {self.world_size}"
            )
        size = global_batch // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group that torchrun describes; returns (world, this rank's device).

    `device` is what --device resolved to: CUDA ranks use NCCL on cuda:LOCAL_RANK, CPU
    ranks use gloo. The timeout is long because rank 0 evaluates while the others wait.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(minutes=60),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    return World(rank, world_size, local_rank), device


def close_world(world: World) -> None:
    """Leave the process group (a no-op for a world of one)."""
    if world.enabled and dist.is_initialized():
        dist.destroy_process_group()


class LossForward(nn.Module):
    """A loss computed from `module`'s parameters, as `module`'s forward: what DDP hooks.

    `LossForward(agent, agent.loss)`; `LossForward(model, partial(ppo_loss, model, cfg=c))`.
    """

    def __init__(self, module: nn.Module, loss: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self.loss = loss

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.loss(*args, **kwargs)


def data_parallel(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """`module` wrapped in DDP when there are several processes, else `module` itself.

    DDP reduces the gradients of parameters that require them, so frozen bodies are
    neither synchronised nor counted; it broadcasts rank 0's parameters and buffers at
    construction, so every rank starts from the same weights whatever its seed.
    """
    if not world.enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=True)


def broadcast_object(value: Any, world: World) -> Any:
    """Rank 0's value on every rank (e.g. the run directory it chose)."""
    if not world.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: dict[str, Any], world: World) -> list[dict[str, Any]]:
    """Every rank's dict, in rank order, on every rank (e.g. per-rank RNG and env states).

    Tensors travel on the CPU: a CUDA tensor would come back on its sender's device.
    """
    value = {k: v.cpu() if torch.is_tensor(v) else v for k, v in value.items()}
    if not world.enabled:
        return [value]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, value)
    return out


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank when it is true on any (e.g. a stop signal reached one rank)."""
    if not world.enabled:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def stop_agreed(requested: bool, world: World, device: torch.device, sync_point: bool) -> bool:
    """Whether to stop after this step: at once in one process; with several, at the next
    sync point (a log, eval or save step), all ranks together, so no collective is left
    waiting for a rank that has gone."""
    if not world.enabled:
        return requested
    return sync_point and any_rank(requested, world, device)


def sum_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """Element-wise sum over ranks (e.g. episode counts and returns)."""
    if world.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


def mean_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """Element-wise mean over ranks (e.g. PPO's approx_kl, so every rank stops together)."""
    return sum_over_ranks(values, world) / world.world_size


def mean_metrics(metrics: dict[str, Any], world: World) -> dict[str, Any]:
    """Tensor metrics averaged over ranks in one all-reduce (a rank's loss is of its shard)."""
    names = [k for k, v in metrics.items() if torch.is_tensor(v)]
    if not world.enabled or not names:
        return metrics
    values = mean_over_ranks(torch.stack([metrics[k].float().reshape(()) for k in names]), world)
    return {**metrics, **dict(zip(names, values.unbind(), strict=True))}


def barrier(world: World) -> None:
    """Wait for every rank."""
    if world.enabled:
        dist.barrier()
