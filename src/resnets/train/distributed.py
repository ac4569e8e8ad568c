"""Training on several processes and nodes with ``torch.distributed``, launched by ``torchrun``.

The trainer asks a ``ProcessContext`` (``train/process.py``) who it is and how to combine values;
this module supplies the distributed one, built from the environment ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``, ``TORCHELASTIC_RESTART_COUNT``):

- ``init_process_group`` with gloo on CPU, NCCL on CUDA (one GPU per local rank);
- the training forward is ``DistributedDataParallel`` (gradients averaged over ranks); with
  ``sync_bn`` the BatchNorm statistics are taken over the global batch (torch's ``SyncBatchNorm``
  on CUDA, ``DistributedBatchNorm2d`` below on CPU/gloo, where torch's refuses to run);
- metric sums are all-reduced; the stop decision (non-finite loss) is an all-reduce of a flag; a
  time budget's step count is rank 0's, broadcast; buffers are broadcast from rank 0 before
  evaluation so every rank evaluates the weights rank 0 saves;
- gradient accumulation (``accum_steps``): each process splits its batch into micro-batches and
  skips the DDP all-reduce (``no_sync``) on all but the last.

Learning rate and the global batch: ``global batch = batch_size x processes x accum_steps``; with
``lr_scaling: linear`` (default) the rate is ``lr x global batch / reference`` where the reference
is ``lr_reference_batch`` or, when unset, the recipe's own ``batch_size`` (so one process without
accumulation trains exactly as the recipe says). ``lr_scaling: none`` keeps ``lr`` as given.

``resnets train --nproc N`` runs ``torch.distributed.run`` (torchrun) in this process for the
single-node case; any other launch (several nodes, a scheduler) runs ``torchrun ... -m resnets
train ...`` itself. See ``docs/distributed.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..precision import autocast_context
from .config import ConfigError
from .process import ProcessContext

__all__ = ["DistributedBatchNorm2d", "DistributedProcess", "FaultDrill", "check_shared_run_dir",
           "convert_batchnorm", "distributed_session", "fault_drill_from_env", "forward_backward",
           "global_rank", "init_process", "job_id", "launch", "launched_by_torchrun", "namespace_to_argv",
           "own_checkpoint", "peers_lost_as_error", "restart_count", "saved_device",
           "torchrun_args"]

FAULT_DRILL_ENV = "RESNETS_FAULT_KILL"
"""``RANK:STEP``: that rank kills itself (SIGKILL) after optimizer step STEP of the first attempt
(a recovery rehearsal for ``torchrun --max-restarts``; the tests use it)."""
DEFAULT_TIMEOUT_MINUTES = 10.0
PEER_LOST_MARKS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
"""What gloo's errors say when another rank has left the group (it failed and exited, or was killed)."""


# ---------------------------------------------------------------- environment
def launched_by_torchrun() -> bool:
    """True when torchrun (or any launcher setting its variables) started this process."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def global_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun): only rank 0 reports."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def restart_count() -> int:
    """How many times torchrun restarted the worker group (0 on the first attempt)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def job_id() -> str | None:
    """The torchrun job this process belongs to (``TORCHELASTIC_RUN_ID``: a fresh id per launch with
    ``--standalone``, which ``--nproc`` uses, or the ``--rdzv-id`` given); None outside torchrun or without an id."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return run_id if run_id and run_id != "none" else None


def own_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/last.pt``, read, when a restarted group should continue it: only when this job's first attempt
    wrote it (None otherwise). A last.pt that was there before the job started is another run: the first attempt
    refused the folder, and resuming it on restart would continue someone else's run under its old settings.
    Without a job id (torchrun without ``--rdzv-id``) this cannot be told, and the checkpoint is continued."""
    from .checkpoint import load_training_checkpoint

    body = load_training_checkpoint(run_dir / "last.pt")
    current = job_id()
    return body if current is None or body.get("job_id") == current else None


def _env_int(name: str) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer; it is set by torchrun "
                          "(launch with torchrun, or unset RANK/WORLD_SIZE/LOCAL_RANK for one process)") from None


@contextlib.contextmanager
def peers_lost_as_error(rank: int) -> Iterator[None]:
    """A collective that fails because another rank is gone ends this rank with a one-line ``ConnectionError``
    (the CLI prints it) instead of gloo's traceback, which would bury the error of the rank that failed first."""
    try:
        yield
    except RuntimeError as exc:
        mark = next((mark for mark in PEER_LOST_MARKS if mark in str(exc)), None)
        if mark is None or not dist.is_initialized():
            raise
        raise ConnectionError(f"rank {rank} stopped: another process of the group is gone ({mark}); the error that "
                              "rank reported (or torchrun's report, if it was killed) is the cause") from None


# ---------------------------------------------------------------- the context
@dataclass
class DistributedProcess(ProcessContext):
    """One rank of an initialised process group; the trainer's collectives go through here."""

    backend: str = "gloo"
    sync_bn: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def configure(self, config: Any) -> Any:
        config = super().configure(config)
        self.sync_bn = bool(config.sync_bn)
        wants_cuda = torch.device(config.device).type == "cuda"
        if wants_cuda != (self.device.type == "cuda"):
            raise ConfigError(f"device={config.device} but the process group was started for {self.device.type} "
                              f"({self.backend}); start it with the run's device")
        if wants_cuda and config.device != str(self.device):
            config = config.replace(device=str(self.device))  # each local rank owns its GPU
        return config

    def _collective(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(self.device).clone()

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        out = self._collective(values)
        with peers_lost_as_error(self.rank):
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(values.device)

    def any_true(self, flag: bool) -> bool:
        out = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        with peers_lost_as_error(self.rank):
            dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return bool(out.item())

    def broadcast_int(self, value: int) -> int:
        out = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        with peers_lost_as_error(self.rank):
            dist.broadcast(out, src=0)
        return int(out.item())

    def wrap_model(self, model: nn.Module) -> nn.Module:
        if self.sync_bn:
            model = convert_batchnorm(model, self.device)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        with peers_lost_as_error(self.rank):  # DDP broadcasts rank 0's weights here
            return DistributedDataParallel(model, device_ids=device_ids)

    def sync_buffers(self, module: nn.Module) -> None:
        with peers_lost_as_error(self.rank):
            for buffer in module.buffers():
                if buffer.device == self.device:
                    dist.broadcast(buffer, src=0)
                else:
                    moved = self._collective(buffer)
                    dist.broadcast(moved, src=0)
                    buffer.copy_(moved)

    def barrier(self) -> None:
        with peers_lost_as_error(self.rank):
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def close(self, clean: bool = True) -> None:
        """Leave the group; after a clean finish wait for every rank first, so no rank tears down
        its connections while another still uses them."""
        if dist.is_initialized():
            if clean:
                self.barrier()
            dist.destroy_process_group()


def init_process(device: str = "cpu", timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> ProcessContext:
    """The context for this process: a ``DistributedProcess`` under torchrun with more than one
    rank (process group initialised: NCCL for ``device=cuda``, gloo otherwise), else one process."""
    if not launched_by_torchrun():
        return ProcessContext()
    rank, world_size, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if world_size <= 1:
        return ProcessContext(rank=0, world_size=1, local_rank=local_rank)
    use_cuda = torch.device(device).type == "cuda"
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA GPU is visible to this process; use --device cpu (gloo)")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU: this node shows {torch.cuda.device_count()}; "
                              "launch at most that many processes per node (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
        run_device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        run_device, backend = torch.device("cpu"), "gloo"
    timeout = timedelta(minutes=timeout_minutes)
    try:
        store, rank, world_size = next(dist.rendezvous("env://", rank=rank, world_size=world_size, timeout=timeout))
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's agent then keeps one TCP store across restarts: keys of a dead attempt (gloo/NCCL
            # addresses) would be read by the next one (pytorch/pytorch#135712), so each attempt gets its own
            # prefix. The restart count is the same on every rank when whole groups restart (one node, or
            # failures); TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on the agents avoids the shared store altogether.
            store = dist.PrefixStore(f"resnets/attempt{restart_count()}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - rendezvous failures come as many types
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise ConfigError(f"rank {rank} could not join the {backend} process group at {where} "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); check the rendezvous "
                          "endpoint is reachable from every node and, with several network cards, set "
                          "GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME") from None
    return DistributedProcess(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend,
                              device=run_device)


@contextlib.contextmanager
def distributed_session(device: str = "cpu") -> Iterator[ProcessContext]:
    """``init_process`` for a ``with`` block; the process group is destroyed on the way out."""
    process = init_process(device)
    clean = False
    try:
        yield process
        clean = True
    finally:
        if isinstance(process, DistributedProcess):
            process.close(clean)


def check_shared_run_dir(process: ProcessContext, run_dir: Path) -> bool:
    """Whether ``run_dir`` holds ``last.pt``, agreed by every rank (an error when ranks disagree,
    which means the run folder is not on a filesystem every node shares)."""
    has = (run_dir / "last.pt").is_file()
    if process.world_size > 1 and process.any_true(has) and process.any_true(not has):
        raise ConfigError(f"ranks disagree on whether {run_dir}/last.pt exists (rank {process.rank} "
                          f"{'sees' if has else 'does not see'} it): put the run folder on a filesystem shared by "
                          "every node (NFS, Lustre...) so every rank resumes from rank 0's checkpoint")
    return has


# ---------------------------------------------------------------- BatchNorm over the global batch
class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: every rank's output depends on every input, so the gradient
    of each input is the sum of the output gradients over ranks."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch (all ranks), on any backend.

    torch's ``SyncBatchNorm`` only runs on GPUs; this one works on gloo/CPU with differentiable
    all-reduces (two per layer: the mean, then the centred second moment, for float32 accuracy).
    Same parameters and buffers as ``BatchNorm2d`` (checkpoints are unchanged); outside a process
    group, or in eval mode, it is plain ``BatchNorm2d``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        all_reduce = _AllReduceSum.apply
        x = input.float()
        channels = self.num_features
        local = torch.cat([x.sum(dim=(0, 2, 3)),
                           x.new_full((1,), float(x.shape[0] * x.shape[2] * x.shape[3]))])
        totals = all_reduce(local)
        count = totals[channels]
        mean = totals[:channels] / count
        centred = x - mean.view(1, -1, 1, 1)
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (self.momentum if self.momentum is not None
                            else 1.0 / float(self.num_batches_tracked))
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out.to(input.dtype)


def convert_batchnorm(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """BatchNorm over the global batch: ``nn.SyncBatchNorm`` on CUDA, ``DistributedBatchNorm2d`` on CPU.

    The CPU conversion swaps the class of each ``nn.BatchNorm2d`` in place (same parameter and buffer
    objects, so an optimizer built before or after sees the same tensors). Norms that a fine-tuning policy
    keeps in inference mode (``resnets_bn_policy`` ``eval``/``frozen``) never use batch statistics and stay
    as they are. Converting twice changes nothing."""
    if torch.device(device).type == "cuda":
        return _to_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d and _uses_batch_statistics(module):
            module.__class__ = DistributedBatchNorm2d
    return model


def _uses_batch_statistics(module: nn.Module) -> bool:
    return getattr(module, "resnets_bn_policy", "train") == "train"


def _to_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` on the norms that train: it builds new modules, which would
    drop the policy attribute and forward pre-hook that keep an ``eval``/``frozen`` norm in inference mode."""
    from torch.nn.modules.batchnorm import _BatchNorm

    if isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module) if _uses_batch_statistics(module) else module
    for name, child in module.named_children():
        converted = _to_sync_batchnorm(child)
        if converted is not child:
            module.add_module(name, converted)
    return module


# ---------------------------------------------------------------- the step: micro-batches
def _ddp(module: nn.Module) -> DistributedDataParallel | None:
    module = getattr(module, "_orig_mod", module)  # torch.compile wrapper
    return module if isinstance(module, DistributedDataParallel) else None


def forward_backward(trainer: Any, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of one optimizer step's batch, in ``config.accum_steps`` micro-batches.

    Each micro-batch's loss is weighted by its share of the batch, so the accumulated gradient is
    the gradient of the whole batch's mean loss (equal to one big batch up to BatchNorm, whose
    statistics are per micro-batch). Under DDP the gradient all-reduce runs once, on the last
    micro-batch (``no_sync`` on the others). Returns (mean loss, logits of the whole batch).
    """
    with peers_lost_as_error(trainer.process.rank):  # DDP's and DistributedBatchNorm2d's collectives
        return _forward_backward(trainer, images, targets)


def _forward_backward(trainer: Any, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    config = trainer.config
    micro_steps = int(getattr(config, "accum_steps", 1) or 1)
    if micro_steps == 1:
        with autocast_context(trainer.device, config.precision):
            loss, logits = trainer.compute_loss(images, targets)
        trainer.scaler.scale(loss).backward()
        return loss, logits
    total = images.shape[0]
    if total < micro_steps:
        raise ConfigError(f"a batch of {total} cannot be split into accum_steps={micro_steps} micro-batches")
    ddp = _ddp(trainer.forward_model)
    losses, logits_parts = [], []
    pieces = zip(images.tensor_split(micro_steps), targets.tensor_split(micro_steps))
    for index, (micro_images, micro_targets) in enumerate(pieces):
        last = index == micro_steps - 1
        with (ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()):
            with autocast_context(trainer.device, config.precision):
                loss, logits = trainer.compute_loss(micro_images, micro_targets)
            share = micro_images.shape[0] / total
            trainer.scaler.scale(loss * share).backward()
        losses.append(loss.detach().float() * share)
        logits_parts.append(logits.detach())
    return torch.stack(losses).sum(), torch.cat(logits_parts)


# ---------------------------------------------------------------- fault drill
class FaultDrill:
    """Callback: kill this rank (SIGKILL, no clean-up) after optimizer step ``step`` of the first
    attempt, to rehearse ``torchrun --max-restarts`` recovery. Set ``RESNETS_FAULT_KILL=RANK:STEP``."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def __getattr__(self, name: str):  # the other Callback hooks: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_end(self, trainer: Any, step: int, loss: torch.Tensor) -> None:
        if step == self.step and trainer.process.rank == self.rank and restart_count() == 0:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def fault_drill_from_env() -> list[FaultDrill]:
    """``[FaultDrill]`` when ``RESNETS_FAULT_KILL=RANK:STEP`` is set, else ``[]``."""
    text = os.environ.get(FAULT_DRILL_ENV, "").strip()
    if not text:
        return []
    try:
        rank, step = (int(part) for part in text.split(":"))
    except ValueError:
        raise ConfigError(f"{FAULT_DRILL_ENV}={text!r} must look like RANK:STEP (e.g. 1:5)") from None
    return [FaultDrill(rank, step)]


# ---------------------------------------------------------------- single-node launcher
def namespace_to_argv(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      drop: Sequence[str] = ()) -> list[str]:
    """The command-line options that reproduce ``args`` (those differing from the defaults)."""
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in drop or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if value is None or value == action.default:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction)):
            argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def torchrun_args(nproc: int, command: Sequence[str], max_restarts: int = 0,
                  monitor_interval: float = 0.5) -> list[str]:
    """torchrun's arguments for ``nproc`` local processes running ``python -m resnets COMMAND...``."""
    return ["--standalone", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
            f"--monitor-interval={monitor_interval}", "--module", "resnets", *command]


def launch(nproc: int, command: Sequence[str], max_restarts: int = 0) -> int:
    """Run ``resnets COMMAND...`` on ``nproc`` local processes under torchrun (this process is the
    elastic agent: it restarts the group up to ``max_restarts`` times). Returns an exit status."""
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc} must be at least 1")
    if max_restarts < 0:
        raise ConfigError(f"--max-restarts {max_restarts} must be >= 0")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")  # a fresh store per attempt (see init_process)
    try:
        run(parse_args(torchrun_args(nproc, command, max_restarts)))
    except ChildFailedError as exc:
        failures = "; ".join(f"rank {rank}: exit {failure.exitcode}" for rank, failure in sorted(exc.failures.items()))
        print(f"resnets train: {nproc}-process run failed after {max_restarts} restart(s) ({failures})",
              file=sys.stderr)
        return 1
    except SignalException as exc:  # Ctrl-C or a kill: torchrun has stopped the ranks; no agent traceback
        print(f"resnets train: interrupted ({signal.Signals(exc.sigval).name}); the {nproc} processes were stopped",
              file=sys.stderr)
        return 128 + int(exc.sigval)
    return 0


def saved_device(run_dir: str | os.PathLike) -> str:
    """The device a run folder's ``config.yaml`` trains on (it picks the backend before resuming)."""
    import yaml

    try:
        values = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
        return str(values.get("device", "cpu"))
    except (OSError, yaml.YAMLError, AttributeError):
        return "cpu"
