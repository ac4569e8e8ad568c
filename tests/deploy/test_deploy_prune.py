"""Structured pruning: fewer MACs, a runnable dense network, a loadable checkpoint, and the
right channels removed."""

import pytest
import torch

from resnets import model_from_checkpoint, profile, save_weights
from resnets.deploy import PruningError, prune_model
from resnets.deploy.prune import channel_scores


def test_pruned_model_has_fewer_macs_runs_and_is_a_loadable_checkpoint(trained_tiny, batch, tmp_path):
    x, _ = batch
    result = prune_model(trained_tiny, 0.5, criterion="l1")
    assert result.macs_after <= 0.5 * result.macs_before
    assert result.macs_after == profile(result.model, (3, 32, 32)).macs
    assert result.params_after < result.params_before
    spec = result.model.spec
    assert spec.block_widths == result.block_widths and len(spec.block_widths) == 3
    # residual-tied widths are untouched: every block still outputs its stage width
    assert [b.conv2.out_channels for b in result.model.blocks()] == [16, 32, 64]
    with torch.no_grad():
        out = result.model(x)
    assert out.shape == (64, 4) and torch.isfinite(out).all()
    save_weights(result.model, tmp_path / "pruned.safetensors", {"model_name": "resnet20"})
    reloaded, ckpt = model_from_checkpoint(tmp_path / "pruned.safetensors")
    reloaded.eval()
    assert ckpt.spec.block_widths == result.block_widths
    with torch.no_grad():
        assert torch.equal(reloaded(x), out)


def test_pruning_dead_channels_is_exact(trained_tiny, batch):
    """Channels whose BN scale and shift are zero contribute nothing: removing them changes no output."""
    model = type(trained_tiny)(trained_tiny.spec)
    model.load_state_dict(trained_tiny.state_dict())
    model.eval()
    for block in model.blocks():
        dead = torch.arange(block.bn1.num_features // 2)
        block.bn1.weight.data[dead] = 0
        block.bn1.bias.data[dead] = 0
    result = prune_model(model, 0.75, criterion="bn")
    assert all(w >= b.bn1.num_features // 2 for w, b in zip(result.block_widths, model.blocks()))
    x, _ = batch
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), atol=1e-5)


def test_l1_criterion_keeps_the_largest_filters(trained_tiny):
    result = prune_model(trained_tiny, 0.6, criterion="l1")
    block, pruned = trained_tiny.blocks()[0], result.model.blocks()[0]
    scores = channel_scores(block.conv1, block.bn1, "l1")
    kept = set(torch.topk(scores, pruned.conv1.out_channels).indices.tolist())
    expected = torch.stack([block.conv1.weight[i] for i in sorted(kept)])
    assert torch.equal(pruned.conv1.weight, expected)


def test_bottleneck_inner_widths_are_pruned(trained_bottleneck, batch):
    result = prune_model(trained_bottleneck, 0.6, criterion="bn")
    assert result.macs_after <= 0.6 * result.macs_before
    for block, width in zip(result.model.blocks(), result.block_widths):
        assert block.conv1.out_channels == block.conv2.in_channels == block.conv2.out_channels == width
        assert block.conv3.in_channels == width and block.conv3.out_channels == 4 * block.conv3.out_channels // 4
    with torch.no_grad():
        assert result.model(batch[0]).shape == (64, 4)


def test_bad_pruning_requests_are_clear_errors(trained_tiny):
    with pytest.raises(PruningError, match="criterion"):
        prune_model(trained_tiny, 0.5, criterion="random")
    with pytest.raises(PruningError, match="between 0 and 1"):
        prune_model(trained_tiny, 1.5)
    with pytest.raises(PruningError, match="cannot reach"):
        prune_model(trained_tiny, 0.01)
    from resnets import create_model

    with pytest.raises(PruningError, match="not supported"):
        prune_model(create_model("preact_resnet20"), 0.5)


def test_min_keep_is_a_floor_and_a_refused_target_keeps_the_train_mode(trained_tiny):
    import math

    model = type(trained_tiny)(trained_tiny.spec)
    model.load_state_dict(trained_tiny.state_dict())
    last = model.blocks()[2]  # make the 64-wide block the cheapest to prune, down to its floor
    last.bn1.weight.data.fill_(1e-3)
    last.bn1.weight.data[0] = 1.0
    result = prune_model(model.eval(), 0.7, criterion="bn", min_keep=0.3, input_size=(3, 16, 16))
    widths = [b.conv1.out_channels for b in model.blocks()]
    assert all(w >= math.ceil(0.3 * full) for w, full in zip(result.block_widths, widths)), result.block_widths
    model.train()
    with pytest.raises(PruningError, match="cannot reach"):
        prune_model(model, 0.01)
    assert model.training


def test_a_bf16_model_is_profiled_and_pruned_in_bf16(trained_tiny, batch):
    # Regression: profile fed fp32 zeros to any model (a bf16 one raised a dtype error) and the pruned copy
    # came back in fp32 whatever the original's precision.
    model = type(trained_tiny)(trained_tiny.spec)
    model.load_state_dict(trained_tiny.state_dict())
    model = model.to(torch.bfloat16)
    assert profile(model, (3, 32, 32)).macs == profile(trained_tiny, (3, 32, 32)).macs
    result = prune_model(model, 0.5)
    assert next(result.model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert result.model.eval()(batch[0][:4].to(torch.bfloat16)).shape == (4, 4)
