"""`resnets robustness` (attacks and corruptions) and `resnets calibrate` (ECE, reliability diagram,
temperature scaling) for a checkpoint on a dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..jsonfile import write_json
from .args import check_output, device, positive_int

MIN_STORE_IMAGES = 50
"""Fewest validation images a temperature may be fitted on to be stored into a checkpoint: on a handful of
images the NLL minimum runs off (T = 196522 on 2 images), and a stored T changes every later prediction."""
TEMPERATURE_RANGE = (0.05, 20.0)
"""Temperatures outside this range are not calibration but a broken fit (or a broken model); never stored."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "robustness", help="accuracy under FGSM/PGD attacks (vs epsilon) and common corruptions",
        description="Evaluate a checkpoint under adversarial attacks (accuracy vs epsilon; pixel space [0, 1], "
                    "normalisation inside the model) and/or CIFAR-10-C-style corruptions at 5 severities generated "
                    "on the fly. Writes robustness_ATTACK_NORM.json (e.g. robustness_pgd_linf.json) and corruptions.json into --out (a run folder works).",
        epilog="example: resnets robustness --checkpoint runs/r20/best.safetensors --data cifar10 "
               "--eps 0,2/255,4/255,8/255 --steps 20 --corruptions all --out runs/r20")
    _common(p)
    p.add_argument("--attack", choices=("pgd", "fgsm", "none"), default="pgd")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--eps", default=None, help="comma list; fractions allowed (default linf: 0,1/255,2/255,4/255,8/255; "
                                               "l2: 0,0.25,0.5,1)")
    p.add_argument("--steps", type=positive_int, default=20, help="PGD steps (default 20)")
    p.add_argument("--restarts", type=positive_int, default=1, help="PGD random restarts (default 1)")
    p.add_argument("--corruptions", default=None, metavar="NAMES",
                   help="'all', family names (noise, blur, weather, digital) or corruption names; default none")
    p.add_argument("--baseline", help="corruptions.json of a baseline model: adds mCE relative to it")
    p.add_argument("--held-out", action="store_true",
                   help="use only the images the checkpoint's run held out of --data for validation (its val_split "
                        "and split seed): for a run trained on --data itself")
    p.add_argument("--include-training-images", action="store_true",
                   help="allow --data to be the folder the checkpoint was trained on (refused by default)")
    p.set_defaults(func=run_robustness)

    c = subparsers.add_parser(
        "calibrate", help="expected calibration error, reliability diagram and temperature scaling",
        description="Fit a temperature on the validation split (LBFGS on NLL; the split the run held out, from the "
                    "checkpoint's recorded val_split/seed, or --data's val/ tree), report ECE/NLL before and after on "
                    "the evaluation set, draw the reliability diagram, and with --store write the temperature into "
                    "the checkpoint metadata.",
        epilog="example: resnets calibrate --checkpoint runs/r20/best.safetensors --data cifar10 --store --out runs/r20")
    _common(c)
    c.add_argument("--bins", type=positive_int, default=15, help="confidence bins (default 15)")
    c.add_argument("--store", action="store_true",
                   help=f"write the fitted temperature into the checkpoint metadata (needs a fit on at least "
                        f"{MIN_STORE_IMAGES} validation images and a temperature within "
                        f"[{TEMPERATURE_RANGE[0]}, {TEMPERATURE_RANGE[1]}])")
    c.set_defaults(func=run_calibrate)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a resnets checkpoint (.safetensors/.pt) or run folder")
    p.add_argument("--data", required=True, help="cifar10, cifar100, an ImageFolder tree, or a root with train/ and val/")
    p.add_argument("--out", default=".", help="folder for the JSON/PNG results (default: current folder)")
    p.add_argument("--samples", type=positive_int, default=None, help="use only the first N evaluation images")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device, default="cpu")


def _model(args: argparse.Namespace):
    from ..cli import UserError
    from ..evaluate.robustness import pixel_model_from_checkpoint
    from ..weights import CheckpointError

    path = Path(args.checkpoint)
    if path.is_dir():  # a run folder
        for name in ("best.safetensors", "last.pt"):
            if (path / name).exists():
                path = path / name
                break
    try:
        model, ckpt = pixel_model_from_checkpoint(str(path), args.device)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    return model, ckpt, path


def _pixel_batches(dataset: Any, args: argparse.Namespace, ckpt: Any):
    """Pixels in [0, 1], cropped as `resnets eval` crops them (the checkpoint's crop_fraction, for large images)."""
    from ..data import make_loader
    from ..data.loader import EVAL_CROP_FRACTION

    crop_fraction = float(ckpt.metadata.get("crop_fraction") or EVAL_CROP_FRACTION)
    loader = make_loader(dataset, args.batch_size, train=False, device=args.device, mean=(0.0, 0.0, 0.0),
                         std=(1.0, 1.0, 1.0), workers=0, crop_fraction=crop_fraction)
    seen = 0
    for x, y in loader:
        if args.samples is not None and seen >= args.samples:
            return
        if args.samples is not None:
            x, y = x[: args.samples - seen], y[: args.samples - seen]
        seen += y.shape[0]
        yield x.clamp(0, 1), y


def _check_unnamed_outputs(ckpt: Any, checkpoint: str, classes: list[str], data: str) -> None:
    """A checkpoint without class names is matched to --data's folders by position, which only means something
    when the counts agree; else labels past its outputs count as wrong (or break cross-entropy) silently."""
    from ..cli import UserError

    outputs = ckpt.spec.num_classes if ckpt.spec is not None else None
    if not ckpt.metadata.get("classes") and outputs is not None and outputs != len(classes):
        raise UserError(f"{checkpoint} stores no class names and has {outputs} outputs, but {data} has "
                        f"{len(classes)} classes ({', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}); "
                        f"use data with its {outputs} class folders, in training order, or a checkpoint that "
                        "stores its class names")
    if not ckpt.metadata.get("classes"):  # the counts agree: say that the order is assumed, not known
        print(f"note: {checkpoint} stores no class names; {data}'s class folders are taken as its outputs in sorted "
              f"order ({', '.join(classes[:5])}{' ...' if len(classes) > 5 else ''}); save the checkpoint with "
              "metadata {'classes': [...]} to match them by name", file=sys.stderr)


def _eval_set(args: argparse.Namespace, ckpt: Any):
    from ..cli import UserError
    from ..data import DataError, load_eval
    from ..evaluate.loading import held_out_images, refuse_training_images

    meta = ckpt.metadata
    try:
        if not args.held_out and not args.include_training_images:
            refuse_training_images(args.data, ckpt, args.checkpoint)
        dataset = (held_out_images(args.data, ckpt, args.checkpoint, meta.get("classes"), meta.get("image_size"))
                   if args.held_out else load_eval(args.data, classes=meta.get("classes"),
                                                   image_size=meta.get("image_size")))
    except DataError as exc:
        raise UserError(str(exc)) from None
    _check_unnamed_outputs(ckpt, args.checkpoint, list(dataset.classes), args.data)
    return dataset


def _read_baseline(path: str) -> Any:
    """The baseline's ``CorruptionResult``, read before any work; any other file is an error saying which file
    is expected."""
    from ..cli import UserError
    from ..evaluate.corruptions import CorruptionResult

    expected = ("--baseline expects the corruptions.json that `resnets robustness --corruptions ...` wrote for the "
                "baseline model")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"baseline {path!r} does not exist; {expected}") from None
    except IsADirectoryError:
        raise UserError(f"baseline {path!r} is a folder; {expected} (e.g. {Path(path) / 'corruptions.json'})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read baseline {path!r} as JSON ({exc}); {expected}") from None
    if not isinstance(data, dict) or "clean_accuracy" not in data or not isinstance(data.get("accuracy"), dict):
        raise UserError(f"{path} is not a corruptions result (no 'clean_accuracy' and per-corruption 'accuracy'); "
                        f"{expected}")
    try:
        return CorruptionResult.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is a damaged corruptions result ({exc}); {expected}") from None


def run_robustness(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..evaluate.corruptions import corruption_accuracy, parse_corruptions
    from ..evaluate.robustness import parse_epsilons, robust_accuracy

    if args.attack == "none" and not args.corruptions:
        raise UserError("nothing to do: pass --attack pgd/fgsm and/or --corruptions NAMES")
    if args.baseline and not args.corruptions:
        raise UserError("--baseline compares corruption errors (mCE), so it needs --corruptions NAMES (e.g. "
                        "--corruptions all); without it there is nothing to compare")
    try:
        eps = parse_epsilons(args.eps or ("0,1/255,2/255,4/255,8/255" if args.norm == "linf" else "0,0.25,0.5,1"),
                             norm=args.norm)
        names = parse_corruptions(args.corruptions) if args.corruptions else []
    except ValueError as exc:
        raise UserError(f"--eps/--corruptions: {exc}") from None
    if args.corruptions and not names:  # "--corruptions ," names nothing: not a silent exit 0 with no result
        raise UserError(f"--corruptions {args.corruptions!r} names no corruption; give 'all', a family (noise, blur, "
                        "weather, digital) or corruption names, e.g. --corruptions fog,jpeg_compression")
    out = check_output(args.out, option="--out", directory=True, data=[args.data])  # a run folder is a fine --out
    if names and args.baseline and Path(args.baseline).resolve() == (out / "corruptions.json").resolve():
        raise UserError(f"--baseline {args.baseline} is the corruptions.json this run would write into --out "
                        f"{args.out}; choose another --out (or move the baseline's file)")
    baseline = _read_baseline(args.baseline) if args.baseline else None
    model, ckpt, path = _model(args)
    dataset = _eval_set(args, ckpt)
    if args.attack != "none":
        result = robust_accuracy(model, _pixel_batches(dataset, args, ckpt), eps, args.attack, args.norm,
                                 steps=args.steps, restarts=args.restarts, seed=args.seed, device=args.device)
        data = {**result.to_dict(), "checkpoint": str(path), "data": str(args.data)}
        target = write_json(out / f"robustness_{args.attack}_{args.norm}.json", data)
        print(f"{args.attack.upper()} ({args.norm}, {result.steps} steps, {result.restarts} restarts) on "
              f"{result.samples} images -> {target}")
        for e, a in zip(result.epsilons, result.accuracy):
            shown = f"{e * 255:.2f}/255" if args.norm == "linf" else f"{e:g}"
            print(f"  eps {shown:>10}: {a * 100:6.2f}%")
    if names:
        result = corruption_accuracy(model, _pixel_batches(dataset, args, ckpt), names, seed=args.seed,
                                     device=args.device)
        try:
            data = {**result.to_dict(baseline), "checkpoint": str(path), "data": str(args.data)}
        except ValueError as exc:
            raise UserError(str(exc)) from None
        target = write_json(out / "corruptions.json", data)
        print(f"corruptions on {result.samples} images (clean {result.clean_accuracy * 100:.2f}%) -> {target}")
        print(f"  {'corruption':<18}" + "".join(f"{'s' + str(s):>8}" for s in range(1, 6)))
        for name in names:
            print(f"  {name:<18}" + "".join(f"{a * 100:7.2f}%" for a in result.accuracy[name]))
        summary = f"  mean corruption error (unnormalised): {result.mean_error() * 100:.2f}%"
        if baseline:
            summary += (f"; mCE vs baseline {data['mce'] * 100:.1f}" if data["mce"] is not None
                        else "; mCE vs baseline undefined")
            if data["mce_undefined_for"]:
                summary += (f" (left out: {', '.join(data['mce_undefined_for'])}, where the baseline made no error "
                            "or lost no accuracy, so the ratio has no value; more --samples help)")
        print(summary)
    return 0


def _unfit_to_store(temperature: float, fitted_on: int) -> str | None:
    """Why a fitted temperature must not go into a checkpoint (too few images, or out of the sane range)."""
    low, high = TEMPERATURE_RANGE
    if fitted_on < MIN_STORE_IMAGES:
        return (f"it was fitted on {fitted_on} validation image(s), fewer than the {MIN_STORE_IMAGES} a stored "
                f"temperature needs (T={temperature:.4g})")
    if not low <= temperature <= high:
        return (f"the fitted temperature T={temperature:.4g} is outside [{low}, {high}], which means a broken fit "
                "(too few or unrepresentative validation images) rather than calibration")
    return None


def run_calibrate(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..data import load_data
    from ..train.config import held_out_split
    from ..evaluate.calibration import (calibration_report, collect_logits, fit_temperature, reliability_diagram,
                                        store_temperature)

    out = check_output(args.out, option="--out", directory=True, data=[args.data])  # a run folder is a fine --out
    model, ckpt, path = _model(args)
    meta = ckpt.metadata
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    val_split, seed = held_out_split(config)  # the run's own hold-out
    splits = load_data(args.data, val_split=val_split, seed=seed, classes=meta.get("classes"),
                       image_size=meta.get("image_size"))
    _check_unnamed_outputs(ckpt, args.checkpoint, list(splits.classes), args.data)
    if splits.val is None or len(splits.val) == 0:
        raise UserError(f"{args.data} gives no validation split to fit the temperature on; pass data with a val/ "
                        "tree or a checkpoint whose run held out val_split > 0")
    val_logits, val_labels = collect_logits(model, _pixel_batches(splits.val, args, ckpt), args.device)
    temperature = fit_temperature(val_logits, val_labels)
    test = splits.test if splits.test is not None else splits.val
    logits, labels = collect_logits(model, _pixel_batches(test, args, ckpt), args.device)
    report = calibration_report(logits, labels, temperature, args.bins)
    report.update(checkpoint=str(path), data=str(args.data), fit_on=f"validation split ({len(val_labels)} images)",
                  evaluated_on="test set" if splits.test is not None else
                  "validation split, the images the temperature was fitted on (the scaled figures are optimistic)")
    target = write_json(out / "calibration.json", report)
    figure = reliability_diagram(report, out / "reliability.png", title=path.name)
    print(f"temperature {temperature:.4f} (fitted on {len(val_labels)} validation images)")
    print(f"ECE {report['ece'] * 100:.2f}% -> {report['ece_scaled'] * 100:.2f}%, NLL {report['nll']:.4f} -> "
          f"{report['nll_scaled']:.4f} on {report['samples']} images ({report['evaluated_on']})")
    print(f"wrote {target} and {figure}")
    problem = _unfit_to_store(temperature, len(val_labels))
    if problem and not args.store:
        print(f"warning: {problem}; do not store this temperature")
    if args.store:
        if problem:
            raise UserError(f"not storing the temperature: {problem}. {path} is unchanged; fit on more validation "
                            "images (a run with a larger val_split, or --data with a bigger val/ tree)")
        store_temperature(path, temperature)
        print(f"stored temperature={temperature:.4f} in {path}")
    return 0
