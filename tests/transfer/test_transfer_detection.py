"""FPN backbones on resnets models and torchvision's Faster/Mask R-CNN on them: levels and
channels, a training step with finite losses, inference outputs, torchvision checkpoint names."""

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from resnets import create_model
from resnets.detection import faster_rcnn, fpn_backbone, mask_rcnn
from resnets.transfer import PolicyError

SMALL = {"min_size": 128, "max_size": 128, "rpn_batch_size_per_image": 64, "box_batch_size_per_image": 32,
         "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100,
         "rpn_post_nms_top_n_test": 50}


def images_and_targets(with_masks=False):
    torch.manual_seed(0)
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    targets = []
    for boxes in ([[10, 20, 60, 90], [70, 10, 120, 50]], [[30, 30, 100, 110]]):
        t = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.arange(1, len(boxes) + 1)}
        if with_masks:
            masks = torch.zeros(len(boxes), 128, 128, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes):
                masks[i, y0:y1, x0:x1] = 1
            t["masks"] = masks
        targets.append(t)
    return images, targets


def test_fpn_levels_channels_and_strides():
    fpn = fpn_backbone("resnet18", out_channels=64).eval()
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert all(v.shape[1] == 64 for v in out.values())
    assert [v.shape[-1] for v in out.values()] == [16, 8, 4, 2, 1]
    assert fpn.strides == [4, 8, 16, 32] and fpn.out_channels == 64


def test_fpn_trainable_layers_and_frozen_norms():
    with pytest.warns(UserWarning, match="no pretrained weights"):  # random layers kept fixed: said, then done
        fpn = fpn_backbone("resnet18", trainable_layers=2, norm="frozen")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fpn.body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in fpn.body.modules())
    trainable = {n.split(".")[0] for n, p in fpn.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    assert all(p.requires_grad for p in fpn.fpn.parameters())
    everything = fpn_backbone("resnet18", trainable_layers=5, norm="train", returned_layers=(2, 4))
    assert all(p.requires_grad for p in everything.body.parameters())
    assert [i["module"] for i in everything.body.feature_info] == ["layer2", "layer4"]


def test_fpn_eval_norm_survives_train_and_accepts_a_pretrained_model():
    source = create_model("resnet20", num_classes=10)
    fpn = fpn_backbone(source, trainable_layers=4, norm="eval", returned_layers=(2, 3), out_channels=32).train()
    assert torch.equal(fpn.body.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    stats = fpn.body.layer3[0].bn1.running_mean.clone()
    fpn(torch.randn(2, 3, 32, 32))["0"].sum().backward()
    assert torch.equal(stats, fpn.body.layer3[0].bn1.running_mean)
    assert fpn.body.layer3[0].bn1.weight.grad is not None


# Mask R-CNN is Faster R-CNN plus a mask branch, so these two cover both detectors and both block kinds
# (basic: resnet18, bottleneck: resnet50) within the test-time budget.
@pytest.mark.parametrize("builder,backbone", [(faster_rcnn, "resnet18"), (mask_rcnn, "resnet50")])
def test_detector_train_step_and_inference(builder, backbone):
    masks = builder is mask_rcnn
    with pytest.warns(UserWarning, match="no pretrained weights"):
        model = builder(backbone, num_classes=3, trainable_layers=3, **SMALL)
    images, targets = images_and_targets(with_masks=masks)
    model.train()
    losses = model(images, targets)
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} | ({"loss_mask"} if masks else set())
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    frozen_before = model.backbone.body.layer1[0].conv1.weight.clone()
    head_before = model.roi_heads.box_predictor.cls_score.weight.clone()
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()
    assert torch.equal(frozen_before, model.backbone.body.layer1[0].conv1.weight)  # trainable_layers=3
    assert not torch.equal(head_before, model.roi_heads.box_predictor.cls_score.weight)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det in out:
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["labels"].shape == (n,) and det["scores"].shape == (n,)
        if n:
            assert det["labels"].min() >= 1 and det["labels"].max() <= 2
            assert (det["boxes"][:, 2:] >= det["boxes"][:, :2]).all()
        if masks:
            assert det["masks"].shape == (n, 1, 128, 128)


def test_resnet_backbone_detector_is_torchvisions_by_name_and_numbers():
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    with pytest.warns(UserWarning, match="no pretrained weights"):  # resnet_fpn_backbone's defaults, asked for
        ours = faster_rcnn("resnet18", num_classes=5, trainable_layers=3, norm="frozen", **SMALL).eval()
    theirs = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3),
                        num_classes=5, **SMALL).eval()
    a, b = ours.state_dict(), theirs.state_dict()
    assert set(a) == set(b)
    assert all(a[k].shape == b[k].shape for k in a)
    ours.load_state_dict(theirs.state_dict())
    images, _ = images_and_targets()
    with torch.no_grad():
        fa, fb = ours.backbone(images[0][None]), theirs.backbone(images[0][None])
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k])


def test_detection_errors_in_words():
    with pytest.raises(PolicyError, match=r"returned_layers \(2, 5\) out of range.*stages 1\.\.4"):
        fpn_backbone("resnet18", returned_layers=(2, 5))
    with pytest.raises(PolicyError, match="trainable_layers=7 must be between 0 and 5"):
        fpn_backbone("resnet18", trainable_layers=7)
    with pytest.raises(PolicyError, match="norm='group' is unknown"):
        fpn_backbone("resnet18", norm="group")
    with pytest.raises(PolicyError, match="2-D image network"):
        fpn_backbone("r3d_18")
    with pytest.raises(PolicyError, match="anchor_sizes has 2 entries but the pyramid has 5 levels"):
        faster_rcnn("resnet18", num_classes=2, anchor_sizes=(16, 32))
    # torchvision hands unknown keywords to its image transform, which drops them: a 3-channel net was built
    with pytest.raises(PolicyError, match=r"FasterRCNN takes no keyword 'in_chans'; in_chans is an option of the "
                                          r"backbone: build it with fpn_backbone\(NAME, in_chans=...\)"):
        faster_rcnn("resnet18", num_classes=2, in_chans=1)
    with pytest.raises(PolicyError, match="MaskRCNN takes no keyword 'bogus_option'$"):
        mask_rcnn("resnet18", num_classes=2, bogus_option=1)
    assert faster_rcnn("resnet18", num_classes=2, min_size=64, max_size=96, size_divisible=16).transform.min_size == (64,)


def test_untrained_backbones_train_everything_with_batchnorm_as_torchvisions_detectors_do():
    # frozen random stems and identity norms never learn: torchvision falls back to every layer, plain BatchNorm
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    ours = faster_rcnn("resnet50", num_classes=91)
    theirs = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    trainable = lambda model: {n for n, p in model.backbone.named_parameters() if p.requires_grad}  # noqa: E731
    assert trainable(ours) == trainable(theirs) and "body.conv1.weight" in trainable(ours)
    assert type(ours.backbone.body.bn1) is type(theirs.backbone.body.bn1) is nn.BatchNorm2d
    pretrained = fpn_backbone(create_model("resnet18"))  # a built model counts as pretrained: 3 layers, frozen
    assert {n.split(".")[0] for n, p in pretrained.body.named_parameters() if p.requires_grad} == {
        "layer2", "layer3", "layer4"}
    assert isinstance(pretrained.body.bn1, FrozenBatchNorm2d)


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5])
def test_trainable_layers_count_over_the_whole_net_with_fewer_returned_layers(layers):
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    source = create_model("resnet18")
    ours = fpn_backbone(source, trainable_layers=layers, returned_layers=(1, 2), norm="eval")
    theirs = _resnet_fpn_extractor(resnet18(), layers, returned_layers=[1, 2])
    trained = lambda body: {n for n, p in body.named_parameters() if p.requires_grad}  # noqa: E731
    assert trained(ours.body) == {n for n in trained(theirs.body) if not n.startswith(("layer3", "layer4"))}


def test_a_features_model_keeps_its_levels_and_weights_beside_a_model_are_refused():
    features = create_model("resnet18", features_only=True, out_indices=(2, 3))
    assert [i["module"] for i in fpn_backbone(features).body.feature_info] == ["layer2", "layer3"]
    with pytest.raises(PolicyError, match="would be ignored"):
        fpn_backbone(create_model("resnet18"), weights="resnet18.pth")
    with pytest.raises(PolicyError, match="returns the stem"):
        fpn_backbone(create_model("resnet18", features_only=True, out_indices=(0, 1)))
