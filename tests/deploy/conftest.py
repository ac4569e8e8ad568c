"""A tiny, briefly trained network and its data, shared by the deploy tests (built once per session)."""

import pytest
import torch
import torch.nn.functional as F

from resnets import ResNet, get_spec, save_weights
from resnets.data import make_image_folder

from deploy_helpers import CLASSES, color_batch


def _train(model: ResNet, steps: int = 25) -> ResNet:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        images, labels = color_batch(32, seed=step)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_spec():
    return get_spec("resnet20").replace(layers=(1, 1, 1), num_classes=CLASSES)


@pytest.fixture(scope="session")
def trained_tiny(tiny_spec) -> ResNet:
    torch.manual_seed(0)
    return _train(ResNet(tiny_spec))


@pytest.fixture(scope="session")
def trained_bottleneck() -> ResNet:
    torch.manual_seed(0)
    spec = get_spec("resnet50").replace(layers=(1, 1), widths=(8, 16), stem="cifar", stem_width=16,
                                        num_classes=CLASSES)
    return _train(ResNet(spec), steps=5)  # pruning tests need varied BN scales, not accuracy


@pytest.fixture()
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return color_batch(64, seed=1234)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, trained_tiny):
    root = tmp_path_factory.mktemp("deploy_cli")
    data = make_image_folder(root / "data", classes=4, per_class=12, size=16)
    checkpoint = save_weights(trained_tiny, root / "tiny.safetensors",
                              {"model_name": "resnet20", "image_size": 16,
                               "classes": sorted(p.name for p in data.iterdir())})
    return root, data, checkpoint
