"""The images compression calibrates and measures on: drawn over every class, normalised as the weights expect,
and held out as the checkpoint's own run held them out."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.data import load_data
from resnets.data.stats import KNOWN_STATS
from resnets.deploy.data import checkpoint_hold_out, load_deploy_data


@pytest.fixture()
def shaded(tmp_path):
    """Class k's images are a flat grey of value 40 * (k + 1): a calibration image tells its class."""
    root = tmp_path / "shaded"
    for k in range(4):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8, 3), 40 * (k + 1), np.uint8)).save(root / f"c{k}" / f"{i:02d}.png")
    return root


STATS = {"mean": [0.5] * 3, "std": [0.25] * 3, "classes": [f"c{k}" for k in range(4)]}


def test_calibration_images_are_drawn_over_every_class(shaded, monkeypatch, tmp_path):
    # the training split is in class order: the first 8 images were all class c0's
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = load_deploy_data(str(shaded), STATS, calibration_images=8, val_split=0.2)
    images = torch.cat(data.calibration)
    shades = {round(float(v)) for v in (images[:, 0].mean((1, 2)) * 0.25 + 0.5) * 255}
    assert len(images) == 8 and len(shades) >= 3
    again = torch.cat(load_deploy_data(str(shaded), STATS, calibration_images=8, val_split=0.2).calibration)
    assert torch.equal(images, again)  # seeded


def test_a_checkpoint_without_statistics_gets_imagenets_with_a_warning(shaded, monkeypatch, tmp_path):
    # they were measured on --data instead, while resnets eval assumes ImageNet's for the same file
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="assuming ImageNet statistics"):
        data = load_deploy_data(str(shaded), {"classes": STATS["classes"]}, calibration_images=4,
                                source="tv.pth")
    assert tuple(data.splits.mean) == pytest.approx(KNOWN_STATS["imagenet"][0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuple(load_deploy_data(str(shaded), STATS, calibration_images=4).splits.mean) == (0.5,) * 3


def test_the_hold_out_is_the_checkpoints_own_unless_asked_otherwise(shaded, monkeypatch, tmp_path):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    recorded = {**STATS, "config": {"val_split": 0.3, "seed": 5, "split_seed": 7}}
    assert checkpoint_hold_out(recorded) == (0.3, 7) and checkpoint_hold_out(recorded, 0.5) == (0.5, 7)
    assert checkpoint_hold_out(STATS) == (0.1, 0)
    data = load_deploy_data(str(shaded), recorded, calibration_images=0)
    run = load_data(str(shaded), val_split=0.3, seed=7, normalization=((0.5,) * 3, (0.25,) * 3))
    assert torch.equal(data.splits.val.images, run.val.images) and len(data.splits.val) == 12
