"""Grad-CAM and saliency: input-sized maps that find a planted discriminative patch."""

import pytest
import torch
import torch.nn.functional as F

from resnets import create_model
from resnets.evaluate.robustness import Normalized
from resnets.explain.gradcam import default_target_layer, grad_cam, save_explanation, save_gallery, saliency


pytestmark = pytest.mark.usefixtures("one_thread")


SIZE, PATCH = 24, 6


def _patch_task(n, generator):
    """Class = colour of a small patch (red or blue) at a random place on a grey noise background."""
    y = torch.randint(0, 2, (n,), generator=generator)
    x = 0.4 + 0.2 * torch.rand(n, 3, SIZE, SIZE, generator=generator)
    boxes = torch.randint(0, SIZE - PATCH + 1, (n, 2), generator=generator)
    for i in range(n):
        r, c = boxes[i].tolist()
        x[i, :, r:r + PATCH, c:c + PATCH] = 0.1
        x[i, 0 if y[i] == 0 else 2, r:r + PATCH, c:c + PATCH] = 0.95
    return x, y, boxes


@pytest.fixture(scope="module")
def patch_model():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = create_model("resnet20", num_classes=2, layers=(1, 1, 1), widths=(8, 16, 16), stem_width=8)
    model = Normalized(net, (0.5,) * 3, (0.25,) * 3)
    x, y, _ = _patch_task(256, g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(5):
        for i in range(0, 256, 32):
            loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, g


def test_gradcam_highlights_planted_patch(patch_model):
    model, g = patch_model
    x, y, boxes = _patch_task(32, g)
    cams, classes = grad_cam(model, x)
    assert cams.shape == (32, SIZE, SIZE) and cams.min() >= 0 and cams.max() <= 1
    assert (classes == y).float().mean() > 0.9, "the toy model must have learned the task"
    inside_wins = 0
    for cam, (r, c) in zip(cams, boxes.tolist()):
        mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        mask[r:r + PATCH, c:c + PATCH] = True
        inside_wins += int(cam[mask].mean() > 2 * cam[~mask].mean())
    assert inside_wins >= 26, f"Grad-CAM must focus on the patch ({inside_wins}/32 images)"


def test_saliency_concentrates_on_patch(patch_model):
    model, g = patch_model
    x, y, boxes = _patch_task(16, g)
    sal, _ = saliency(model, x, target=y)
    assert sal.shape == (16, SIZE, SIZE)
    ratios = []
    for s, (r, c) in zip(sal, boxes.tolist()):
        mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        mask[r:r + PATCH, c:c + PATCH] = True
        ratios.append((s[mask].mean() / s[~mask].mean()).item())
    assert sorted(ratios)[len(ratios) // 2] > 1.5, ratios


@pytest.mark.parametrize("name", ["resnet20", "plain20", "preact_resnet20", "resnet18"])
def test_default_layer_every_family(name):
    model = create_model(name, num_classes=3).eval()
    layer = default_target_layer(model)
    if "preact" in name:
        assert layer is model.final_relu
    else:
        assert layer is getattr(model, model.stage_names[-1])
    x = torch.rand(2, 3, 32, 32)
    cams, classes = grad_cam(model, x, target=[0, 2])
    assert cams.shape == (2, 32, 32) and classes.tolist() == [0, 2]
    assert all(p.grad is None for p in model.parameters())


def test_chosen_layer_and_errors():
    model = create_model("resnet20", num_classes=3).eval()
    cams, _ = grad_cam(model, torch.rand(1, 3, 32, 32), layer="layer2.1")
    assert cams.shape == (1, 32, 32)
    with pytest.raises(ValueError, match="no layer"):
        grad_cam(model, torch.rand(1, 3, 32, 32), layer="layer9")
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(model, torch.rand(1, 3, 32, 32), target=5)


def test_pngs_written(tmp_path, patch_model):
    model, g = patch_model
    x, _, _ = _patch_task(4, g)
    cams, cls = grad_cam(model, x)
    sal, _ = saliency(model, x)
    one = save_explanation(tmp_path / "one.png", x[0], cams[0], sal[0], title="red")
    grid = save_gallery(tmp_path / "grid.png", x, cams, [str(c) for c in cls.tolist()], columns=2)
    for p in (one, grid):
        assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 3000


def test_a_layer_followed_by_an_in_place_activation_is_explained_as_itself():
    # layer3.2.bn1 is followed by ReLU(inplace=True): the captured map became relu(bn1)
    import torch.nn.functional as F

    from resnets import create_model
    from resnets.explain.gradcam import grad_cam

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()  # a bn1 output with negative values, which relu would clip
    x = torch.rand(2, 3, 32, 32)
    cams, classes = grad_cam(model, x, layer="layer3.2.bn1")
    # the reference: the same map computed on a copy whose ReLUs are not in place
    import copy

    reference = copy.deepcopy(model)
    for m in reference.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    captured = {}
    reference.layer3[2].bn1.register_forward_hook(lambda mod, i, o: captured.setdefault("act", o))
    x_ref = x.clone().requires_grad_(True)
    score = reference(x_ref).gather(1, classes[:, None]).sum()
    (grad,) = torch.autograd.grad(score, captured["act"])
    cam = F.relu((grad.mean((2, 3), keepdim=True) * captured["act"].detach()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    torch.testing.assert_close(cams, (cam - low) / (high - low).clamp_min(1e-12), atol=1e-5, rtol=0)
