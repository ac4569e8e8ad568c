"""resnets bench on inputs other than RGB images: video clips, grey checkpoints."""

import pytest

from resnets import create_model
from resnets.deploy import bench as bench_module


@pytest.fixture()
def small_peak(monkeypatch):
    monkeypatch.setattr(bench_module, "PEAK_SIZE", 128)  # the peak matmul is beside the point here


def test_video_nets_are_timed_in_int8(small_peak):
    """The int8 rows forced 4-D channels-last on (N, C, T, H, W) clips: "required rank 4 tensor"."""
    model = create_model("r3d_18", num_classes=3, layers=(1, 1), widths=(8, 16), stem_width=8).eval()
    rows, _ = bench_module.benchmark(model, "r3d_18", [1], ("int8",), rounds=1, baseline=False,
                                     input_size=(3, 4, 16, 16))
    assert "ours int8 fx eager" in {r.variant for r in rows}


def test_a_grey_model_is_compared_with_the_rgb_torchvision_twin(small_peak):
    """The twin is torchvision's 3-channel model: fed the grey example batch, it failed ("expected input[1, 1, 32,
    32] to have 3 channels"). It gets RGB images of the same size instead."""
    grey = create_model("resnet18", in_chans=1, num_classes=4).eval()
    rows, _ = bench_module.benchmark(grey, "resnet18", [1], ("fp32",), rounds=1, input_size=(1, 32, 32))
    by_variant = {r.variant: r for r in rows}
    assert by_variant["torchvision fp32 eager NCHW"].speedup == 1.0
    assert by_variant["ours fp32 eager NCHW"].speedup is not None


def test_compare_times_every_batch_asked_for(tmp_path, capsys):
    """--compare used only the first --batch, in a table that did not say which."""
    import json

    from resnets.cli import main

    out = tmp_path / "compare.json"
    assert main(["bench", "--compare", "resnet20", "--batch", "1,2", "--rounds", "1", "--input-size", "16",
                 "--json", str(out)]) == 0
    assert [row["batch"] for row in json.loads(out.read_text())["compare"]] == [1, 2]
    table = capsys.readouterr().out
    assert "| model | source | batch |" in table and "| resnet20 | resnets | 2 |" in table
