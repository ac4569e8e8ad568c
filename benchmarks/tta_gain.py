"""What test-time augmentation adds to a trained checkpoint, view by view, and whether it is more than the luck
of the test set: the held-out images scored with no TTA, the flip pair, and the 6-view flip-and-translate, each
compared with no TTA image by image (exact McNemar, ``resnets.evaluate.compare``).

    .venv/bin/python benchmarks/tta_gain.py --checkpoint runs/fast/seed1/last.pt \
        --data /work/shared/data/cifar10/train --json docs/.../tta_gain.json

The images are the ones the checkpoint's run held out of ``--data`` (its val_split and split seed).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a resnets checkpoint or run folder")
    parser.add_argument("--data", required=True, help="the data the run trained on (its hold-out is scored)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from resnets.data import make_loader
    from resnets.evaluate import compare_hits, evaluate
    from resnets.evaluate.loading import held_out_images, load_for_inference

    model, classes, mean, std, image_size, crop_fraction, checkpoint = load_for_inference(args.checkpoint)
    images = held_out_images(args.data, checkpoint, args.checkpoint, classes, image_size, (mean, std))
    loader = make_loader(images, batch_size=500, train=False, mean=mean, std=std, crop_fraction=crop_fraction,
                         channels_last=True)
    model.to(memory_format=torch.channels_last)
    hits, rows = {}, {}
    for mode in ("none", "flip", "flip-translate"):
        hits[mode] = []
        result = evaluate(model, loader, len(classes), classes, tta=mode, hits=hits[mode])
        rows[mode] = {"top1": result.top1, "top1_interval": result.top1_interval, "count": result.count}
        print(f"{mode:>14}: {result.summary()}", file=sys.stderr)
    for mode in ("flip", "flip-translate"):
        paired = compare_hits(hits[mode], hits["none"])
        rows[mode]["against_none"] = paired.to_dict()
        print(f"{mode:>14}: {paired.summary(mode, 'none')}", file=sys.stderr)
    paired = compare_hits(hits["flip-translate"], hits["flip"])
    rows["flip-translate"]["against_flip"] = paired.to_dict()
    print(f"{'translate':>14}: {paired.summary('flip-translate', 'flip')}", file=sys.stderr)
    report = {"checkpoint": args.checkpoint, "data": args.data, "modes": rows,
              "command": "benchmarks/tta_gain.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    print(json.dumps({mode: row["top1"] for mode, row in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
