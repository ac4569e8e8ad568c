"""Where this process stands among the training processes, as a small object the trainer asks.

The trainer never calls ``torch.distributed`` itself: it asks a ``ProcessContext`` whether it is the
main process (only rank 0 writes files), to reduce its metric sums, and to agree on stopping (a
non-finite loss or an exhausted time budget on any rank stops every rank). ``SingleProcess`` is the
plain case; a distributed context (``train/distributed.py``) overrides these few methods and
``wrap_model`` (DistributedDataParallel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ProcessContext", "SingleProcess"]


@dataclass
class ProcessContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, metrics and logs."""
        return self.rank == 0

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor of metric sums over processes (single process: unchanged)."""
        return values

    def any_true(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any (the stop decision)."""
        return bool(flag)

    def broadcast_int(self, value: int) -> int:
        """Rank 0's value on every process (e.g. the step count a time budget chose)."""
        return int(value)

    def configure(self, config):
        """The config as this process runs it: ``world_size`` recorded (the global batch and the
        learning-rate scaling follow it); the distributed context also picks the local GPU."""
        return config if config.world_size == self.world_size else config.replace(world_size=self.world_size)

    def sync_buffers(self, module: nn.Module) -> None:
        """Make ``module``'s buffers (BatchNorm statistics) rank 0's, so every rank evaluates the same."""
        return None

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The module the training step calls (DDP wraps here); checkpoints keep the bare model."""
        return model

    def barrier(self) -> None:
        return None


SingleProcess = ProcessContext
