"""`resnets explain gradcam|gradflow`: what a model looks at, and how gradients travel through depth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .args import check_output, device, image_files, non_negative_int, positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("explain", help="Grad-CAM / saliency overlays and gradient-flow plots",
                              description="Look inside a model: Grad-CAM and input-gradient saliency for images, or "
                                          "per-block gradient norms (plain vs residual).")
    sub = p.add_subparsers(dest="explain_command", metavar="WHAT")

    g = sub.add_parser("gradcam", help="Grad-CAM and saliency overlays (PNG) for images",
                       description="Write one PNG per image (image | Grad-CAM overlay | saliency) for the predicted "
                                   "class or --class, plus gradcam_gallery.png and gradcam.json. The default layer is the last stage's output "
                                   "(the final norm+ReLU for pre-activation nets).",
                       epilog="example: resnets explain gradcam --checkpoint runs/r18/best.safetensors img1.jpg "
                              "img2.jpg --out cams/")
    g.add_argument("images", nargs="+", help="image files (or folders of images)")
    g.add_argument("--checkpoint", required=True, help="a resnets checkpoint (.safetensors/.pt)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--class", dest="target", help="explain this class (name or index) instead of the prediction")
    g.add_argument("--layer", help="target layer name (e.g. layer3, layer4.1); default: last stage")
    g.add_argument("--image-size", type=positive_int, help="resize images to this size (default: the checkpoint's)")
    g.add_argument("--no-saliency", action="store_true", help="skip the input-gradient saliency panel")
    g.add_argument("--device", type=device, default="cpu")
    g.set_defaults(func=run_gradcam)

    f = sub.add_parser("gradflow", help="per-block gradient norms at init (and after some training), plain vs residual",
                       description="Measure per-block parameter-gradient and backward-signal norms and, for residual "
                                   "blocks, the norm of the residual branch against its shortcut (the two inputs of "
                                   "block.add), at initialisation and after --steps SGD steps, for each --model; "
                                   "writes gradflow.png and gradflow.json.",
                       epilog="example: resnets explain gradflow --model plain56,resnet56 --data cifar10 --steps 50 "
                              "--out gradflow/")
    f.add_argument("--model", required=True, help="comma list of model names, checkpoint paths or run folders")
    f.add_argument("--data", help="dataset for the batches (default: random images and labels)")
    f.add_argument("--steps", type=non_negative_int, default=0,
                   help="SGD steps to train before the second measurement")
    f.add_argument("--batch-size", type=positive_int, default=64)
    f.add_argument("--lr", type=positive_float, default=0.05)
    f.add_argument("--num-classes", type=positive_int, default=None,
                   help="classes for models built by name without --data (default 10; with --data, its classes)")
    f.add_argument("--image-size", type=positive_int, default=32, help="image size for random batches")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True, help="output folder")
    f.set_defaults(func=run_gradflow)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def _image_paths(items: list[str]) -> list[Path]:
    """The images to explain (folders searched as ``resnets predict`` searches them); a missing file is an error."""
    from ..cli import UserError

    paths = [Path(item) for item in image_files(items)]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise UserError(f"image {str(missing)!r} does not exist")
    return paths


def run_gradcam(args: argparse.Namespace) -> int:
    import torch

    from ..cli import UserError
    from ..data import load_eval_image
    from ..data.loader import EVAL_CROP_FRACTION
    from ..evaluate.robustness import pixel_model_from_checkpoint
    from ..explain.gradcam import grad_cam, save_explanation, save_gallery, saliency
    from ..jsonfile import write_json

    image_paths = _image_paths(args.images)
    out = check_output(args.out, reads=args.images, option="--out", directory=True, data=args.images)
    model, ckpt = pixel_model_from_checkpoint(args.checkpoint, args.device)
    spec = model.model.spec
    size = args.image_size or ckpt.metadata.get("image_size") or spec.default_image_size
    classes = ckpt.metadata.get("classes") or [str(i) for i in range(spec.num_classes)]
    target = None
    if args.target is not None:
        if args.target in classes:
            target = classes.index(args.target)
        elif args.target.isdigit() and int(args.target) < len(classes):
            target = int(args.target)
        else:
            raise UserError(f"unknown class {args.target!r}; classes are {', '.join(classes[:20])}"
                            + (" ..." if len(classes) > 20 else ""))
    crop_fraction = float(ckpt.metadata.get("crop_fraction") or EVAL_CROP_FRACTION)  # as `resnets predict` reads
    images, names = [], []
    for path in image_paths:
        images.append(load_eval_image(path, size, crop_fraction).float() / 255)  # as prediction prepares it, in [0, 1]
        names.append(path)
    x = torch.stack(images).to(args.device)
    try:
        cams, explained = grad_cam(model, x, target, args.layer)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    sal = None if args.no_saliency else saliency(model, x, explained)[0]
    with torch.no_grad():
        probs = torch.softmax(model(x).float() / float(ckpt.metadata.get("temperature", 1.0)), 1)
    out.mkdir(parents=True, exist_ok=True)
    titles, rows = [], []
    for i, path in enumerate(names):
        cls = int(explained[i])
        pred = int(probs[i].argmax())
        title = f"{classes[cls]} ({probs[i, cls] * 100:.0f}%)" + ("" if cls == pred else f", predicted {classes[pred]}")
        titles.append(title)
        target_png = out / f"gradcam_{i:03d}_{path.stem}.png"
        save_explanation(target_png, x[i].cpu(), cams[i].cpu(), None if sal is None else sal[i].cpu(), title=title)
        rows.append({"image": str(path), "explained_class": classes[cls], "predicted": classes[pred],
                     "probability": float(probs[i, cls]), "png": str(target_png)})
        print(f"{path} -> {target_png}: {title}")
    save_gallery(out / "gradcam_gallery.png", x.cpu(), cams.cpu(), titles)
    _remove_stale_overlays(out / "gradcam.json", {row["png"] for row in rows})
    write_json(out / "gradcam.json", rows)
    print(f"wrote {len(rows)} overlays and {out / 'gradcam_gallery.png'}")
    return 0


def _remove_stale_overlays(record: Path, written: set[str]) -> None:
    """An earlier run into the same --out listed its overlays in gradcam.json; those this run did not write again
    (it explained fewer or other images) would sit in the report beside the new ones. Only files that record
    names are removed."""
    try:
        previous = json.loads(record.read_text(encoding="utf-8"))
        listed = {str(row["png"]) for row in previous}
    except (OSError, ValueError, TypeError, KeyError):
        return  # no earlier run, or a record that is not ours: leave every file alone
    for png in listed - written:
        path = Path(png)
        if path.parent.resolve() == record.parent.resolve() and path.name.startswith("gradcam_") \
                and path.suffix == ".png":
            path.unlink(missing_ok=True)


def _check_checkpoint_classes(checkpoint: str, classes: list[str]) -> None:
    """A checkpoint measured on --data must have one output per class of the data (else cross-entropy fails
    with an index error deep in training) and, when it stores class names, the same names in the same order."""
    from ..cli import UserError
    from ..weights import read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    outputs = ckpt.spec.num_classes if ckpt.spec is not None else None
    if outputs is not None and outputs != len(classes):
        raise UserError(f"{checkpoint} has {outputs} outputs but --data has {len(classes)} classes "
                        f"({', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}); use data with the "
                        "checkpoint's classes, or omit --data to measure on random batches")
    stored = ckpt.metadata.get("classes")
    if stored and list(stored) != classes:
        raise UserError(f"{checkpoint} was trained on classes {', '.join(map(str, stored[:10]))} but --data has "
                        f"{', '.join(classes[:10])}; use data with the checkpoint's classes (same folder names), or "
                        "omit --data to measure on random batches")


def _is_checkpoint(name: str) -> bool:
    """A checkpoint file, or a run folder (a folder that is not also a model name, so a stray ./resnet20 folder
    does not hide the model)."""
    from ..zoo import list_models

    path = Path(name)
    return path.is_file() or (path.is_dir() and name not in list_models())


def _run_labels(names: list[str]) -> dict[str, str]:
    """A short label per --model item (a checkpoint's stem, a run folder's name), or the path as given where two
    would share one (runA/best.safetensors, runB/best.safetensors): one run must not replace another in
    gradflow.json and the plot."""
    short = {name: Path(name).stem if _is_checkpoint(name) else name for name in names}
    taken = list(short.values())
    return {name: label if taken.count(label) == 1 else name for name, label in short.items()}


def run_gradflow(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F

    from ..cli import UserError
    from ..explain.gradflow import measure_gradient_flow, plot_gradient_flow
    from ..factory import create_model
    from ..jsonfile import write_json
    from ..weights import model_from_checkpoint
    from ..zoo import UnknownModelError

    names = list(dict.fromkeys(n.strip() for n in args.model.split(",") if n.strip()))
    if not names:
        raise UserError("--model needs at least one model name or checkpoint, e.g. plain20,resnet20")
    out = check_output(args.out, option="--out", directory=True, data=[args.data])
    labels = _run_labels(names)
    loader = None
    if args.data and args.num_classes is not None:
        raise UserError(f"--num-classes {args.num_classes} applies to random batches; with --data the models are built "
                        "with the data's classes: drop one of the two")
    num_classes = args.num_classes or 10
    classes = None
    if args.data:
        from ..data import load_data, make_loader

        splits = load_data(args.data, val_split=0, seed=args.seed)
        classes = list(splits.classes)
        num_classes = len(classes)
        for name in names:  # before any work: a checkpoint must fit the data's classes
            if _is_checkpoint(name):
                _check_checkpoint_classes(name, classes)
        loader = make_loader(splits.train, args.batch_size, train=True, seed=args.seed, workers=0)

    def data_batches(source):
        epoch = 0
        while True:
            source.set_epoch(epoch)
            yield from source
            epoch += 1
    runs: dict[str, list] = {}
    for name in names:
        torch.manual_seed(args.seed)
        try:
            model_loader = loader
            if _is_checkpoint(name):
                model, checkpoint = model_from_checkpoint(name)
                saved = checkpoint.metadata
                if loader is not None and isinstance(saved.get("mean"), list) and isinstance(saved.get("std"), list):
                    # the images as this checkpoint was trained on them, not with --data's own statistics
                    from ..data import make_loader
                    from ..evaluate.loading import rgb_normalization

                    mean, std = rgb_normalization(saved, model.spec.in_chans, name)
                    model_loader = make_loader(splits.train, args.batch_size, train=True, seed=args.seed, workers=0,
                                               mean=mean, std=std)
            else:
                model = create_model(name, num_classes=num_classes)
        except UnknownModelError as exc:
            raise UserError(str(exc)) from None
        if loader is not None and model.spec.in_chans != 3:
            if model.spec.in_chans != 1:
                raise UserError(f"{name} takes {model.spec.in_chans}-channel input but --data gives RGB images; "
                                "omit --data to measure on random batches of its shape")
            from ..evaluate.loading import GrayscaleInput

            model = GrayscaleInput(model)  # --data gives RGB: read it as grey, as evaluation does
        model.train()
        stream = data_batches(model_loader) if model_loader is not None else None
        gen = torch.Generator().manual_seed(args.seed)

        def next_batch():
            if stream is not None:
                return next(stream)
            size = args.image_size
            return (torch.randn(args.batch_size, model.spec.in_chans, size, size, generator=gen),
                    torch.randint(0, model.spec.num_classes, (args.batch_size,), generator=gen))

        probe = next_batch()
        records = [measure_gradient_flow(model, *probe, step=0)]
        if args.steps:
            opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
            for step in range(args.steps):
                x, y = next_batch()
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            records.append(measure_gradient_flow(model, *probe, step=args.steps))
        runs[labels[name]] = records
        first, last = records[0], records[-1]
        start = "as loaded" if _is_checkpoint(name) else "at init"
        print(f"{name}: {len(first.blocks)} blocks; |dL/d out| first/last block {start} "
              f"{first.output_grad[0] / max(first.output_grad[-1], 1e-30):.3g}"
              + (f", after {args.steps} steps {last.output_grad[0] / max(last.output_grad[-1], 1e-30):.3g}"
                 if args.steps else ""))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gradflow.json", {k: [r.to_dict() for r in v] for k, v in runs.items()})
    figure = plot_gradient_flow(runs, out / "gradflow.png", title="gradient flow: " + ", ".join(runs))
    print(f"wrote {figure} and {out / 'gradflow.json'}")
    return 0
