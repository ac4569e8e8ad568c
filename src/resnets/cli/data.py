"""`resnets data --data SOURCE`: inspect a dataset and prepare its cache before training."""

from __future__ import annotations

import argparse
import json

from .args import positive_int, val_split


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data", help="inspect a dataset (classes, split sizes, normalisation, unreadable files) and fill its cache",
        description="Load SOURCE the way `resnets train` would: download and verify CIFAR archives, scan an "
                    "ImageFolder tree, decode small images into the tensor cache, hold out the validation split, "
                    "and print what was found. Run it once before training to pay the decoding cost up front.")
    p.add_argument("--data", required=True,
                   help="cifar10, cifar100, an extracted cifar-10-batches-py folder, an ImageFolder tree "
                        "DIR/<class>/<image>, or a root with train/ and val/ (or test/)")
    p.add_argument("--val-split", type=val_split, default=0.1,
                   help="held-out fraction in [0, 1), or a whole count of images, when there is no validation tree "
                        "(default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation hold-out (default 0)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="target size for large images (default native/224)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default $RESNETS_CACHE or ~/.cache/resnets); training reads "
                   "$RESNETS_CACHE, so to prepare its cache elsewhere set that variable instead")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing archive")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import warnings

    from ..data import load_data
    from .args import check_output

    if args.cache_dir is not None:  # filling the cache is this command's work: a cache it cannot write is an error
        check_output(args.cache_dir, option="--cache-dir", directory=True, data=[args.data])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        splits = load_data(args.data, val_split=args.val_split, seed=args.seed, image_size=args.image_size,
                           cache_dir=args.cache_dir, download=not args.no_download)
    summary = splits.describe()
    summary["unreadable_files"] = [path for path, _ in splits.skipped]
    summary["train_per_class"] = splits.train.labels.bincount(minlength=len(splits.classes)).tolist()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for warning in caught:
        print(f"warning: {warning.message}")
    kind = "in memory (uint8 tensor cache)" if splits.in_memory else "streamed from files"
    print(f"source      {summary['source']}")
    print(f"images      {splits.image_size} px, {kind}")
    print(f"splits      train {summary['train_size']}, val {summary['val_size']}, test {summary['test_size']}")
    print(f"classes     {len(splits.classes)}: {', '.join(splits.classes[:12])}{' ...' if len(splits.classes) > 12 else ''}")
    counts = summary["train_per_class"]
    print(f"per class   train min {min(counts)}, max {max(counts)}")
    print(f"normalise   mean {tuple(splits.mean)}, std {tuple(splits.std)}")
    if splits.skipped:
        print(f"unreadable  {len(splits.skipped)} file(s) skipped")
    return 0
