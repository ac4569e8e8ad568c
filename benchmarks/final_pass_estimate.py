"""How well one validation batch predicts a run's final test-time-augmented pass (what ``--time-budget`` sets
aside for it): a recipe's model, untrained (the timing does not depend on the weights), on its validation split.

Prints the first three forwards of one batch, the estimate the time-budget probe makes from the first
(one forward x batches x TTA views), and the measured plain pass, TTA pass and the combined pass a run ends with:

    .venv/bin/python benchmarks/final_pass_estimate.py --recipe cifar-fast-muon --data /work/shared/data/cifar10/train
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from resnets.evaluate.tta import TTA_VIEW_COUNTS
from resnets.precision import autocast_context
from resnets.train import resolve_config
from resnets.train.trainer import Trainer


def _clock(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cifar-fast-muon")
    parser.add_argument("--data", default="/work/shared/data/cifar10/train")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    trainer = Trainer(resolve_config(args.recipe, {"data": args.data, "progress": False, "tensorboard": False}))
    tta = trainer.config.tta
    model = trainer.eval_model.eval()
    images, _ = next(iter(trainer.val_loader))
    with torch.no_grad(), autocast_context(trainer.device, trainer.config.precision):
        forwards = [_clock(lambda: model(images)) for _ in range(3)]
    batches, views = len(trainer.val_loader), TTA_VIEW_COUNTS[tta]
    print(f"{batches} batches of {images.shape[0]}; one forward: " + ", ".join(f"{s:.2f} s" for s in forwards))
    print(f"probe's estimate of the final {tta} pass: {forwards[0] * batches * views:.1f} s")
    for name, run in (("plain pass", lambda: trainer.evaluate()), (f"{tta} pass", lambda: trainer.evaluate(tta=tta)),
                      (f"{tta} + plain in one pass", lambda: trainer.evaluate_with_plain(tta))):
        print(f"{name}: {_clock(run):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
