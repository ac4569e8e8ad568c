"""Helpers the deploy tests import by name. They live here, not in conftest.py: ``from conftest import ...``
resolves to whichever folder's conftest pytest imported first, which depends on what a run collects."""

import torch

from resnets.cli import main

CLASSES = 4
SIZE = 16


def color_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is the colour of a bright square: learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    images = torch.randn(n, 3, SIZE, SIZE, generator=g) * 0.5
    palette = torch.tensor([[2.0, -1, -1], [-1, 2.0, -1], [-1, -1, 2.0], [1.5, 1.5, -1]])
    for i, y in enumerate(labels.tolist()):
        r, c = torch.randint(0, SIZE - 8, (2,), generator=g).tolist()
        images[i, :, r:r + 8, c:c + 8] += palette[y].view(3, 1, 1)
    return images, labels



def cli_error(capsys, argv) -> str:
    """Run the CLI expecting a usage error (exit 2); its stderr."""
    assert main(argv) == 2
    return capsys.readouterr().err
