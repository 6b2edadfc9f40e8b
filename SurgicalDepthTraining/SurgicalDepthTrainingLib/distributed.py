"""Distributed data parallel set-up. The launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
set by ``torchrun``) is read here and nowhere else."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """``rank`` / ``world_size`` of this process (0 / 1 when not distributed) and ``local_rank`` (GPU index)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_group_backend() -> str:
    """NCCL where CUDA and a torch built with NCCL are there, else Gloo: Windows builds of torch have no NCCL
    (``init_process_group("nccl")`` fails there: "Distributed package doesn't have NCCL built in"), and Gloo also
    reduces CUDA tensors."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def setup_distributed() -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1), else run single-process.

    Backend: :func:`process_group_backend`. ``MASTER_ADDR``/``MASTER_PORT`` are read by ``init_process_group``
    itself (``env://``).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = process_group_backend()
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        logger.info("distributed: rank %d of %d (%s)", rank, world_size, backend)
    return DistInfo(rank, world_size, local_rank)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
