"""BatchNorm folding is exact; optimize_for_inference keeps the outputs and reports its choice."""

import pytest
import torch
from torch import nn

from resnets import create_model
import resnets
from resnets.deploy import fold_batchnorm, make_inference_model, optimize_for_inference
from resnets.deploy.fuse import count_batchnorms


def _with_running_stats(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding has something to fold."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("name, size, overrides", [
    ("resnet20", 32, {}),
    ("resnet50", 64, {"layers": (1, 1, 1, 1), "widths": (8, 16, 16, 16)}),
    ("resnet50d", 64, {"layers": (1, 1, 1, 1), "widths": (8, 16, 16, 16)}),
])
def test_folded_equals_unfolded(name, size, overrides):
    model = _with_running_stats(create_model(name, num_classes=7, **overrides))
    folded = fold_batchnorm(model)
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
    assert count_batchnorms(folded) == 0  # the deep stem's last norm folds into the Sequential's last conv
    assert count_batchnorms(model) > 0, "folding must not modify the original"


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18"])
def test_video_nets_fold_every_norm(name):
    """3-D and (2+1)-D convolutions fold like 2-D ones (they were left unfolded, silently)."""
    model = _with_running_stats(create_model(name, num_classes=5, layers=(1, 1, 1, 1), widths=(8, 8, 16, 16)))
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert count_batchnorms(folded) == 0 < count_batchnorms(model)
    assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("name, before, after", [("preact_resnet20", 19, 10), ("preact_resnet164", 163, 55),
                                                 ("wrn_16_4", 13, 7)])
def test_preact_inner_norms_fold_and_the_first_ones_stay(name, before, after):
    # every pre-activation BatchNorm was left unfolded; those right after a convolution fold exactly
    model = _with_running_stats(create_model(name))
    folded = fold_batchnorm(model)
    assert (count_batchnorms(model), count_batchnorms(folded)) == (before, after)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        assert (folded(x) - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())


def test_inference_model_fp32_matches_and_bf16_keeps_top1(trained_tiny, batch):
    x, _ = batch
    with torch.no_grad():
        want = trained_tiny(x)
        fp32 = make_inference_model(trained_tiny, "fp32", channels_last=True)(x)
        bf16 = make_inference_model(trained_tiny, "bf16", channels_last=True)(x)
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.float32
    assert torch.allclose(fp32, want, atol=1e-4)
    assert (bf16.argmax(1) == want.argmax(1)).float().mean() >= 0.9


def test_optimize_for_inference_picks_a_safe_candidate(trained_tiny, batch):
    x, _ = batch
    best, report = optimize_for_inference(trained_tiny, precision="fp32", example_input=x[:8], repeats=1,
                                          return_report=True)
    assert len(report.candidates) == 2 and report.chosen == best.description
    assert resnets.optimize_for_inference is optimize_for_inference
    with torch.no_grad():
        assert torch.allclose(best(x), trained_tiny(x), atol=1e-4)
    with pytest.raises(ValueError, match="precision"):
        optimize_for_inference(trained_tiny, precision="fp16")


def test_folding_a_folded_conv_pool_model_again_is_a_no_op():
    model = _with_running_stats(create_model("resnet_airbench", num_classes=5, widths=(16, 32, 32)))
    folded = fold_batchnorm(model)
    again = fold_batchnorm(folded)  # e.g. optimize_for_inference on an already folded model
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-5)
        assert torch.allclose(make_inference_model(folded, "fp32", channels_last=False)(x), model(x), atol=1e-5)


def test_a_folded_model_is_not_saved_as_a_checkpoint_it_cannot_reload(tmp_path):
    folded = fold_batchnorm(create_model("resnet20", layers=(1, 1, 1)))
    with pytest.raises(resnets.CheckpointError, match="BatchNorms are folded into its convolutions"):
        resnets.save_weights(folded, tmp_path / "folded.safetensors")
    assert not (tmp_path / "folded.safetensors").exists()


def test_optimize_for_inference_leaves_the_callers_model_as_it_was(trained_tiny, batch):
    model = create_model(trained_tiny.spec)
    model.load_state_dict(trained_tiny.state_dict())
    model.train()
    model.bn1.eval()  # a frozen BatchNorm stays frozen
    optimize_for_inference(model, precision="fp32", example_input=batch[0][:4], repeats=1)
    assert model.training and not model.bn1.training and model.layer1.training


def test_deploy_tools_name_a_features_only_backbone_instead_of_failing_on_a_list():
    from resnets.deploy.export import ExportError, export_onnx

    backbone = create_model("resnet20", layers=(1, 1, 1), features_only=True)
    with pytest.raises(ExportError, match="features_only backbone returns 3 feature maps"):
        optimize_for_inference(backbone)
    with pytest.raises(ExportError, match="export takes a network with one output"):
        export_onnx(backbone, "never_written.onnx")


def test_optimize_for_inference_checks_outputs_on_more_images_than_the_default_example():
    """The default example holds 2 images, so a bf16 candidate's top-1 agreement could only be 0, 50 or 100%."""
    model = create_model("resnet20", layers=(1, 1, 1)).eval()
    _, report = optimize_for_inference(model, precision="fp32", repeats=1, return_report=True)
    assert report.checked_images >= 16 and "checked on" in str(report)
