import numpy as np
import torch
from PIL import Image

from resnets.data.synthetic import make_image_folder, make_split_folder, make_tensor_dataset


def test_image_folder_layout_and_determinism(tmp_path):
    root = make_image_folder(tmp_path / "a", classes=3, per_class=4, size=16, fmt="png", seed=7)
    again = make_image_folder(tmp_path / "b", classes=3, per_class=4, size=16, fmt="png", seed=7)
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert len(files) == 12 and {f.parts[0] for f in files} == {"class_0", "class_1", "class_2"}
    for rel in files:
        assert (root / rel).read_bytes() == (again / rel).read_bytes()
    with Image.open(root / files[0]) as image:
        assert image.size == (16, 16) and image.mode == "RGB"


def test_split_folder_has_distinct_train_and_val(tmp_path):
    root = make_split_folder(tmp_path, classes=2, train_per_class=3, val_per_class=2, size=8, fmt="jpg")
    assert len(list((root / "train").rglob("*.jpg"))) == 6
    assert len(list((root / "val").rglob("*.jpg"))) == 4
    train0 = np.asarray(Image.open(root / "train" / "class_0" / "00000.jpg"))
    val0 = np.asarray(Image.open(root / "val" / "class_0" / "00000.jpg"))
    assert not np.array_equal(train0, val0)


def test_classes_are_separable_by_a_simple_classifier():
    images, labels = make_tensor_dataset(classes=4, per_class=16, size=16, seed=0)
    test_images, test_labels = make_tensor_dataset(classes=4, per_class=16, size=16, seed=1)
    # Per-class mean colour plus spatial structure; a nearest-centroid rule on the channel means and
    # on the power spectrum (phase-invariant) should already separate the classes.
    def features(x):
        x = x.float() / 255
        spectrum = torch.fft.rfft2(x.mean(1)).abs().flatten(1)
        return torch.cat([x.mean((2, 3)) * 10, spectrum / spectrum.norm(dim=1, keepdim=True)], 1)
    train_f, test_f = features(images), features(test_images)
    centroids = torch.stack([train_f[labels == c].mean(0) for c in range(4)])
    predicted = torch.cdist(test_f, centroids).argmin(1)
    assert (predicted == test_labels).float().mean() > 0.9
    assert images.dtype == torch.uint8 and images.shape == (64, 3, 16, 16)
