"""Training throughput (images/s) of resnet20 / resnet56 on CIFAR-sized input: the resnets trainer
(fp32, and bf16 autocast + channels_last) against a plain eager loop over the classic hand-written
torchvision-style CIFAR ResNet (option-A shortcuts, as in the well-known reference implementations),
fp32, NCHW, built in this script. The trainer runs fp32, fp32 + channels_last and bf16 + channels_last;
``precision: auto`` (the fast recipes) is bf16 where the CPU has AVX-512 BF16 or AMX, else fp32.

Both sides train on the same in-memory uint8 images (random pixels: throughput does not depend on
content), batch 128, SGD momentum 0.9. The resnets side runs the real ``Trainer.train_step`` over the
real loader (translate + flip augmentation on the batch, normalisation, EMA off); the plain loop
slices, normalises and flips the batch by hand. Variants are measured round-robin (so load changes on
a shared machine hit all of them alike); each round times ``--steps`` steps after warm-up, and the
median round is reported.

    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/bench_train_throughput.py --json docs/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------- the plain reference
class _ShortcutA(nn.Module):
    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class PlainBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PlainCifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                layers.append(PlainBasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------- measurement
def plain_runner(depth: int, images: torch.Tensor, labels: torch.Tensor, batch: int):
    model = PlainCifarResNet((depth - 2) // 6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    mean = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1)
    std = torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)
    state = {"i": 0}
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        start = state["i"] * batch % (images.shape[0] - batch)
        state["i"] += 1
        x = (images[start:start + batch].float() / 255 - mean) / std
        flip = torch.rand(batch, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = labels[start:start + batch]
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, sum(p.numel() for p in model.parameters())


def resnets_runner(depth: int, images: torch.Tensor, labels: torch.Tensor, batch: int, precision: str,
                   channels_last: bool):
    from resnets.data import DataSplits, TensorImageDataset
    from resnets.train import Trainer, TrainConfig

    classes = [str(i) for i in range(10)]
    dataset = TensorImageDataset(images, labels, classes, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    splits = DataSplits(dataset, None, classes, dataset.mean, dataset.std, 32, True)
    config = TrainConfig(model=f"resnet{depth}", data="memory", batch_size=batch, epochs=1000, lr=0.1,
                         augment={"translate": 2, "flip": True}, precision=precision,
                         channels_last=channels_last, progress=False, tensorboard=False)
    trainer = Trainer(config, splits=splits)
    trainer.schedule = __import__("resnets.train.optim", fromlist=["LRSchedule"]).LRSchedule("constant", 10 ** 9)
    state = {"it": None, "epoch": 0}

    def step() -> None:
        try:
            images_, labels_ = next(state["it"])
        except (StopIteration, TypeError):
            trainer.train_loader.set_epoch(state["epoch"])
            state["epoch"] += 1
            state["it"] = iter(trainer.train_loader)
            images_, labels_ = next(state["it"])
        trainer.train_step(images_, labels_)
        trainer.step += 1

    return step, sum(p.numel() for p in trainer.model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    images = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (4096,))
    results = []
    for depth in args.depths:
        runners = {}
        plain, plain_params = plain_runner(depth, images, labels, args.batch)
        runners["plain eager loop (torchvision-style, fp32, NCHW)"] = plain
        ours_fp32, params = resnets_runner(depth, images, labels, args.batch, "fp32", False)
        runners["resnets trainer fp32"] = ours_fp32
        runners["resnets trainer fp32 + channels_last"], _ = resnets_runner(depth, images, labels, args.batch, "fp32",
                                                                            True)
        runners["resnets trainer bf16 + channels_last"], _ = resnets_runner(depth, images, labels, args.batch, "bf16",
                                                                            True)
        assert params == plain_params, f"resnet{depth}: {params} vs {plain_params} parameters; not the same network"
        for run in runners.values():
            for _ in range(args.warmup):
                run()
        rates: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    run()
                rates[name].append(args.steps * args.batch / (time.perf_counter() - start))
        base = statistics.median(rates["plain eager loop (torchvision-style, fp32, NCHW)"])
        for name, values in rates.items():
            median = statistics.median(values)
            row = {"model": f"resnet{depth}", "params": params, "variant": name, "batch": args.batch,
                   "median_images_per_s": median, "rounds": values, "ratio_vs_plain": median / base}
            results.append(row)
            print(f"resnet{depth:<4} {name:<52} {median:8.0f} img/s  x{median / base:.2f}", flush=True)
    from resnets.precision import cpu_name, native_bf16

    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name(),
            "native_bf16": native_bf16("cpu"), "batch": args.batch,
            "steps_per_round": args.steps, "rounds": args.rounds, "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
