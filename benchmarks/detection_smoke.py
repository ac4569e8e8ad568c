"""Detection smoke run: torchvision's Faster R-CNN on a resnets ResNet-18 FPN backbone, trained for a
few hundred steps on generated images (coloured rectangles and ellipses on noise), showing the loss
falling and boxes predicted on held-out images. Also times a training step against the same
detector on torchvision's own ResNet-18 FPN backbone.

    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/detection_smoke.py --steps 400 --threads 1

Writes docs/figures/transfer_detection_smoke.{png,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from resnets.detection import faster_rcnn

CLASSES = ["background", "rectangle", "ellipse"]
COLOURS = np.array([[230, 60, 50], [40, 180, 80], [60, 90, 230], [240, 200, 40], [200, 60, 220]], dtype=np.float32)


def make_image(rng: np.random.Generator, size: int) -> tuple[torch.Tensor, dict]:
    """Noise background with 1-3 non-overlapping shapes; labels 1 (rectangle) and 2 (ellipse)."""
    image = rng.uniform(0, 140, size=(size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            w, h = rng.integers(size // 8, size // 2, size=2)
            x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
            box = [x0, y0, x0 + w, y0 + h]
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                break
        else:
            continue
        kind = int(rng.integers(1, 3))
        colour = COLOURS[rng.integers(0, len(COLOURS))]
        if kind == 1:
            mask = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        else:
            cx, cy = x0 + w / 2, y0 + h / 2
            mask = ((xx + 0.5 - cx) / (w / 2)) ** 2 + ((yy + 0.5 - cy) / (h / 2)) ** 2 <= 1
        image[mask] = colour
        boxes.append(box)
        labels.append(kind)
    tensor = torch.from_numpy(image / 255).permute(2, 0, 1).contiguous()
    return tensor, {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def dataset(n: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    return [make_image(rng, size) for _ in range(n)]


def detector_kwargs(size: int) -> dict:
    return {"min_size": size, "max_size": size, "box_batch_size_per_image": 64, "rpn_batch_size_per_image": 128,
            "anchor_sizes": (16, 32, 64, 128, 256)}


def torchvision_peer(size: int):
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    kwargs = detector_kwargs(size)
    sizes = kwargs.pop("anchor_sizes")
    anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   norm_layer=torch.nn.BatchNorm2d)
    return FasterRCNN(backbone, num_classes=len(CLASSES), rpn_anchor_generator=anchors, **kwargs)


def step_times(model, data, batch_size: int, steps: int, device) -> list[float]:
    model.to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    times = []
    for i in range(steps):
        batch = [data[(i * batch_size + j) % len(data)] for j in range(batch_size)]
        images = [im.to(device) for im, _ in batch]
        targets = [{k: v.to(device) for k, v in t.items()} for _, t in batch]
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def evaluate(model, data, device, score_threshold: float = 0.5) -> dict:
    """Precision and recall at IoU 0.5 (class must match) over held-out images."""
    model.eval()
    tp = fp = fn = 0
    outputs = []
    for image, target in data:
        out = model([image.to(device)])[0]
        keep = out["scores"] >= score_threshold
        boxes, labels = out["boxes"][keep].cpu(), out["labels"][keep].cpu()
        outputs.append({"boxes": boxes, "labels": labels, "scores": out["scores"][keep].cpu()})
        matched = set()
        if len(boxes) and len(target["boxes"]):
            iou = box_iou(boxes, target["boxes"])
            for i in torch.argsort(out["scores"][keep].cpu(), descending=True).tolist():
                candidates = [(iou[i, j].item(), j) for j in range(len(target["boxes"]))
                              if j not in matched and labels[i] == target["labels"][j] and iou[i, j] >= 0.5]
                if candidates:
                    matched.add(max(candidates)[1])
                    tp += 1
                else:
                    fp += 1
        else:
            fp += len(boxes)
        fn += len(target["boxes"]) - len(matched)
    return {"precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "tp": tp, "fp": fp, "fn": fn,
            "outputs": outputs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--val-images", type=int, default=40)
    p.add_argument("--timing-steps", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("docs/figures/transfer_detection_smoke"))
    p.add_argument("--max-minutes", type=float, default=None,
                   help="cap the training steps so they fit this many minutes at the timed step speed")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (1 on the shared 2-core machine: two threads stall when other jobs run)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    train, val = dataset(args.train_images, args.size, 0), dataset(args.val_images, args.size, 1)

    # Side by side: one training step of the same detector on our backbone and on torchvision's.
    ours_t = step_times(faster_rcnn("resnet18", num_classes=len(CLASSES), trainable_layers=5, norm="train",
                                    **detector_kwargs(args.size)), train, args.batch_size, args.timing_steps, device)
    peer_t = step_times(torchvision_peer(args.size), train, args.batch_size, args.timing_steps, device)
    timing = {"ours_median_s": statistics.median(ours_t[3:]), "torchvision_median_s": statistics.median(peer_t[3:])}
    timing["ratio_ours_over_torchvision"] = timing["ours_median_s"] / timing["torchvision_median_s"]
    print(json.dumps(timing), flush=True)
    if args.max_minutes is not None:
        fitting = int(args.max_minutes * 60 / timing["ours_median_s"])
        if fitting < args.steps:
            print(f"--max-minutes {args.max_minutes}: {args.steps} -> {fitting} steps", flush=True)
            args.steps = fitting

    torch.manual_seed(0)
    # Trained from scratch (no pretrained weights offline): plain BatchNorm, every layer trainable.
    model = faster_rcnn("resnet18", num_classes=len(CLASSES), trainable_layers=5, norm="train",
                        **detector_kwargs(args.size)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    warmup = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / args.steps))))
    history = []
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(train), (args.batch_size,), generator=gen).tolist()
        images = [train[i][0].to(device) for i in idx]
        targets = [{k: v.to(device) for k, v in train[i][1].items()} for i in idx]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss {loss.item()} at step {step}; lower --lr")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        sched.step()
        history.append({"step": step, "loss": loss.item(), **{k: v.item() for k, v in losses.items()}})
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)", flush=True)
    train_seconds = time.perf_counter() - start
    metrics = evaluate(model, val, device)
    first = statistics.median(h["loss"] for h in history[:20])
    last = statistics.median(h["loss"] for h in history[-20:])
    report = {"command": "python " + " ".join(sys.argv), "args": {k: str(v) for k, v in vars(args).items()},
              "loss_first20_median": first, "loss_last20_median": last, "train_seconds": train_seconds,
              "val_precision@0.5": metrics["precision"], "val_recall@0.5": metrics["recall"],
              "val_counts": {k: metrics[k] for k in ("tp", "fp", "fn")}, "step_timing": timing,
              "machine": (f"2-core CPU, AVX-512, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
                          if device.type == "cpu" else str(device)),
              "history": history}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(history, val, metrics["outputs"], args.out.with_suffix(".png"), report)
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2))
    return 0


def plot(history, val, outputs, path: Path, report) -> None:
    import matplotlib.patches as patches

    from resnets.report.figures import pyplot, save_figure

    plt = pyplot()

    fig = plt.figure(figsize=(13, 5.5))
    grid = fig.add_gridspec(2, 5)
    ax = fig.add_subplot(grid[:, :2])
    steps = [h["step"] for h in history]
    window = 15

    def smooth(values):
        return [statistics.mean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]

    ax.plot(steps, smooth([h["loss"] for h in history]), label="total", lw=2)
    for key in ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
        ax.plot(steps, smooth([h[key] for h in history]), label=key, lw=1)
    ax.set(xlabel="step", ylabel=f"training loss ({window}-step mean)", yscale="log",
           title="Faster R-CNN, resnets ResNet-18 FPN (from scratch)")
    ax.legend(fontsize=8)
    colours = {1: "cyan", 2: "yellow"}
    for k in range(min(6, len(val))):
        sub = fig.add_subplot(grid[k // 3, 2 + k % 3])
        image, target = val[k]
        sub.imshow(image.permute(1, 2, 0).numpy())
        for box in target["boxes"].tolist():
            sub.add_patch(patches.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                            ec="white", ls="--", lw=1))
        out = outputs[k]
        for box, label, score in zip(out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist()):
            sub.add_patch(patches.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                            ec=colours.get(label, "red"), lw=2))
            sub.text(box[0], box[1] - 2, f"{CLASSES[label][:4]} {score:.2f}", color=colours.get(label, "red"),
                     fontsize=7)
        sub.axis("off")
    fig.suptitle(f"held-out: precision {report['val_precision@0.5']:.2f}, recall {report['val_recall@0.5']:.2f} "
                 f"at IoU 0.5, score>=0.5 (dashed white = ground truth)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
