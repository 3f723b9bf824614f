"""torch.distributed for a training job started by ``torchrun`` (one process per GPU, or per CPU
share with gloo): init, the shard of the training split each rank trains on, reductions, barriers.

Nothing here reads the environment: ``init`` takes the rank, world size and local rank from its
caller (``ml_backend`` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` through Settings),
and ``torch.distributed.init_process_group(init_method="env://")`` reads ``MASTER_ADDR`` /
``MASTER_PORT`` itself. Without a process group every helper is the single-process identity, so the
single-process job runs exactly as before.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


def active() -> bool:
    """A process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or no process group): the process that evaluates, saves, publishes and reports."""
    return rank() == 0


def init(rank_: int, world: int, local_rank: int, device: str, timeout_s: float = 1800.0) -> str:
    """Join torchrun's process group (nccl on CUDA, gloo on the CPU) and return this rank's device
    (``cuda:<local_rank>`` when ``device`` is a CUDA device). ``world <= 1``: nothing to do, ``device``."""
    if world <= 1:
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", rank=rank_, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    log.info("rank %d of %d (local rank %d) on %s, backend %s", rank_, world, local_rank, device, dist.get_backend())
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def shard_indices(n: int, epoch: int, seed: int, rank_: int | None = None, world: int | None = None) -> torch.Tensor:
    """This rank's indices of a dataset of ``n`` for ``epoch``: what ``DistributedSampler(shuffle=True,
    seed=seed, drop_last=False)`` yields after ``set_epoch(epoch)`` — one permutation drawn with
    ``seed + epoch`` (the same on every rank), padded by wrapping to a multiple of the world size,
    every ``world``-th index from ``rank``. Every rank gets ``ceil(n / world)`` indices, so every rank
    takes the same number of steps (DDP needs that)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    per_rank = -(-n // w)
    pad = per_rank * w - n
    if pad:
        order = torch.cat([order, order.repeat(-(-pad // max(n, 1)))[:pad]])
    return order[r::w]


def local_batch_size(batch_size: int, world: int | None = None) -> int:
    """The per-rank batch of a global batch of ``batch_size`` (gradients are averaged across ranks,
    so the optimizer sees one step of ~``batch_size`` images, as in the single-process job)."""
    w = world_size() if world is None else world
    return max(1, -(-batch_size // w))


def wrap(model: nn.Module, device: str) -> nn.Module:
    """``model`` in DistributedDataParallel when a process group is active, else ``model``."""
    if not active():
        return model
    dev = torch.device(device)
    ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sum_across(values: dict[str, float]) -> dict[str, float]:
    """Per-key sums over all ranks (a dict of per-shard sums); the identity without a process group."""
    if not active() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.cpu().tolist()))


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (e.g. the export, read or fetched once); the identity without a group."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
