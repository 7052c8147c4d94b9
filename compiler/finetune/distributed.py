"""Data-parallel fine-tuning under ``torchrun``: process group, sharded data, reduced metrics.

Launched with ``torchrun --nproc_per_node W`` (``WORLD_SIZE > 1`` in the environment), or inside a
process group the caller initialised, fine-tuning runs on ``W`` processes: the student is wrapped in
``DistributedDataParallel`` (which averages gradients), and the training loader is rebuilt with a
``DistributedSampler`` and a per-rank batch of ``batch_size / W``. ``DistributedSampler`` draws one
permutation for all ranks and deals it out round-robin, so the ``W`` local batches of a step are
exactly the global batch a single process would draw from the same permutation: with the same
seed the run matches the one-process run up to float summation order. One process therefore uses a
``DistributedSampler`` too (``num_replicas=1``). BatchNorm in training mode sees only its rank's
local batch, which is where the equivalence stops.
"""
from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

from ..errors import FineTuneError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run. ``created``: we initialised the process group, so we destroy it."""

    world: int = 1
    rank: int = 0
    created: bool = False


def setup_distributed() -> DistContext:
    """Join (or, under torchrun, create with the gloo backend) the default process group, if there is one."""
    if not dist.is_available():
        return DistContext()
    if dist.is_initialized():
        return DistContext(dist.get_world_size(), dist.get_rank())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext()
    dist.init_process_group("gloo")  # env:// rendezvous from torchrun's MASTER_ADDR/PORT, RANK, WORLD_SIZE
    return DistContext(dist.get_world_size(), dist.get_rank(), created=True)


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if we made it. First, with several processes, a garbage collection:
    a ``DistributedDataParallel`` wrapper lives in reference cycles (its reducer holds the group's
    work), so without one it is freed at some later collection, after the group is gone, or during
    interpreter exit, where Gloo's threads abort the process ("terminate called without an active
    exception": 3 of 59 runs of the two-process torchrun test, SIGABRT on one rank)."""
    if ctx.world > 1:
        gc.collect()
    if ctx.created and dist.is_initialized():
        dist.destroy_process_group()


def epoch_loader(loader: Iterable, ctx: DistContext, seed: int) -> tuple[Iterable, Callable[[int], None]]:
    """The loader to iterate on this rank, and a ``set_epoch(epoch)`` that reshuffles it reproducibly.

    A ``DataLoader`` over a map-style dataset with a plain or shuffled sampler is rebuilt around a
    seeded ``DistributedSampler``; anything else (a list of batches, a custom sampler) is used as
    given in one process and refused in several.
    """
    rebuildable = (isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)
                   and loader.batch_size is not None and isinstance(loader.sampler, (RandomSampler, SequentialSampler)))
    if not rebuildable:
        if ctx.world > 1:
            raise FineTuneError(f"distributed fine-tuning ({ctx.world} processes) needs the training data as a "
                                "DataLoader over a map-style dataset with batch_size and shuffle (no custom sampler), "
                                f"got {type(loader).__name__}")
        return loader, lambda _epoch: None
    if loader.batch_size % ctx.world:
        raise FineTuneError(f"the global batch size {loader.batch_size} must divide evenly over {ctx.world} processes")
    sampler = DistributedSampler(loader.dataset, num_replicas=ctx.world, rank=ctx.rank,
                                 shuffle=isinstance(loader.sampler, RandomSampler), seed=seed, drop_last=False)
    rebuilt = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size // ctx.world,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        generator=torch.Generator().manual_seed(seed),  # seeds the workers' base seed
        persistent_workers=loader.persistent_workers,
    )
    return rebuilt, sampler.set_epoch


def shard(batches: Iterable, ctx: DistContext) -> Iterator:
    """Every ``world``-th batch, from this rank's offset: evaluation splits whole batches, then sums."""
    for i, batch in enumerate(batches):
        if i % ctx.world == ctx.rank:
            yield batch


def all_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sums over all ranks (float64, so counts stay exact)."""
    if ctx.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()

