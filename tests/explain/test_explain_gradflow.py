"""Gradient flow: per-block norms, branch vs shortcut, plain vs residual, and the callback."""

import json

import pytest
import torch
import torch.nn.functional as F

from resnets import create_model
from resnets.explain.gradflow import GradientFlowCallback, measure_gradient_flow, plot_gradient_flow, read_gradflow


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(n=16, classes=10):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_residual_blocks_report_branch_and_shortcut():
    model = create_model("resnet20", num_classes=10).train()
    x, y = _batch()
    flow = measure_gradient_flow(model, x, y)
    assert len(flow.blocks) == 9 and flow.blocks[0] == "layer1.0"
    assert all(v > 0 for v in flow.param_grad + flow.output_grad)
    assert all(v is not None and v > 0 for v in flow.branch_norm + flow.shortcut_norm + flow.branch_grad)
    assert all(r > 0 for r in flow.branch_ratio)
    assert all(p.grad is None for p in model.parameters()), "measurement must not leave gradients behind"


def test_plain_net_has_no_branch_and_weaker_early_gradients():
    x, y = _batch()
    torch.manual_seed(0)
    plain = measure_gradient_flow(create_model("plain56", num_classes=10).train(), x, y)
    torch.manual_seed(0)
    res = measure_gradient_flow(create_model("resnet56", num_classes=10).train(), x, y)
    assert all(v is None for v in plain.branch_norm)
    # Through 27 plain batch-normalised blocks the backward signal changes by orders of magnitude
    # between the last and the first block (it explodes at init, Yang et al. 2019); shortcuts
    # keep it within a much narrower range.
    import math
    plain_spread = abs(math.log(plain.output_grad[0] / plain.output_grad[-1]))
    res_spread = abs(math.log(res.output_grad[0] / res.output_grad[-1]))
    assert res_spread < plain_spread - 1.0, (res_spread, plain_spread)


def test_callback_records_during_training(tmp_path):
    model = create_model("resnet20", num_classes=10, layers=(1, 1, 1)).train()
    cb = GradientFlowCallback(tmp_path / "gradflow.jsonl", every=2)
    cb.attach(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _batch(8)
    for step in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        cb(model, step, loss.item())
        opt.step()
    cb.detach()
    records = read_gradflow(tmp_path / "gradflow.jsonl")
    assert [r["step"] for r in records] == [0, 2, 4]
    assert all(len(r["param_grad"]) == 3 and r["param_grad"][0] > 0 for r in records)
    assert records[0]["branch_ratio"][0] > 0
    out = plot_gradient_flow({"resnet": records}, tmp_path / "flow.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    json.dumps(records)


def test_a_diverged_step_is_written_as_valid_json():
    # gradflow.jsonl held a bare NaN for a diverging run's loss, which strict JSON readers refuse
    from resnets.explain.gradflow import GradientFlow

    flow = GradientFlow(blocks=["layer1.0"], param_grad=[float("inf")], output_grad=[1.0], branch_norm=[None],
                        shortcut_norm=[None], branch_grad=[None], shortcut_grad=[None], loss=float("nan"))
    record = json.loads(json.dumps(flow.to_dict(), allow_nan=False))
    assert record["loss"] is None and record["param_grad"] == [None] and record["output_grad"] == [1.0]


def test_the_trainer_logger_reads_fp16_scaled_gradients_unscaled_and_logs_the_loss(tmp_path):
    # under fp16 the logger ran before unscale_: every gradient norm read 65536 times too large, and loss was NaN
    from types import SimpleNamespace

    from resnets.explain.gradflow import GradientFlowLogger

    records = {}
    for name, scale in (("plain", None), ("scaled", 1024.0)):
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=10, layers=(1, 1, 1)).train()
        scaler = torch.amp.GradScaler("cpu", init_scale=scale or 1.0, enabled=scale is not None)
        trainer = SimpleNamespace(model=model, step=0, out_dir=tmp_path / name, scaler=scaler)
        logger = GradientFlowLogger(every=1)
        logger.on_train_start(trainer)
        x, y = _batch(8)
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        trainer.step_loss = loss.detach()
        logger.on_after_backward(trainer)
        logger.on_train_end(trainer, None)
        records[name], = read_gradflow(tmp_path / name / "gradflow.jsonl")
    for key in ("param_grad", "output_grad", "branch_grad"):
        assert records["scaled"][key] == pytest.approx(records["plain"][key], rel=1e-4), key
    assert records["plain"]["loss"] == pytest.approx(float(loss.detach()))
