"""`resnets finetune --from SRC --data DIR --out RUN`: fine-tune (or linear-probe) a pretrained ResNet."""

from __future__ import annotations

import argparse
from typing import Any

from .args import device, non_negative_float, positive_float, positive_int, unit_fraction, val_split


def _stage_lrs(text: str | None) -> dict[str, float]:
    from . import UserError

    if not text:
        return {}
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"--stage-lr {text!r}: write PART=MULT pairs separated by commas, e.g. "
                            "'stem=0.1,layer1=0.1,layer2=0.3'") from None
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune or linear-probe a pretrained ResNet on an image folder",
        description="Start from a resnets checkpoint, a torchvision/timm state dict (with --model) or a torchvision "
                    "weight tag (e.g. IMAGENET1K_V1, with --model); replace the head for the data's classes; freeze "
                    "up to a stage; choose the BatchNorm policy and per-part learning rates; train with the resnets "
                    "trainer (SGD, warmup + cosine) and write RUN/ (finetune.yaml, config.yaml, metrics.jsonl, "
                    "best.safetensors, last.pt, summary.json).")
    p.add_argument("--from", dest="source", metavar="CKPT_OR_WEIGHTS",
                   help="checkpoint file or run folder, torchvision/timm state dict file, torchvision weight tag "
                        "(with --model), or model and tag in one (resnet50.IMAGENET1K_V2; `resnets models --pretrained` "
                        "lists them); required, with --data and --out, unless --resume")
    p.add_argument("--model", help="architecture of a state dict without a spec (e.g. resnet50)")
    p.add_argument("--data", help="ImageFolder tree, root with train/ and val/, or cifar10/cifar100")
    p.add_argument("--out", help="run folder to write")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a fine-tuning run from RUN_DIR/last.pt with the "
                   "arguments recorded in RUN_DIR/finetune.yaml (only --device may be given with it)")
    p.add_argument("--val-split", type=val_split, default=0.1, help="held-out fraction (or count) when the data has no val/ tree")
    p.add_argument("--image-size", type=positive_int, help="resize images to this side (default: the source checkpoint's image_size, else the data's own, "
                        "or 224)")
    p.add_argument("--freeze", default="none", help="freeze up to and including: none, stem, layer1..layerN, "
                                                    "all-but-head (default none)")
    p.add_argument("--bn", default="train", choices=["train", "eval", "frozen"],
                   help="BatchNorm in trainable parts: train; eval (running stats fixed); frozen (affine too)")
    p.add_argument("--lr", type=positive_float, default=0.01, help="base learning rate (default 0.01)")
    p.add_argument("--head-lr-mult", type=positive_float, default=1.0, help="head learning rate = lr x this (default 1)")
    p.add_argument("--stage-lr", help="per-part multipliers, e.g. 'stem=0.1,layer1=0.1,layer2=0.3'")
    p.add_argument("--layer-decay", type=unit_fraction, help="layer-wise decay: part k below the head gets lr x decay^k")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--warmup-epochs", type=non_negative_float, default=None,
                   help="linear warm-up (default: 1 epoch, at most a fifth of the run, so a short fine-tune still "
                        "reaches --lr and decays)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--augment", default="auto", help="resnets.data augment preset: auto (cifar for small images, "
                                                     "imagenet for large), none, cifar, he2015, airbench, imagenet")
    p.add_argument("--unfreeze-every", type=positive_int, metavar="EPOCHS",
                   help="progressive unfreezing: train the head first, then unfreeze one more part from the top "
                        "every EPOCHS epochs (down to --freeze)")
    p.add_argument("--linear-probe", action="store_true",
                   help="compute features once (cached in RUN/features) and fit a linear classifier; no training")
    p.add_argument("--probe-weight-decay", type=non_negative_float, default=1e-4)
    p.add_argument("--keep-head", action="store_true", help="keep the source's classifier (classes must match)")
    p.add_argument("--adapt-in-chans", action="store_true", help="convert the first convolution to the data's channels")
    p.add_argument("--device", type=device, help="cpu (default), cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run, parser=p)


def _policy(model, args: argparse.Namespace, num_classes: int | None) -> tuple[Any, Any]:
    """The parameter groups of ``args``' fine-tuning policy, and the progressive unfreezer when it asks for one.
    ``num_classes`` replaces the head (None keeps it)."""
    from ..transfer import FinetuneConfig, PolicyError, ProgressiveUnfreezer, apply_finetune_policy
    from . import UserError

    try:
        config = FinetuneConfig(num_classes=num_classes, freeze=args.freeze, bn=args.bn, lr=args.lr,
                                head_lr_mult=args.head_lr_mult, stage_lr_mults=_stage_lrs(args.stage_lr),
                                layer_decay=args.layer_decay, weight_decay=args.weight_decay)
        if args.unfreeze_every:
            unfreezer = ProgressiveUnfreezer(model, config, epochs_per_part=args.unfreeze_every)
            return unfreezer.param_groups, unfreezer
        return (None if args.linear_probe else apply_finetune_policy(model, config)), None
    except PolicyError as exc:
        raise UserError(str(exc)) from None


def _callbacks(unfreezer) -> list:
    """Progressive unfreezing, and the fault drill that rehearses a kill (``RESNETS_FAULT_KILL``)."""
    from ..train.distributed import fault_drill_from_env
    from ..transfer import UnfreezeCallback

    return ([UnfreezeCallback(unfreezer)] if unfreezer is not None else []) + fault_drill_from_env()


def run(args: argparse.Namespace) -> int:
    _refuse_several_processes()
    if args.resume:
        return _resume(args)
    from .resuming import require

    require(args, "source", "data", "out")
    _refuse_contradictions(args)
    return _start(args)


def _refuse_several_processes() -> None:
    """Under torchrun every process would train its own copy into one run folder (and the second to start finds
    the first's files): fine-tuning runs in one process."""
    import os

    from ..train.distributed import launched_by_torchrun
    from . import UserError

    if launched_by_torchrun() and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1"):
        raise UserError(f"resnets finetune runs in one process, and torchrun started {os.environ['WORLD_SIZE']}: each "
                        "would train its own copy into the same run folder. Run it without torchrun (--device cuda "
                        "for a GPU); for several processes, train from Python with resnets.train.Trainer(..., "
                        "process=...) inside resnets.train.distributed.distributed_session")


# options of the training path that a linear probe (features once, then L-BFGS on a new head) never reads
_TRAINING_ONLY = ("freeze", "bn", "lr", "head_lr_mult", "stage_lr", "layer_decay", "weight_decay", "epochs",
                  "batch_size", "warmup_epochs", "label_smoothing", "augment", "channels_last")


def _refuse_contradictions(args: argparse.Namespace) -> None:
    """Options a linear probe cannot honour: it fits a new classifier on fixed features, so it neither
    keeps the source's head nor unfreezes nor trains anything (all were silently ignored)."""
    from . import UserError

    if args.linear_probe:
        for flag, given in (("--keep-head", args.keep_head), ("--unfreeze-every", args.unfreeze_every)):
            if given:
                raise UserError(f"{flag} and --linear-probe contradict: a linear probe fits a new classifier on "
                                f"the frozen network's features; drop one of them")
        given = [f"--{name.replace('_', '-')}" for name in _TRAINING_ONLY
                 if getattr(args, name) != args.parser.get_default(name)]
        if given:
            raise UserError(f"{', '.join(given)} {'sets' if len(given) == 1 else 'set'} how fine-tuning trains, and "
                            "--linear-probe trains nothing (it fits a new classifier on fixed features, regularised "
                            "by --probe-weight-decay); drop --linear-probe to fine-tune, or the other options")
    elif args.probe_weight_decay != args.parser.get_default("probe_weight_decay"):
        raise UserError("--probe-weight-decay regularises a linear probe; add --linear-probe, or set fine-tuning's "
                        "--weight-decay instead")


def _resume(args: argparse.Namespace) -> int:
    """Rebuild the model (from last.pt's spec), the data split and the policy's groups from the run's record;
    the trainer then restores every state, so the run ends as an uninterrupted one would (CPU)."""
    from ..data import load_data
    from ..factory import create_model
    from ..spec import ResNetSpec
    from ..train.checkpoint import load_training_checkpoint
    from ..train.trainer import resume
    from .resuming import read_record, refuse_changes_on_resume, resume_folder

    refuse_changes_on_resume(args, may_change=("device",))
    folder = resume_folder(args.resume)
    saved = read_record(folder, "finetune")
    body = load_training_checkpoint(folder / "last.pt")
    model = create_model(ResNetSpec.from_dict(body["spec"]))
    splits = load_data(saved.data, val_split=saved.val_split, seed=saved.seed, image_size=body["image_size"],
                       normalization=(tuple(body["mean"]), tuple(body["std"])))
    groups, unfreezer = _policy(model, saved, num_classes=None)  # the checkpoint's head fits the data already
    result = resume(folder, {"device": args.device} if args.device else {}, checkpoint=body, splits=splits,
                    model=model, param_groups=groups, callbacks=_callbacks(unfreezer))
    return _report(result, folder)


def _report(result, out) -> int:
    print(f"done: best val acc {result.best_val_top1} -> {out / 'best.safetensors'}"
          if result.best_val_top1 is not None else f"done -> {out}")
    return 0


def _warmup_epochs(args: argparse.Namespace) -> float:
    """The warm-up asked for, else 1 epoch but at most a fifth of the run: a 1-epoch fine-tune with a 1-epoch
    warm-up spent every step warming up and never decayed."""
    if args.warmup_epochs is not None:
        return args.warmup_epochs
    return min(1.0, args.epochs / 5) if args.epochs else 1.0


def _start(args: argparse.Namespace) -> int:
    import random
    from pathlib import Path

    import torch

    from ..data import AugmentConfig, DataError, load_data, make_loader
    from ..transfer import check_head, linear_probe, load_source, trainable_summary
    from ..transfer.loop import evaluate, write_json
    from ..transfer.source import zoo_name
    from ..jsonfile import to_json
    from ..train.trainer import check_new_run_dir, training_images_metadata
    from ..weights import atomic_write, save_weights
    from . import UserError
    from .args import check_output
    from .resuming import recorded_args, write_record

    check_output(args.out, reads=[args.source], directory=True, data=[args.data])
    if args.warmup_epochs is not None and args.epochs is not None and args.warmup_epochs >= args.epochs:
        raise UserError(f"--warmup-epochs {args.warmup_epochs:g} is not shorter than --epochs {args.epochs:g}: the "
                        "learning rate would never reach --lr nor decay; give a shorter warm-up")
    check_new_run_dir(args.out)  # before finetune.yaml is written there
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    model, info = load_source(args.source, model_name=args.model, in_chans=3, adapt_in_chans=args.adapt_in_chans)
    meta = info.metadata
    if isinstance(meta.get("mean"), (list, tuple)) and isinstance(meta.get("std"), (list, tuple)):
        normalization = (tuple(meta["mean"]), tuple(meta["std"]))
    elif meta.get("format") != "resnets":
        normalization = "imagenet"  # torchvision and timm weights expect ImageNet statistics
    else:
        normalization = "auto"
    image_size = args.image_size or meta.get("image_size")
    try:
        splits = load_data(args.data, val_split=args.val_split, seed=args.seed, image_size=image_size,
                           normalization=normalization)
    except DataError as exc:
        raise UserError(str(exc)) from None
    check_head(info, len(splits.classes), replace_head=not args.keep_head, class_names=splits.classes)
    groups, unfreezer = _policy(model, args, num_classes=None if args.keep_head else len(splits.classes))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"classes": list(splits.classes), "mean": list(splits.mean), "std": list(splits.std),
                "image_size": int(splits.image_size), "source": info.origin, "source_classes": info.num_classes,
                "finetune": recorded_args(args)}
    # the record is written only once nothing in the arguments can fail any more (below, before the work
    # starts): a record left by a start that failed would make the folder refuse the corrected command
    record = dict(source_spec=info.spec.to_dict(), dataset=splits.describe())
    try:
        augment = (AugmentConfig.preset("cifar" if splits.in_memory else "imagenet") if args.augment == "auto"
                   else AugmentConfig.preset(args.augment))
    except ValueError as exc:
        raise UserError(f"--augment: {exc}") from None
    device = torch.device(args.device or "cpu")
    val_loader = (make_loader(splits.val, batch_size=max(args.batch_size, 256), train=False, device=device)
                  if splits.val is not None and len(splits.val) else None)

    if args.linear_probe:
        write_record(out, "finetune", args, **record)
        eval_loader = make_loader(splits.train, batch_size=256, train=False, device=device)
        result = linear_probe(model, eval_loader, len(splits.classes), val_batches=val_loader,
                              cache_dir=out / "features", data_key=f"{args.data}|{splits.image_size}|{args.seed}",
                              weight_decay=args.probe_weight_decay, device=device, amp=args.amp)
        row = {"mode": "linear_probe", "train_acc": result.train_accuracy, "val_acc": result.val_accuracy,
               "train_size": result.num_train, "feature_dim": result.feature_dim, "cache_hit": result.cache_hit}
        if val_loader is not None:  # the installed head, checked end to end from images
            row["val_acc_from_images"] = evaluate(model, val_loader, str(device), args.amp)["acc"]
        atomic_write(out / "metrics.jsonl", lambda tmp: Path(tmp).write_text(to_json(row, indent=None) + "\n"))
        # what `resnets eval` needs to refuse the probe's training images and to redraw its hold-out (--held-out)
        run = {"recipe": "linear-probe", "model": zoo_name(info.spec) or args.model or "custom",
               "data": str(args.data), "val_split": args.val_split, "seed": args.seed}
        save_weights(model, out / "best.safetensors", {**metadata, "val_acc": result.val_accuracy, "config": run,
                                                       **training_images_metadata(args.data)})
        write_json(out / "summary.json", row)
        print(f"linear probe: train acc {result.train_accuracy:.4f}"
              + (f", val acc {result.val_accuracy:.4f}" if result.val_accuracy is not None else "")
              + f" -> {out / 'best.safetensors'}")
        return 0

    for part, row in trainable_summary(model).items():
        print(f"  {part:<8} {row['trainable']:>10,d}/{row['params']:<10,d} trainable  bn={row['bn']}")
    from ..train import ConfigError, NonFiniteLossError, TrainConfig, Trainer

    try:
        train_config = TrainConfig(
            recipe="finetune", description=f"fine-tuned from {info.origin}",
            model=zoo_name(info.spec) or args.model or "custom", data=str(args.data), val_split=args.val_split,
            image_size=int(splits.image_size), augment=augment.to_dict(), batch_size=args.batch_size,
            epochs=args.epochs, lr=args.lr, lr_scaling="none", nesterov=True, weight_decay=args.weight_decay,
            schedule="cosine", warmup=_warmup_epochs(args), warmup_unit="epochs",
            label_smoothing=args.label_smoothing, device=str(device), precision="bf16" if args.amp else "fp32",
            channels_last=args.channels_last, seed=args.seed, tensorboard=False)
        train_config.validate()
        # The policy's groups carry lr_scale (the per-part multipliers); the trainer schedules the base
        # rate and multiplies. Progressive unfreezing runs as a callback at each epoch start.
        trainer = Trainer(train_config, out, splits=splits, model=model, param_groups=groups,
                          callbacks=_callbacks(unfreezer))
        write_record(out, "finetune", args, **record)
        result = trainer.fit()
    except (ConfigError, NonFiniteLossError) as exc:
        raise UserError(str(exc)) from None
    return _report(result, out)
