"""Worked example: fine-tune a CIFAR-10-trained ResNet-20 onto 50 images per class of Imagenette
(resized to 32 px) and compare with the same network trained from scratch on the same data and
budget, plus a linear probe. Reads the shared data; never run by the tests.

    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/finetune_vs_scratch.py \
        --pretrain-epochs 7 --pretrain-only --threads 1
    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/finetune_vs_scratch.py \
        --source runs/transfer/cifar10_source_e7/best.safetensors --epochs 20 --seeds 0 1 2 3 4 --threads 1

Phase 1 trains the source network on CIFAR-10 (45k/5k split) unless ``--source`` names a
checkpoint; phase 2 runs each method once per seed and writes
``docs/figures/transfer_finetune_vs_scratch.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from resnets import create_model
from resnets.transfer import FinetuneConfig, LoopConfig, apply_finetune_policy, linear_probe, load_source, run_finetune

DATA = Path("/work/shared/data")
CACHE = Path("/tmp/resnets-transfer-cache")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def load_folder(root: Path, size: int, per_class: dict[str, list[str]] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every image of an ImageFolder tree (or the listed files per class) as uint8 N x 3 x size x size."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        files = per_class[name] if per_class is not None else sorted(p.name for p in (root / name).iterdir())
        for f in files:
            img = Image.open(root / name / f).convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BICUBIC)
            images.append(np.asarray(img))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels), classes


def cached(name: str, make):
    path = CACHE / f"{name}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    value = make()
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return ((x.float() / 255) - mean) / std


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0) -> "Batches":
    return Batches(x, y, batch_size, shuffle, seed)


class Batches:
    """Whole-tensor batching, reshuffled each pass (no per-image Python in the loop)."""

    def __init__(self, x, y, batch_size, shuffle, seed):
        self.x, self.y, self.bs, self.shuffle = x, y, batch_size, shuffle
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self):
        return (len(self.x) + self.bs - 1) // self.bs

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self.gen) if self.shuffle else torch.arange(len(self.x))
        for i in range(0, len(order), self.bs):
            idx = order[i:i + self.bs]
            yield self.x[idx], self.y[idx]


def crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Batch augmentation: random translation by up to ``pad`` pixels (reflect) and horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    dx, dy = random.randint(0, 2 * pad), random.randint(0, 2 * pad)
    out = padded[:, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(n, device=x.device) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


def pretrain(args) -> Path:
    x, y, classes = cached("cifar10_train_u8", lambda: load_folder(DATA / "cifar10/train", 32))
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=g)
    train_idx, val_idx = order[:45000], order[45000:]
    xt, yt = normalise(x[train_idx]), y[train_idx]
    xv, yv = normalise(x[val_idx]), y[val_idx]
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    groups = apply_finetune_policy(model, FinetuneConfig(lr=0.2, weight_decay=5e-4))
    out = Path(args.runs) / f"cifar10_source_e{args.pretrain_epochs}"
    loop = LoopConfig(epochs=args.pretrain_epochs, warmup_epochs=0.2, amp=True, channels_last=True,
                      label_smoothing=0.1, device=args.device)
    run_finetune(model, groups, batches(xt, yt, 256, True), loop, val_batches=batches(xv, yv, 1000, False),
                 augment=crop_flip, out_dir=out,
                 metadata={"classes": classes, "mean": CIFAR_MEAN, "std": CIFAR_STD, "data": "cifar10 45k/5k"})
    return out / "best.safetensors"


def imagenette_split(per_class: int, val_per_class: int, size: int):
    root = DATA / "imagenette/train"
    rng = random.Random(1234)
    train_files, val_files = {}, {}
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        files = sorted(p.name for p in (root / cls).iterdir())
        rng.shuffle(files)
        train_files[cls], val_files[cls] = files[:per_class], files[per_class:per_class + val_per_class]
    key = f"imagenette_{per_class}_{val_per_class}_{size}"
    xt, yt, classes = cached(key + "_train", lambda: load_folder(root, size, train_files))
    xv, yv, _ = cached(key + "_val", lambda: load_folder(root, size, val_files))
    return normalise(xt), yt, normalise(xv), yv, classes


def run_method(method: str, seed: int, source: Path, data, args) -> dict:
    xt, yt, xv, yv, classes = data
    random.seed(seed)
    torch.manual_seed(seed)
    train, val = batches(xt, yt, args.batch_size, True, seed), batches(xv, yv, 500, False)
    start = time.perf_counter()
    if method == "scratch":
        model = create_model("resnet20", num_classes=len(classes))
        config = FinetuneConfig(lr=args.lr, weight_decay=5e-4)
    else:
        model, _ = load_source(source)
        config = FinetuneConfig(num_classes=len(classes), lr=args.lr, weight_decay=5e-4)
    if method == "probe":
        result = linear_probe(model, batches(xt, yt, 500, False), len(classes), val_batches=val,
                              weight_decay=args.probe_wd, device=args.device)
        return {"method": method, "seed": seed, "val_acc": result.val_accuracy, "curve": [],
                "seconds": time.perf_counter() - start}
    groups = apply_finetune_policy(model, config)
    loop = LoopConfig(epochs=args.epochs, warmup_epochs=1, amp=True, channels_last=True, device=args.device)
    hist = run_finetune(model, groups, train, loop, val_batches=val, augment=crop_flip, log=None)
    curve = [e["val_acc"] for e in hist.epochs]
    print(f"{method:8s} seed {seed}: final val {curve[-1]:.4f} best {max(curve):.4f} "
          f"({time.perf_counter() - start:.0f}s)", flush=True)
    return {"method": method, "seed": seed, "val_acc": curve[-1], "best_val_acc": max(curve), "curve": curve,
            "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, help="a CIFAR-10 resnet20 checkpoint (default: train one first)")
    p.add_argument("--pretrain-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--probe-wd", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", default="runs/transfer")
    p.add_argument("--out", type=Path, default=Path("docs/figures/transfer_finetune_vs_scratch"))
    p.add_argument("--pretrain-only", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (1 on the shared 2-core machine: two threads stall when other jobs run)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    source = args.source or pretrain(args)
    if args.pretrain_only:
        return 0
    data = imagenette_split(args.per_class, args.val_per_class, args.size)
    results = [run_method(m, s, source, data, args) for s in args.seeds for m in ("finetune", "scratch", "probe")]
    summary = summarise(results)
    report = {"command": " ".join(sys.argv), "source": str(source), "args": {k: str(v) for k, v in vars(args).items()},
              "summary": summary, "runs": results,
              "machine": f"2-core CPU, AVX-512, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(results, summary, args.out.with_suffix(".png"), args)
    print(json.dumps(summary, indent=2))
    return 0


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarise(results: list[dict]) -> dict:
    """Per method: final held-out accuracy over seeds (mean, sample std, median); and the per-seed
    (paired: same seed, same data order) difference fine-tune minus scratch."""
    summary = {}
    for m in ("finetune", "scratch", "probe"):
        accs = [r["val_acc"] for r in results if r["method"] == m]
        summary[m] = {"median_val_acc": statistics.median(accs), "val_accs": accs, **mean_std(accs)}
    by_seed = {(r["method"], r["seed"]): r["val_acc"] for r in results}
    diffs = [by_seed["finetune", s] - by_seed["scratch", s] for (m, s) in by_seed if m == "finetune"]
    summary["finetune_minus_scratch"] = {"per_seed": diffs, **mean_std(diffs)}
    return summary


def plot(results, summary, path: Path, args) -> None:
    from resnets.report.figures import pyplot, save_figure

    plt = pyplot()

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"finetune": "tab:blue", "scratch": "tab:orange"}
    for r in results:
        if r["curve"]:
            ax.plot(range(1, len(r["curve"]) + 1), r["curve"], color=colours[r["method"]], alpha=0.7,
                    label=r["method"] if r["seed"] == args.seeds[0] else None)
    probe = summary["probe"]["mean"]
    ax.axhline(probe, color="tab:green", ls="--", label=f"linear probe (mean {probe:.3f})")
    ax.axhline(0.1, color="grey", ls=":", lw=1, label="chance")
    ax.set(xlabel="epoch", ylabel="held-out accuracy",
           title=f"ResNet-20, Imagenette {args.per_class}/class at {args.size}px, {len(args.seeds)} seeds")
    ax.legend()
    names = ["finetune", "scratch", "probe"]
    means = [summary[n]["mean"] for n in names]
    stds = [summary[n]["std"] for n in names]
    bx.bar(names, means, yerr=stds, capsize=6, color=["tab:blue", "tab:orange", "tab:green"], alpha=0.8)
    for i, n in enumerate(names):
        bx.scatter([i] * len(summary[n]["val_accs"]), summary[n]["val_accs"], color="k", s=12, zorder=3)
        bx.text(i + 0.05, means[i] + stds[i] + 0.01, f"{means[i]:.3f} ± {stds[i]:.3f}", ha="center")
    d = summary["finetune_minus_scratch"]
    bx.set(ylabel="final held-out accuracy (mean ± std, dots = seeds)",
           ylim=(0, 1.15 * max(m + s for m, s in zip(means, stds))))
    bx.set_title(f"same data and epochs; fine-tune − scratch (paired by seed):\n"
                 f"{100 * d['mean']:+.1f} ± {100 * d['std']:.1f} points", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
