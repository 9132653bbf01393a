"""Where a run computes: this process's rank and device, CPU settings, the model wrapped for DDP or FSDP.

`start_cluster` reads torchrun's environment (rank 0 of 1 without it) and joins the process
group; `wrap_model` shards (FSDP2) or replicates (DDP) the model; `full_state` and
`load_full_state` move whole (gathered) model and optimizer states in and out, so a
checkpoint is the same files whatever the sharding.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from model.train.config import TrainConfig


@dataclass
class Cluster:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, values: list[float]) -> list[float]:
        """Elementwise sum over ranks, in float64 so token counts stay exact."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def launched_world_size() -> int:
    """The ranks torchrun started (1 without torchrun), known before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start_cluster(cfg: TrainConfig) -> Cluster:
    world_size = launched_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Cluster(rank, world_size, local_rank, device)


@contextlib.contextmanager
def process_settings(cfg: TrainConfig):
    """CPU threads and subnormal flushing for the run, restored afterwards (callers may be test processes)."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    flushing = False
    if cfg.flush_denormal:
        import numpy as np
        np.finfo(np.float32), np.finfo(np.float64)  # cached first, or numpy warns it sees no subnormals
        # Tiny softmax probabilities and Adam moments go subnormal after some steps; x86 math then crawls.
        flushing = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if flushing:
            torch.set_flush_denormal(False)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA devices that support it; fp32 elsewhere unless asked (CPU bf16 is slow and inexact)."""
    if cfg.dtype == "fp32":
        return None
    if cfg.dtype == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def wrap_model(model: nn.Module, cfg: TrainConfig, cluster: Cluster) -> nn.Module:
    """FSDP (per decoder layer, then the root) or DDP across ranks; torch.compile on request."""
    if cfg.fsdp and cluster.distributed:
        from torch.distributed.fsdp import fully_shard
        for layer in model.transformer.layers:
            fully_shard(layer)
        fully_shard(model)
        wrapped: nn.Module = model
    elif cluster.distributed:
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(model, device_ids=[cluster.device.index] if cluster.device.type == "cuda"
                                          else None)
    else:
        wrapped = model
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, cluster: Cluster):
    """Model and optimizer state with every tensor whole on rank 0 (gathered when sharded)."""
    if cfg.fsdp and cluster.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict(), optimizer.state_dict()


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict,
                    cfg: TrainConfig, cluster: Cluster) -> None:
    if cfg.fsdp and cluster.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        return
    model.load_state_dict(model_state, strict=True)
    optimizer.load_state_dict(optim_state)


def stop_cluster(cluster: Cluster) -> None:
    """Leave the process group this process joined (torchrun's processes leave it together)."""
    if cluster.distributed and dist.is_initialized():
        dist.destroy_process_group()
