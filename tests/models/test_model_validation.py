"""Bad options, bad inputs and look-alike checkpoints fail early, in one line that names the fix."""

import pytest
import torch

import resnets
from resnets import CheckpointError, InputError, SpecError


@pytest.mark.parametrize("name,changes,words", [
    ("resnet20", {"num_classes": 1.5}, "num_classes=1.5 must be a whole number"),
    ("resnet20", {"dropout": "0.1"}, "dropout='0.1' must be a number"),
    ("resnet20", {"residual": "false"}, "residual='false' must be true or false"),
    ("resnet20", {"layers": "333"}, "layers='333' must be a list of whole numbers"),
    ("resnet50", {"groups": 2.0}, "groups=2.0 must be a whole number"),
    ("resnet20", {"stem_width": 0}, "stem_width=0 must be at least 1"),
    ("resnet20", {"width_multiplier": 0.01}, "use a larger multiplier"),
    ("r3d_18", {"se_ratio": 1 / 16}, "2-D networks only"),
    ("resnet20", {"stem_width": 32}, "shortcut='A' pads channels"),
    ("resnext50_32x4d", {"layers": (1, 1, 1, 1), "widths": (8, 16, 16, 16)},
     "leave a bottleneck without inner channels"),  # was a ZeroDivisionError inside a block
])
def test_wrong_option_types_and_values_are_spec_errors(name, changes, words):
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)")):
        resnets.create_model(name, **changes)


def test_integer_images_are_explained():
    with pytest.raises(InputError, match="floating-point"):
        resnets.create_model("resnet20")(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_batch_of_one_in_training_with_a_1x1_last_map_is_explained():
    model = resnets.create_model("resnet18", num_classes=3).train()
    with pytest.raises(InputError, match="batch of one 32x32"):
        model(torch.randn(1, 3, 32, 32))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)  # a 2x2 last map is fine
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_input_too_small_for_the_pools_is_explained():
    model = resnets.create_model("resnet_airbench").eval()
    with pytest.raises(InputError, match="at least 9 px"):
        model(torch.randn(1, 3, 8, 8))
    assert model(torch.randn(1, 3, 9, 9)).shape == (1, 10)


@pytest.mark.parametrize("name,changes", [("resnet18", {}), ("resnet18d", {"output_stride": 16}),
                                          ("resnet20", {"shortcut": "D"}), ("resnet_airbench", {})])
def test_final_side_matches_the_network(name, changes):
    model = resnets.create_model(name, **changes).eval()
    for side in (9, 17, 33):
        with torch.no_grad():
            out = model.forward_features(torch.randn(1, 3, side, side + 1))
        assert tuple(out.shape[2:]) == (model.spec.final_side(side), model.spec.final_side(side + 1))


def test_checkpoint_of_a_look_alike_architecture_is_refused(tmp_path):
    # plain20 and resnet20 (option A shortcuts) have identical state dicts; only the stored spec tells them apart
    path = resnets.save_weights(resnets.create_model("plain20"), tmp_path / "plain20.safetensors")
    with pytest.raises(CheckpointError, match="residual=False"):
        resnets.load_weights(resnets.create_model("resnet20"), path)
    with pytest.raises(CheckpointError, match="residual=False"):
        resnets.create_model("resnet20", weights=path)
    resnets.load_weights(resnets.create_model("resnet20"), path, strict=False)  # asked for explicitly
    resnets.load_weights(resnets.create_model("plain20", drop_path_rate=0.1), path)  # training options may differ


def test_reset_classifier_takes_timm_global_pool():
    model = resnets.create_model("resnet20")
    model.reset_classifier(5, "max")
    assert isinstance(model.avgpool, torch.nn.AdaptiveMaxPool2d) and model.spec.head_pool == "max"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="choose 'avg' or 'max'"):
        model.reset_classifier(5, "")


def test_loading_names_squeeze_excitation_and_stride_differences(tmp_path):
    se = resnets.create_model("se_resnet50", num_classes=10).state_dict()
    with pytest.raises(CheckpointError, match="the checkpoint has squeeze-excitation in its blocks"):
        resnets.load_weights(resnets.create_model("resnet50", num_classes=10), se)
    # same tensors, other strides: it loaded silently and computed another function
    path = resnets.save_weights(resnets.create_model("resnet_fast"), tmp_path / "fast.safetensors")
    with pytest.raises(CheckpointError, match="stage_strides=\\(2, 2, 2\\) \\(model: \\(1, 2, 2\\)\\)"):
        resnets.create_model("resnet_fast", strides=(1, 2, 2), weights=path)
