"""Attacks on a small trained model: monotone in epsilon, inside the ball and the pixel range."""

import pytest
import torch
import torch.nn.functional as F

from resnets import create_model
from resnets.evaluate.robustness import (Normalized, adversarial_examples, fgsm, parse_epsilons, pgd,
                                         random_start, robust_accuracy)


pytestmark = pytest.mark.usefixtures("one_thread")


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _bars(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes: a horizontal or a vertical bright bar on a noisy grey background (16x16)."""
    y = torch.randint(0, 2, (n,), generator=generator)
    x = 0.35 + 0.1 * torch.rand(n, 3, 16, 16, generator=generator)
    pos = torch.randint(3, 13, (n,), generator=generator)
    for i in range(n):
        if y[i] == 0:
            x[i, :, pos[i] - 1: pos[i] + 1, 2:14] += 0.25
        else:
            x[i, :, 2:14, pos[i] - 1: pos[i] + 1] += 0.25
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = create_model("resnet20", num_classes=2, layers=(1, 1, 1), widths=(8, 16, 16), stem_width=8)
    model = Normalized(net, MEAN, STD)
    x, y = _bars(384, g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(6):
        for i in range(0, 384, 64):
            loss = F.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = _bars(64, g)
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.9, f"the toy model must learn the task first (clean accuracy {acc:.2f})"
    return model, xt, yt


@pytest.mark.parametrize("norm,epsilons", [("linf", [0, 1 / 255, 4 / 255, 16 / 255, 64 / 255]),
                                           ("l2", [0, 0.1, 0.5, 2.0, 6.0])])
def test_pgd_accuracy_falls_monotonically_with_epsilon(trained, norm, epsilons):
    model, x, y = trained
    result = robust_accuracy(model, [(x[:32], y[:32]), (x[32:], y[32:])], epsilons, method="pgd", norm=norm,
                             steps=10, restarts=1)
    acc = result.accuracy
    assert result.samples == 64
    assert all(a >= b for a, b in zip(acc, acc[1:])), f"accuracy must not rise with epsilon: {acc}"
    assert acc[0] > 0.9 and acc[-1] < 0.2, f"a large epsilon must break the model: {acc}"


def test_fgsm_weaker_than_pgd(trained):
    model, x, y = trained
    eps = [8 / 255, 16 / 255]
    fg = robust_accuracy(model, [(x, y)], eps, method="fgsm").accuracy
    pg = robust_accuracy(model, [(x, y)], eps, method="pgd", steps=10).accuracy
    assert all(p <= f + 1e-9 for p, f in zip(pg, fg)), (fg, pg)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("restarts", [1, 2])
def test_pgd_stays_in_ball_and_pixel_range(trained, norm, eps, restarts):
    model, x, y = trained
    x = x[:32].clone()
    x[:, :, :2] = 0.0  # pixels already at the edges of the valid range
    x[:, :, -2:] = 1.0
    adv = pgd(model, x, y[:32], eps, norm=norm, steps=3, restarts=restarts)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all(), size.max()
    assert (size > 0).any(), "the attack must move the images"


def test_fgsm_random_start_in_ball_and_range(trained):
    model, x, y = trained
    adv = fgsm(model, x, y, 8 / 255, rand_init=True)
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6


def test_restarts_never_weaker(trained):
    model, x, y = trained
    eps = 4 / 255
    one = robust_accuracy(model, [(x[:32], y[:32])], [eps], steps=2, restarts=1, seed=1).accuracy[0]
    three = robust_accuracy(model, [(x[:32], y[:32])], [eps], steps=2, restarts=3, seed=1).accuracy[0]
    assert three <= one


def test_adversarial_examples_restore_train_mode(trained):
    model, x, y = trained
    model.train()
    try:
        for method in ("pgd", "fgsm_rs"):
            adv = adversarial_examples(model, x[:8], y[:8], method, eps=8 / 255, steps=2)
            assert model.training
            assert (adv - x[:8]).abs().max() <= 8 / 255 + 1e-6
    finally:
        model.eval()
    with pytest.raises(ValueError, match="fgsm_rs"):
        adversarial_examples(model, x[:2], y[:2], "trades", eps=0.1)


def test_l2_random_start_inside_ball():
    x = torch.rand(64, 3, 8, 8)
    d = random_start(x, 0.5, "l2", torch.Generator().manual_seed(0))
    assert (d.flatten(1).norm(dim=1) <= 0.5 + 1e-6).all()


def test_inputs_outside_pixel_range_are_refused(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="Normalized"):
        robust_accuracy(model, [((x - 0.5) / 0.25, y)], [0.01])


def test_parse_epsilons():
    assert parse_epsilons("0, 2/255,0.1") == [0.0, 2 / 255, 0.1]
    with pytest.raises(ValueError, match="fractions"):
        parse_epsilons("eight")
    with pytest.raises(ValueError, match=">= 0"):
        parse_epsilons("-1")


def test_parse_epsilons_refuses_empty_items_and_a_forgotten_255():
    with pytest.raises(ValueError, match="empty item"):
        parse_epsilons("2/255,,3")
    with pytest.raises(ValueError, match=r"= 765/255\) is above 1.*did you mean 3/255\?"):
        parse_epsilons("2/255,3")
    assert parse_epsilons("0,1,3", norm="l2") == [0.0, 1.0, 3.0]  # L2 radii above 1 are meaningful
    assert parse_epsilons("1") == [1.0]
