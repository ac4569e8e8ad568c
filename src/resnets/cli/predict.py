"""`resnets predict`: top-k classes and probabilities of images under a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .args import device, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="print the top-k classes of images under a checkpoint",
        description="Classify image files with a resnets checkpoint (best.safetensors, last.pt or a run folder). "
                    "Images are converted to RGB, resized (shorter side to size/0.875, or size/crop_fraction when "
                    "the checkpoint stores one) and centre-cropped to the checkpoint's image size when larger, and "
                    "normalised with its statistics.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=positive_int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--device", type=device, default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_eval_image
    from ..evaluate.loading import load_for_inference

    model, classes, mean, std, image_size, crop_fraction = load_for_inference(args.checkpoint, need_classes=False)
    if classes is None:  # still useful: name the outputs by index, and say how to get names
        classes = [str(i) for i in range(model.spec.num_classes)]
        print(f"note: {args.checkpoint} stores no class names, so classes are shown as output indices; to name "
              "them, save the weights with metadata {'classes': [...]} (resnets.save_weights(model, path, "
              "{'classes': names}))", file=sys.stderr)
    device = torch.device(args.device)
    model.to(device)
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    k = min(args.top_k, len(classes))
    results = []
    with torch.no_grad():
        for path in args.images:
            image = load_eval_image(path, image_size, crop_fraction)
            x = ((image.float() / 255.0 - mean_t) / std_t)[None].to(device)
            probs = torch.softmax(model(x).float(), dim=1)[0]
            values, indices = probs.topk(k)
            results.append({"image": path, "top": [{"class": classes[i], "probability": float(v)}
                                                   for v, i in zip(values.tolist(), indices.tolist())]})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            print(Path(item["image"]).name + ": " + ", ".join(f"{t['class']} {t['probability']:.3f}"
                                                             for t in item["top"]))
    return 0
