"""`resnets eval`: accuracy, per-class accuracy, confusion matrix and loss of a checkpoint on a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from ..evaluate.tta import TTA_MODES
from ..jsonfile import to_json
from ..precision import AUTO_PRECISION_HELP, PRECISION_CHOICES, resolve_precision
from .args import check_output, device, non_negative_int, positive_int



def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint: top-1/top-5, per-class accuracy, confusion matrix, loss",
        description="Evaluate a resnets checkpoint (best.safetensors, last.pt or a run folder) on a dataset. "
                    "Class folders are matched to the checkpoint's classes by name; images are normalised with "
                    "the checkpoint's statistics.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    p.add_argument("--data", required=True,
                   help="cifar10/cifar100 (official test set), a root with val/ or test/, or an ImageFolder tree")
    p.add_argument("--tta", default="none", choices=TTA_MODES,
                   help="test-time augmentation (default: none)")
    p.add_argument("--json", metavar="OUT", help="write all metrics (confusion matrix included) to this JSON file")
    p.add_argument("--confusion-png", metavar="PNG",
                   help="confusion-matrix figure (default: next to --json as <name>.confusion.png)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                   help=f"default fp32; {AUTO_PRECISION_HELP}")
    p.add_argument("--ema", action="store_true", help="for a last.pt: evaluate its EMA weights")
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--held-out", action="store_true",
                   help="score only the images the checkpoint's run held out of --data for validation (its "
                        "val_split and split seed): for a run trained on --data itself, whose other images it saw")
    p.add_argument("--include-training-images", action="store_true",
                   help="allow --data to be the folder the checkpoint was trained on (refused by default: that "
                        "accuracy counts images the model learned; --held-out scores the ones its run held out)")
    p.add_argument("--only-data-classes", action="store_true",
                   help="score among the classes --data holds only (the other outputs are masked): the protocol for a "
                        "test set that covers some of the model's classes, such as Imagenette or ImageNet-R under "
                        "ImageNet weights; without it every output competes")
    p.add_argument("--compare", metavar="CHECKPOINT",
                   help="a second checkpoint scored on the same images (its own preprocessing, the same --tta): the "
                        "difference in top-1 with its 95%% interval and an exact McNemar test, from the images on "
                        "which the two disagree")
    p.add_argument("--groups", metavar="FILE.csv",
                   help="CSV with path,group (optional label) columns: accuracy per group and the worst-group gap "
                        "(paths relative to --data; the class is the folder name unless a label column says)")
    p.set_defaults(func=run)


def _check_outputs(args: argparse.Namespace) -> str | None:
    """Refuse bad output paths before the evaluation runs; return the confusion PNG path (or None)."""
    from ..cli import UserError

    reads = [args.checkpoint, args.data, args.groups, args.compare]
    if args.json:
        check_output(args.json, reads=reads, option="--json", kind=".json", data=[args.data])
    png = args.confusion_png or (str(Path(args.json).with_suffix("")) + ".confusion.png" if args.json else None)
    if png:
        check_output(png, reads=reads, option="--confusion-png", kind=".png", data=[args.data])
        if args.json and Path(png).resolve() == Path(args.json).resolve():
            raise UserError(f"--confusion-png and --json are both {png}; give two different files")
    return png


class _Scored(NamedTuple):
    """One checkpoint evaluated on --data: the pieces the report and --groups need."""

    model: Any  # as scored: with --only-data-classes, masked to the classes --data holds
    classes: list[str]
    mean: Sequence[float]
    std: Sequence[float]
    image_size: int | None
    crop_fraction: float
    labels: Any  # the dataset's labels, in loader order
    result: Any  # EvalResult (with TTA when asked)
    plain: Any  # EvalResult without TTA from the same pass, or None
    held_out_split: Any  # (val_split, seed) of the run's hold-out under --held-out, else None


def _check_inputs(args: argparse.Namespace) -> Any:
    """Refuse, before the first model is scored, a groups file that cannot be read and a --compare checkpoint
    whose training images --data holds (both surfaced only after a whole evaluation). Returns the --compare
    checkpoint as read (None without --compare), so it is not read again to be scored."""
    from ..cli import UserError
    from ..data import DataError
    from ..evaluate.groups import GroupsFileError, read_groups
    from ..evaluate.loading import refuse_training_images
    from ..weights import CheckpointError, read_checkpoint

    try:
        if args.groups:
            read_groups(args.groups)
        compare = read_checkpoint(args.compare) if args.compare else None
        if compare is not None and not args.held_out and not args.include_training_images:
            refuse_training_images(args.data, compare, args.compare)
        return compare
    except (GroupsFileError, DataError, CheckpointError) as exc:
        raise UserError(str(exc)) from None


def _score(args: argparse.Namespace, checkpoint_path: str, device: Any, hits: list | None = None,
           checked: Any = None) -> _Scored:
    """One checkpoint scored on --data (``checked``: the checkpoint as ``_check_inputs`` read it and refused its
    training images, so neither the file nor the tree is read twice)."""
    import torch

    from ..cli import UserError
    from ..data import DataError, load_eval, make_loader
    from ..evaluate import OnlyClasses, evaluate, evaluate_with_plain
    from ..evaluate.loading import held_out_images, load_for_inference, refuse_training_images
    from ..evaluate.tta import TTA_WITH_PLAIN_VIEW
    from ..train.config import held_out_split

    model, classes, mean, std, image_size, crop_fraction, checkpoint = load_for_inference(checkpoint_path, args.ema,
                                                                                          read=checked)
    # channels-last: 1.7-1.8x faster evaluation of a CIFAR net on the 2-core CPU (docs/benchmarks.md), same results
    channels_last = model.spec.conv_type == "2d"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        if not (args.held_out or args.include_training_images or checked is not None):
            refuse_training_images(args.data, checkpoint, checkpoint_path)
        dataset = (held_out_images(args.data, checkpoint, checkpoint_path, classes, image_size, (mean, std))
                   if args.held_out else
                   load_eval(args.data, classes=classes, image_size=image_size, normalization=(mean, std)))
        loader = make_loader(dataset, batch_size=args.batch_size, train=False, device=device, workers=args.workers,
                             mean=mean, std=std, crop_fraction=crop_fraction, channels_last=channels_last)
    except DataError as exc:
        raise UserError(str(exc)) from None
    # where the TTA views include the image as is, the same pass also says what TTA adds over no TTA
    with_plain = args.tta != "none" and args.tta in TTA_WITH_PLAIN_VIEW
    scored_model = model.to(device)
    if args.only_data_classes:  # score among the classes --data has, not all the model knows
        scored_model = OnlyClasses(scored_model, sorted(set(dataset.labels.tolist())), len(classes)).to(device)
    try:
        evaluated = (evaluate_with_plain if with_plain else evaluate)(
            scored_model, loader, len(classes), classes, tta=args.tta, device=device,
            precision=resolve_precision(args.precision, device), hits=hits)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    result, plain = evaluated if with_plain else (evaluated, None)
    split = held_out_split(checkpoint.metadata["config"]) if args.held_out else None
    return _Scored(scored_model, classes, mean, std, image_size, crop_fraction, dataset.labels, result, plain, split)


def _same_images(first: _Scored, second: _Scored) -> bool:
    """Whether two evaluations saw the same images with the same classes, as far as can be told: the same
    hold-out (under --held-out), as many images, and one class of the first for each class of the second
    (class names may differ: ImageNet's categories and the WordNet-id folders of a fine-tuned model)."""
    if first.held_out_split != second.held_out_split:
        return False
    a, b = first.labels.tolist(), second.labels.tolist()
    pairs = set(zip(a, b))
    return len(a) == len(b) and len(pairs) == len(set(a)) == len(set(b))


def run(args: argparse.Namespace) -> int:
    import torch

    from ..cli import UserError
    from ..evaluate import save_confusion_png

    png = _check_outputs(args)
    compare = _check_inputs(args)
    device = torch.device(args.device)
    hits: list | None = [] if args.compare else None
    scored = _score(args, args.checkpoint, device, hits)
    model, classes, result, plain = scored.model, scored.classes, scored.result, scored.plain
    result.extra = {"checkpoint": str(args.checkpoint), "data": str(args.data)}
    if args.only_data_classes:
        present = len(set(scored.labels.tolist()))
        result.extra["only_data_classes"] = present
        print(f"scored among the {present} classes --data holds, of the model's {len(classes)}")
    print(result.summary())
    if plain is not None:
        result.extra["without_tta"] = {"top1": plain.top1, "top5": plain.top5, "loss": plain.loss}
        print(f"without TTA (same pass): top-1 {plain.top1 * 100:.2f}%  top-5 {plain.top5 * 100:.2f}%  "
              f"loss {plain.loss:.4f}; TTA adds {(result.top1 - plain.top1) * 100:+.2f} points top-1")
    if args.compare:
        from ..evaluate.compare import compare_hits

        other_hits: list = []
        other = _score(args, args.compare, device, other_hits, checked=compare)
        if not _same_images(scored, other):
            raise UserError(f"{args.checkpoint} and {args.compare} were scored on different images ("
                            f"{len(scored.labels)} and {len(other.labels)}, or other classes); a paired comparison "
                            "needs the same ones (with --held-out: two runs that held out the same split, val_split and "
                            f"seed {scored.held_out_split} and {other.held_out_split})")
        comparison = compare_hits(hits, other_hits)
        print(f"--compare {args.compare}: {other.result.summary()}")
        print(comparison.summary("checkpoint", "compare"))
        result.extra["compare"] = {"checkpoint": str(args.compare), "top1": other.result.top1,
                                   "top1_interval": other.result.top1_interval, "top5": other.result.top5,
                                   "loss": other.result.loss, **comparison.to_dict()}
    if args.groups:
        from ..evaluate.groups import GroupsFileError, evaluate_groups

        try:
            groups = evaluate_groups(model, args.groups, args.data, classes, scored.mean, scored.std,
                                     scored.image_size, args.batch_size, str(device), scored.crop_fraction,
                                     tta=args.tta, precision=resolve_precision(args.precision, device))
        except GroupsFileError as exc:
            raise UserError(str(exc)) from None
        result.extra["groups"] = {**groups.to_dict(), "file": str(args.groups)}
        print(groups.table())
    worst = sorted(((acc, name) for name, acc in result.per_class_accuracy.items() if acc is not None))[:5]
    if worst:
        print("lowest per-class accuracy: " + ", ".join(f"{name} {acc * 100:.1f}%" for acc, name in worst))
    if args.json:
        result.write_json(args.json)
        print(f"metrics: {args.json}")
    if png:
        save_confusion_png(result, png)
        print(f"confusion matrix: {png}")
    if not args.json:
        print(to_json({"top1": result.top1, "top5": result.top5, "loss": result.loss, "count": result.count},
                      indent=None))
    return 0
