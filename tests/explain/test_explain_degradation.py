"""The degradation experiment's budget parsing, subset and schedule, and its figure."""

import re

import pytest
import torch

from resnets.explain.degradation import Budget, _balanced_subset, lr_at, plot_degradation


def test_budget_parse_and_errors():
    b = Budget.parse("epochs=2.5,train_subset=all,bf16=0,adversarial=fgsm_rs,adv_eps=8/255")
    assert b.epochs == 2.5 and b.train_subset is None and b.bf16 is False and b.adv_eps == pytest.approx(8 / 255)
    with pytest.raises(ValueError, match="unknown budget key 'epoch'"):
        Budget.parse("epoch=3")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        Budget.parse("fast")
    with pytest.raises(ValueError, match="adversarial"):
        Budget.parse("adversarial=trades")


@pytest.mark.parametrize("native", [True, False])
def test_bf16_defaults_to_what_the_device_runs_natively(monkeypatch, native):
    """Emulated bf16 (a CPU without AVX-512 BF16 or AMX) trains several times slower than fp32, so the
    default follows the hardware; an explicit choice stands, and the resolved value is what a result records."""
    import resnets.precision

    monkeypatch.setattr(resnets.precision, "bf16_is_faster", lambda device="cpu": native)
    assert Budget().bf16 is None and Budget.parse("bf16=auto").bf16 is None
    assert Budget().resolved("cpu").bf16 is native
    assert Budget.parse("bf16=1").resolved("cpu").bf16 is True
    assert Budget.parse("bf16=0").resolved("cpu").bf16 is False


def test_balanced_subset_is_seeded_and_balanced():
    labels = torch.arange(10).repeat_interleave(50)
    a, b = _balanced_subset(labels, 100, 0), _balanced_subset(labels, 100, 0)
    assert torch.equal(a, b) and torch.bincount(labels[a]).tolist() == [10] * 10
    assert not torch.equal(a, _balanced_subset(labels, 100, 1))


def test_schedule_warms_up_then_decays_to_zero():
    budget = Budget(lr=0.1, warmup=0.1)
    lrs = [lr_at(s, 100, budget) for s in range(101)]
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(0.1) and lrs[-1] == 0.0
    assert lrs.index(max(lrs)) == 10


def test_plot(tmp_path):
    rows = [{"epoch": e / 4, "train_error": 0.9 - 0.1 * e, "val_error": 0.92 - 0.1 * e} for e in range(1, 5)]
    data = {"budget": {"epochs": 1, "batch_size": 64, "lr": 0.05}, "data": {"source": "x", "train": 10, "val": 5},
            "runs": {"plain20": rows, "resnet20": rows, "plain56": rows, "resnet56": rows}}
    out = plot_degradation(data, tmp_path / "d.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("text, message", [
    ("epochs=none", "epochs cannot be none; give a number"),
    ("bf16=maybe", "bf16='maybe': use 1 or 0"),
    ("channels_last=perhaps", "channels_last='perhaps': use 1 or 0"),
    ("channels_last=auto", "channels_last cannot be auto"),
    ("epochs=x", "epochs='x' is not a number; write e.g. epochs=3"),
    ("batch_size=x", "batch_size='x' is not a whole number; write e.g. batch_size=128"),
    ("train_subset=0", "train_subset=0: needs a whole number >= 1 or 'all'"),
    ("log_points=0", "log_points=0: needs a whole number >= 1"),
])
def test_budget_values_are_checked_per_key(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Budget.parse(text)


def test_budget_booleans_read_both_ways():
    assert Budget.parse("channels_last=off,bf16=yes").channels_last is False
    assert Budget.parse("channels_last=on,bf16=no").bf16 is False


def test_the_final_training_error_never_rests_on_the_few_leftover_batches():
    # 15 steps logged every 7: the last row covered one batch (8 images) and read "0.00% training error"
    from resnets import create_model
    from resnets.explain.degradation import DegradationResult, train_classifier

    torch.manual_seed(0)
    images, labels = torch.rand(120, 3, 8, 8), torch.randint(0, 3, (120,))

    class Batches(list):
        def set_epoch(self, epoch):  # what train_classifier calls on a resnets loader
            pass

    batches = Batches((images[i:i + 8], labels[i:i + 8]) for i in range(0, 120, 8))
    model = create_model("resnet20", num_classes=3, layers=(1, 1, 1))
    history = train_classifier(model, batches, None, Budget(epochs=1, batch_size=8, log_points=2, bf16=False))
    assert [row["step"] for row in history] == [7, 15] and [row["images"] for row in history] == [56, 64]
    # a history logged the old way (a 1-batch last window) is merged by steps when summarised
    old = [{"step": 7, "train_error": 0.5, "val_error": None, "seconds": 1.0},
           {"step": 14, "train_error": 0.4, "val_error": None, "seconds": 2.0},
           {"step": 15, "train_error": 0.0, "val_error": 0.3, "seconds": 2.1}]
    assert DegradationResult({}, {"net": old}).final()["net"]["train_error"] == pytest.approx(0.4 * 7 / 8)
