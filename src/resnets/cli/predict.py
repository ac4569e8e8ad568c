"""`resnets predict`: top-k classes and probabilities of images under a checkpoint."""

from __future__ import annotations

import argparse
import sys

from ..jsonfile import to_json
from .args import device, image_files, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="print the top-k classes of images under a checkpoint",
        description="Classify image files, or every image under a folder, with a resnets checkpoint "
                    "(best.safetensors, last.pt or a run folder). Images are converted to RGB, resized (shorter "
                    "side to size/0.875, or size/crop_fraction when the checkpoint stores one) and centre-cropped "
                    "to the checkpoint's image size when larger, and normalised with its statistics. An unreadable "
                    "file among several is reported (an \"error\" entry with --json), the others are still "
                    "classified, and the exit status is 1.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files, or folders searched recursively for images (sorted by path)")
    p.add_argument("--top-k", type=positive_int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--device", type=device, default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..cli import UserError
    from ..data import DataError, load_eval_image
    from ..data.folder import chunks
    from ..evaluate.loading import load_for_inference

    model, classes, mean, std, image_size, crop_fraction, _ = load_for_inference(args.checkpoint, need_classes=False)
    if classes is None:  # still useful: name the outputs by index, and say how to get names
        classes = [str(i) for i in range(model.spec.num_classes)]
        print(f"note: {args.checkpoint} stores no class names, so classes are shown as output indices; to name "
              "them, save the weights with metadata {'classes': [...]} (resnets.save_weights(model, path, "
              "{'classes': names}))", file=sys.stderr)
    paths = image_files(args.images)
    device = torch.device(args.device)
    model.to(device)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    k = min(args.top_k, len(classes))
    results: dict[int, dict] = {}
    failed: list[tuple[str, str]] = []
    with torch.no_grad():
        for batch in chunks(list(enumerate(paths)), args.batch_size):
            by_shape: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
            for index, path in batch:
                try:
                    image = load_eval_image(path, image_size, crop_fraction)
                except DataError as exc:
                    failed.append((path, str(exc)))
                    results[index] = {"image": path, "error": str(exc)}
                    continue
                by_shape.setdefault(tuple(image.shape), []).append((index, image))
            for group in by_shape.values():  # images of one size share a forward (all of them, given a size)
                x = (torch.stack([image for _, image in group]).float() / 255.0 - mean_t) / std_t
                probs = torch.softmax(model(x.to(device)).float(), dim=1).cpu()
                values, indices = probs.topk(k)
                for (index, _), top_values, top_indices in zip(group, values.tolist(), indices.tolist()):
                    results[index] = {"image": paths[index],
                                      "top": [{"class": classes[i], "probability": float(v)}
                                              for v, i in zip(top_values, top_indices)]}
    if len(failed) == len(paths):
        raise UserError(failed[0][1] if len(paths) == 1 else
                        f"none of the {len(paths)} images could be read; the first: {failed[0][1]}")
    ordered = [results[index] for index in range(len(paths))]
    if args.json:
        print(to_json(ordered))
    else:
        for item in ordered:
            print(item["image"] + ": " + (f"error: {item['error']}" if "error" in item else
                                          ", ".join(f"{t['class']} {t['probability']:.3f}" for t in item["top"])))
    if failed:
        shown = "; ".join(message for _, message in failed[:3]) + ("; ..." if len(failed) > 3 else "")
        print(f"resnets predict: {len(failed)} of {len(paths)} images could not be read and were left out: {shown}",
              file=sys.stderr)
        return 1
    return 0
