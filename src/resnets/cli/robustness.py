"""`resnets robustness` (attacks and corruptions) and `resnets calibrate` (ECE, reliability diagram,
temperature scaling) for a checkpoint on a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "robustness", help="accuracy under FGSM/PGD attacks (vs epsilon) and common corruptions",
        description="Evaluate a checkpoint under adversarial attacks (accuracy vs epsilon; pixel space [0, 1], "
                    "normalisation inside the model) and/or CIFAR-10-C-style corruptions at 5 severities generated "
                    "on the fly. Writes robustness.json / corruptions.json into --out (a run folder works).",
        epilog="example: resnets robustness --checkpoint runs/r20/best.safetensors --data cifar10 "
               "--eps 0,2/255,4/255,8/255 --steps 20 --corruptions all --out runs/r20")
    _common(p)
    p.add_argument("--attack", choices=("pgd", "fgsm", "none"), default="pgd")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--eps", default=None, help="comma list; fractions allowed (default linf: 0,1/255,2/255,4/255,8/255; "
                                               "l2: 0,0.25,0.5,1)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (default 20)")
    p.add_argument("--restarts", type=int, default=1, help="PGD random restarts (default 1)")
    p.add_argument("--corruptions", default=None, metavar="NAMES",
                   help="'all', family names (noise, blur, weather, digital) or corruption names; default none")
    p.add_argument("--baseline", help="corruptions.json of a baseline model: adds mCE relative to it")
    p.set_defaults(func=run_robustness)

    c = subparsers.add_parser(
        "calibrate", help="expected calibration error, reliability diagram and temperature scaling",
        description="Fit a temperature on the validation split (LBFGS on NLL; the split the run held out, from the "
                    "checkpoint's recorded val_split/seed, or --data's val/ tree), report ECE/NLL before and after on "
                    "the evaluation set, draw the reliability diagram, and with --store write the temperature into "
                    "the checkpoint metadata.",
        epilog="example: resnets calibrate --checkpoint runs/r20/best.safetensors --data cifar10 --store --out runs/r20")
    _common(c)
    c.add_argument("--bins", type=int, default=15, help="confidence bins (default 15)")
    c.add_argument("--store", action="store_true", help="write the fitted temperature into the checkpoint metadata")
    c.set_defaults(func=run_calibrate)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a resnets checkpoint (.safetensors/.pt) or run folder")
    p.add_argument("--data", required=True, help="cifar10, cifar100, an ImageFolder tree, or a root with train/ and val/")
    p.add_argument("--out", default=".", help="folder for the JSON/PNG results (default: current folder)")
    p.add_argument("--samples", type=int, default=None, help="use only the first N evaluation images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


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


def _pixel_batches(dataset: Any, args: argparse.Namespace):
    from ..data import make_loader

    loader = make_loader(dataset, args.batch_size, train=False, device=args.device, mean=(0.0, 0.0, 0.0),
                         std=(1.0, 1.0, 1.0), workers=0)
    seen = 0
    for x, y in loader:
        if args.samples is not None and seen >= args.samples:
            return
        if args.samples is not None:
            x, y = x[: args.samples - seen], y[: args.samples - seen]
        seen += y.shape[0]
        yield x.clamp(0, 1), y


def _eval_set(args: argparse.Namespace, ckpt: Any):
    from ..data import load_eval

    meta = ckpt.metadata
    return load_eval(args.data, classes=meta.get("classes"), image_size=meta.get("image_size"))


def _write_json(path: Path, data: Any) -> Path:
    from ..weights import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def run_robustness(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..evaluate.corruptions import CorruptionResult, corruption_accuracy, parse_corruptions
    from ..evaluate.robustness import parse_epsilons, robust_accuracy

    if args.attack == "none" and not args.corruptions:
        raise UserError("nothing to do: pass --attack pgd/fgsm and/or --corruptions NAMES")
    try:
        eps = parse_epsilons(args.eps or ("0,1/255,2/255,4/255,8/255" if args.norm == "linf" else "0,0.25,0.5,1"))
        names = parse_corruptions(args.corruptions) if args.corruptions else []
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.steps < 1 or args.restarts < 1:
        raise UserError("--steps and --restarts must be at least 1")
    model, ckpt, path = _model(args)
    dataset = _eval_set(args, ckpt)
    out = Path(args.out)
    if args.attack != "none":
        result = robust_accuracy(model, _pixel_batches(dataset, args), eps, args.attack, args.norm, steps=args.steps,
                                 restarts=args.restarts, seed=args.seed, device=args.device)
        data = {**result.to_dict(), "checkpoint": str(path), "data": str(args.data)}
        target = _write_json(out / f"robustness_{args.attack}_{args.norm}.json", data)
        print(f"{args.attack.upper()} ({args.norm}, {result.steps} steps, {result.restarts} restarts) on "
              f"{result.samples} images -> {target}")
        for e, a in zip(result.epsilons, result.accuracy):
            shown = f"{e * 255:.2f}/255" if args.norm == "linf" else f"{e:g}"
            print(f"  eps {shown:>10}: {a * 100:6.2f}%")
    if names:
        baseline = None
        if args.baseline:
            try:
                baseline = CorruptionResult.from_dict(json.loads(Path(args.baseline).read_text()))
            except (OSError, KeyError, ValueError) as exc:
                raise UserError(f"cannot read baseline {args.baseline!r}: {exc}") from None
        result = corruption_accuracy(model, _pixel_batches(dataset, args), names, seed=args.seed, device=args.device)
        try:
            data = {**result.to_dict(baseline), "checkpoint": str(path), "data": str(args.data)}
        except ValueError as exc:
            raise UserError(str(exc)) from None
        target = _write_json(out / "corruptions.json", data)
        print(f"corruptions on {result.samples} images (clean {result.clean_accuracy * 100:.2f}%) -> {target}")
        print(f"  {'corruption':<18}" + "".join(f"{'s' + str(s):>8}" for s in range(1, 6)))
        for name in names:
            print(f"  {name:<18}" + "".join(f"{a * 100:7.2f}%" for a in result.accuracy[name]))
        print(f"  mean corruption error (unnormalised): {result.mean_error() * 100:.2f}%"
              + (f"; mCE vs baseline {data['mce'] * 100:.1f}" if baseline else ""))
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..data import load_data
    from ..evaluate.calibration import (calibration_report, collect_logits, fit_temperature, reliability_diagram,
                                        store_temperature)

    model, ckpt, path = _model(args)
    meta = ckpt.metadata
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    val_split, seed = config.get("val_split", 0.1), config.get("seed", 0)
    splits = load_data(args.data, val_split=val_split, seed=seed, classes=meta.get("classes"),
                       image_size=meta.get("image_size"))
    if splits.val is None or len(splits.val) == 0:
        raise UserError(f"{args.data} gives no validation split to fit the temperature on; pass data with a val/ "
                        "tree or a checkpoint whose run held out val_split > 0")
    val_logits, val_labels = collect_logits(model, _pixel_batches(splits.val, args), args.device)
    temperature = fit_temperature(val_logits, val_labels)
    test = splits.test if splits.test is not None else splits.val
    logits, labels = collect_logits(model, _pixel_batches(test, args), args.device)
    report = calibration_report(logits, labels, temperature, args.bins)
    report.update(checkpoint=str(path), data=str(args.data), fit_on=f"validation split ({len(val_labels)} images)",
                  evaluated_on="test set" if splits.test is not None else "validation split")
    out = Path(args.out)
    target = _write_json(out / "calibration.json", report)
    figure = reliability_diagram(report, out / "reliability.png", title=path.name)
    print(f"temperature {temperature:.4f} (fitted on {len(val_labels)} validation images)")
    print(f"ECE {report['ece'] * 100:.2f}% -> {report['ece_scaled'] * 100:.2f}%, NLL {report['nll']:.4f} -> "
          f"{report['nll_scaled']:.4f} on {report['samples']} images ({report['evaluated_on']})")
    print(f"wrote {target} and {figure}")
    if args.store:
        store_temperature(path, temperature)
        print(f"stored temperature={temperature:.4f} in {path}")
    return 0
