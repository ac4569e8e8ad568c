"""The distributed process context on a real 2-rank gloo group (spawned processes): reductions, the stop
agreement (a non-finite loss on rank 1 only stops both ranks), buffer broadcast, BatchNorm over the global
batch (forward, gradients, running statistics equal one process with the whole batch), and the check that
the run folder is shared."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

WORLD = 2
TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_collectives(process, rank: int) -> None:
    assert process.world_size == WORLD and process.rank == rank and process.is_main == (rank == 0)
    assert process.any_true(rank == 1) is True  # one rank's flag stops everyone
    assert process.any_true(False) is False
    assert process.reduce_sum(torch.tensor([rank + 1.0], dtype=torch.float64)).item() == 3.0
    assert process.reduce_sum(torch.tensor(rank + 1)).item() == 3  # 0-dim int, as the confusion sums
    assert process.broadcast_int(100 + rank) == 100
    module = torch.nn.BatchNorm2d(3)
    module.running_mean.fill_(float(rank))
    process.sync_buffers(module)
    assert torch.equal(module.running_mean, torch.zeros(3))


def _check_batchnorm(rank: int) -> None:
    from resnets.train.distributed import DistributedBatchNorm2d, convert_batchnorm

    generator = torch.Generator().manual_seed(1)
    full = torch.randn(8, 4, 5, 5, generator=generator) * 3 + 2
    upstream = torch.randn(8, 4, 5, 5, generator=generator)
    reference = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        reference.weight.copy_(torch.rand(4, generator=generator) + 0.5)
        reference.bias.copy_(torch.randn(4, generator=generator))
    converted = convert_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(4)), "cpu")[0]
    assert isinstance(converted, DistributedBatchNorm2d)
    converted.load_state_dict(reference.state_dict())

    x_full = full.clone().requires_grad_()
    (reference(x_full) * upstream).sum().backward()
    mine = slice(rank * 4, rank * 4 + 4)
    x_mine = full[mine].clone().requires_grad_()
    out = converted(x_mine)
    (out * upstream[mine]).sum().backward()
    expected = torch.nn.functional.batch_norm(full, None, None, reference.weight.detach(), reference.bias.detach(),
                                              True)[mine]
    torch.testing.assert_close(out.detach(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_mine.grad, x_full.grad[mine], atol=1e-5, rtol=1e-5)
    # parameter gradients are per-rank parts; DDP sums (averages) them: the sum must equal the full one
    weight_grad = converted.weight.grad.clone()
    torch.distributed.all_reduce(weight_grad)
    torch.testing.assert_close(weight_grad, reference.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(converted.running_mean, reference.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(converted.running_var, reference.running_var, atol=1e-6, rtol=1e-5)


def _check_stop_agreement(process, rank: int, tmp: Path) -> None:
    from resnets.data import DataSplits, TensorImageDataset, make_tensor_dataset
    from resnets.train import NonFiniteLossError, resolve_config
    from resnets.train.trainer import Trainer

    images, labels = make_tensor_dataset(classes=3, per_class=8, size=8)
    dataset = TensorImageDataset(images, labels, ["a", "b", "c"], name="s")
    splits = DataSplits(dataset, None, ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3, 8, True)

    def loss_fn(trainer, batch, targets):
        logits = trainer.forward_model(batch)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        if trainer.process.rank == 1 and trainer.step == 2:  # only rank 1 sees a NaN, at its third step
            loss = loss * float("nan")
        return loss, logits

    config = resolve_config(None, {"model": "resnet20", "steps": 6, "batch_size": 4, "augment": {},
                                   "progress": False, "tensorboard": False})
    trainer = Trainer(config, tmp / "nan-run", splits=splits, loss_fn=loss_fn, process=process)
    try:
        trainer.fit()
    except NonFiniteLossError as exc:
        assert "by step 3" in str(exc), str(exc)
    else:
        raise AssertionError(f"rank {rank} kept training after rank 1's loss became NaN")
    assert trainer.step == 3


def _check_shared_run_dir(process, rank: int, tmp: Path) -> None:
    from resnets.train import ConfigError
    from resnets.train.distributed import check_shared_run_dir

    shared = tmp / "shared"
    if rank == 0:
        shared.mkdir(exist_ok=True)
    process.barrier()
    assert check_shared_run_dir(process, shared) is False
    local = tmp / f"local{rank}"
    local.mkdir()
    if rank == 0:
        (local / "last.pt").write_bytes(b"x")
    try:
        check_shared_run_dir(process, local)
    except ConfigError as exc:
        assert "shared" in str(exc)
    else:
        raise AssertionError("ranks that see different run folders must stop")


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from resnets.train.distributed import DistributedProcess, distributed_session

    with distributed_session("cpu") as process:
        assert isinstance(process, DistributedProcess) and process.backend == "gloo"
        _check_collectives(process, rank)
        _check_batchnorm(rank)
        _check_shared_run_dir(process, rank, Path(tmp))
        _check_stop_agreement(process, rank, Path(tmp))
    assert not torch.distributed.is_initialized()


def _run_group(worker, *args) -> None:
    """Run ``worker(rank, *args)`` on WORLD spawned ranks; a rank's exception (with its traceback) or a group that
    outlives TIMEOUT_S fails the test."""
    context = mp.start_processes(worker, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):  # raises ProcessRaisedException with the rank's traceback
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the 2-rank group did not finish in {TIMEOUT_S} s")


def test_two_rank_group_collectives_batchnorm_and_stop_agreement(tmp_path):
    _run_group(_worker, _free_port(), str(tmp_path))
    # only rank 0 wrote the run folder of the stopped run
    assert (tmp_path / "nan-run" / "config.yaml").is_file()


def _peer_worker(rank: int, port: int) -> None:
    """Rank 1 fails alone and leaves; rank 0's next collectives (the DDP step, the stop flag) must end it with a
    one-line ConnectionError (what the CLI prints), not gloo's RuntimeError traceback."""
    from types import SimpleNamespace

    import pytest

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from resnets.train.distributed import distributed_session, forward_backward

    with pytest.raises(ConnectionError if rank == 0 else ValueError) as caught:
        with distributed_session("cpu") as process:
            model = process.wrap_model(torch.nn.Linear(3, 2))
            if rank == 1:
                raise ValueError("rank 1 fails alone")
            time.sleep(1)  # rank 1 has left the group
            trainer = SimpleNamespace(
                config=SimpleNamespace(accum_steps=1, precision="fp32"), device=torch.device("cpu"), process=process,
                scaler=torch.amp.GradScaler("cpu", enabled=False),
                compute_loss=lambda x, y: (torch.nn.functional.cross_entropy(model(x), y), model(x)))
            try:
                forward_backward(trainer, torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
            except ConnectionError as exc:
                assert "another process of the group is gone" in str(exc) and "\n" not in str(exc), str(exc)
            else:
                raise AssertionError("the DDP step ran without rank 1")
            process.any_true(False)
    assert not torch.distributed.is_initialized()
    if rank == 0:
        assert str(caught.value).startswith("rank 0 stopped: another process of the group is gone"), caught.value


def test_a_rank_whose_peer_failed_stops_with_a_one_line_error():
    _run_group(_peer_worker, _free_port())
