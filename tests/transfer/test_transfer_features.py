"""features_only backbones: shapes and strides for every ImageNet-style model, output_stride by
dilation, out_indices errors."""

import pytest
import torch

from resnets import create_model, get_entry, list_models

IMAGENET_STYLE = [n for n in list_models() if get_entry(n).input_size == (3, 224, 224)]


def check_levels(model, outputs, size):
    assert len(outputs) == len(model.feature_info)
    for out, info in zip(outputs, model.feature_info):
        assert out.shape[1] == info["num_chs"], info
        assert out.shape[-1] == size // info["reduction"] and out.shape[-2] == size // info["reduction"], info


def test_every_imagenet_style_model_is_covered():
    assert len(IMAGENET_STYLE) >= 20 and {"resnet18", "resnet50", "resnext101_64x4d", "wide_resnet101_2",
                                          "preact_resnet152", "resnet50d", "se_resnet101"} <= set(IMAGENET_STYLE)


@pytest.mark.parametrize("name", IMAGENET_STYLE)
def test_features_only_shapes_and_strides(name):
    # Shapes and strides are exact on the meta device (no memory, no arithmetic); the numerics of
    # the same code path are checked on real tensors below for one model of each block kind.
    with torch.device("meta"):
        model = create_model(name, features_only=True, out_indices=(0, 1, 2, 3, 4)).eval()
        outputs = model(torch.empty(2, 3, 64, 64))
    assert [i["reduction"] for i in model.feature_info] == [2, 4, 8, 16, 32]
    assert [i["module"] for i in model.feature_info] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    check_levels(model, outputs, 64)
    full = get_entry(name).spec
    assert [i["num_chs"] for i in model.feature_info[1:]] == list(full.stage_out_channels)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "preact_resnet50"])
def test_features_match_the_classifier_on_real_tensors(name):
    classifier = create_model(name).eval()
    features = create_model(name, features_only=True)
    features.load_state_dict({k: v for k, v in classifier.state_dict().items() if not k.startswith("fc.")})
    features.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outputs = features(x)
        check_levels(features, outputs, 32)
        torch.testing.assert_close(outputs[-1], classifier.forward_features(x))
    assert isinstance(outputs, list)


@pytest.mark.parametrize("output_stride,expected", [(8, [4, 8, 8, 8]), (16, [4, 8, 16, 16])])
def test_output_stride_by_dilation(output_stride, expected):
    model = create_model("resnet18", features_only=True, output_stride=output_stride).eval()
    assert [i["reduction"] for i in model.feature_info] == expected
    with torch.no_grad():
        check_levels(model, model(torch.randn(1, 3, 64, 64)), 64)
    dilations = {m.dilation for m in model.layer4.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)}
    assert max(d[0] for d in dilations) == 32 // output_stride


def test_cifar_models_give_their_own_strides():
    model = create_model("resnet20", features_only=True, out_indices=(1, 2, 3))
    assert [i["reduction"] for i in model.feature_info] == [1, 2, 4]
    assert [i["num_chs"] for i in model.feature_info] == [16, 32, 64]


def test_out_indices_out_of_range_says_which_levels_exist():
    with pytest.raises(ValueError, match=r"out_indices \(1, 5\) out of range.*levels 0\.\.4"):
        create_model("resnet18", features_only=True, out_indices=(1, 5))
    with pytest.raises(ValueError, match=r"0\.\.3"):
        create_model("resnet20", features_only=True, out_indices=(4,))
