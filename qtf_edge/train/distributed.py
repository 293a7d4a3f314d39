"""Data-parallel training under torchrun (PyTorch DistributedDataParallel).

    torchrun --nproc_per_node 2 -m qtf_edge train --preset small --out runs/small-qtf

torchrun starts one process per GPU (or per CPU process with --device cpu) and sets
WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE > 1 `qtf-edge train` joins a process
group (NCCL for CUDA tensors, gloo for CPU ones) and:

- rank 0 prepares the run first (trains the tokenizer, fills the token cache); the
  others wait, receive its tokenizer and then read the cache;
- every rank draws its own batch of --batch-size sequences per step (seeded by
  (seed, step, rank); rank 0 draws the single-process batch), so a step sees
  world_size x batch_size sequences; DDP averages the gradients and every rank applies
  the same AdamW step to identical weights;
- only rank 0 writes: the run folder, checkpoints, metrics and progress; it also runs
  the evaluations (the other ranks wait for it at the next step's all-reduce);
- decisions that could differ between ranks (skip a non-finite step, stop on SIGINT)
  are all-reduced, so the ranks never diverge.

--budget (TT rounding replaces parameters mid-run, which a DDP wrapper cannot follow)
is refused under torchrun; train with one process for a budgeted run.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Ranks:
    """This process's place among torchrun's workers (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_env() -> Ranks:
    """The ranks torchrun set in the environment (WORLD_SIZE, RANK, LOCAL_RANK)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks()
    return Ranks(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def process_group() -> Iterator[Ranks]:
    """Join torchrun's process group for the block (nothing to do for one process); the
    group is destroyed on the way out, errors included."""
    ranks = ranks_from_env()
    if not ranks.active:
        yield ranks
        return
    if torch.cuda.is_available():
        # One GPU per process; "cuda" then means this process's GPU. CPU tensors (object
        # broadcasts, flags, a --device cpu run) go through gloo, CUDA ones through NCCL.
        torch.cuda.set_device(ranks.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    try:
        yield ranks
        # Leave together: a rank that tears gloo down while another still talks to it
        # aborts ("terminate called without an active exception"), seen ~1 run in 15.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def rank0_first(ranks: Ranks, prepare: Callable[[bytes | None], object]):
    """prepare(None) on rank 0; then prepare(rank 0's tokenizer JSON) on the others, so
    that the tokenizer is trained and the token cache written once. Every rank returns
    only once all have prepared (rank 0 must not create the run folder while another
    still checks that --out is new); if one fails, the others raise too instead of
    waiting for it."""
    if not ranks.active:
        return prepare(None)
    if ranks.is_main:
        try:
            session = prepare(None)
        except BaseException as error:
            dist.broadcast_object_list([("error", f"{type(error).__name__}: {error}")])
            raise
        dist.broadcast_object_list([("ok", session.tokenizer_json)])
        failed = False
    else:
        message = [None]
        dist.broadcast_object_list(message)
        kind, payload = message[0]
        if kind == "error":
            raise RuntimeError(f"rank 0 could not prepare the run ({payload})")
        try:
            session, failed = prepare(payload), False
        except BaseException:
            any_rank(True, ranks)
            raise
    if any_rank(failed, ranks):
        raise RuntimeError(f"rank {ranks.rank}: another rank could not prepare the run")
    return session


def wrap(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """The DDP wrapper used for the training forward/backward (gradients all-reduced).

    The routers' steered thresholds are buffers updated in the forward pass from each
    rank's own batch. DDP's default forward buffer sync (broadcast_buffers=True) copies
    rank 0's buffers before every forward: the forwards agree, but between steps each
    rank holds its own update. `sync_buffers` does the same copy at the end of each
    step instead, so the ranks are identical at every checkpoint, evaluation and at the
    end; DDP's per-forward copy is turned off (it would only repeat it)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (the routers' thresholds) to every rank."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def mean_if_all_finite(value: float | None, ranks: Ranks) -> float | None:
    """The mean of `value` over the ranks, or None if it is None or not finite on any
    rank: every rank gets the same answer (one process: the value itself, or None)."""
    ok = value is not None and math.isfinite(value)
    if not ranks.active:
        return value if ok else None
    summed = torch.tensor([0.0 if ok else 1.0, value if ok else 0.0], dtype=torch.float64)
    dist.all_reduce(summed)
    return None if summed[0].item() > 0 else summed[1].item() / ranks.world_size


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """True if `flag` is true on some rank (one process: the flag itself)."""
    if not ranks.active:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
