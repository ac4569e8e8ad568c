"""`resnets predict`: top-k classes and probabilities of images under a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="print the top-k classes of images under a checkpoint",
        description="Classify image files with a resnets checkpoint (best.safetensors, last.pt or a run folder). "
                    "Images are converted to RGB, resized (shorter side to size/0.875, or size/crop_fraction when "
                    "the checkpoint stores one) and centre-cropped to the checkpoint's image size when larger, and "
                    "normalised with its statistics.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..cli import UserError
    from ..data import load_eval_image
    from .eval import load_for_inference

    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    model, classes, mean, std, image_size, crop_fraction = load_for_inference(args.checkpoint)
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
