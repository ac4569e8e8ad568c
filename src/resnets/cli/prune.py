"""`resnets prune`: structured pruning to a share of the MACs, then fine-tuning, as a normal checkpoint."""

from __future__ import annotations

import argparse

from ..precision import AUTO_PRECISION_HELP, PRECISION_CHOICES
from .args import check_output, device, load_network, non_negative_int, positive_float, positive_int, unit_fraction, val_split


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prune", help="prune a checkpoint's inner block channels to a MAC target, then fine-tune",
        description="Remove the least important channels inside residual blocks (never the channels the shortcuts "
                    "tie together) until the network has --target-macs of its MACs, then fine-tune it with the "
                    "trainer. The run folder's best.safetensors is an ordinary checkpoint whose spec records each "
                    "block's inner width (block_widths).",
        epilog="example: resnets prune --checkpoint runs/r56/best.safetensors --data cifar10 --target-macs 0.5 "
               "--epochs 10 --out runs/r56-pruned")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", help="architecture of a --checkpoint without a spec (a torchvision/timm state dict), "
                   "e.g. resnet18")
    p.add_argument("--data", required=True, help="the training data (as for resnets train)")
    p.add_argument("--out", required=True, help="run folder for the fine-tuning")
    p.add_argument("--target-macs", type=unit_fraction, default=0.5, help="fraction of the MACs to keep (0-1)")
    p.add_argument("--criterion", default="l1", choices=("l1", "bn"),
                   help="l1 (filter L1 norm) or bn (BatchNorm |gamma|)")
    p.add_argument("--min-keep", type=unit_fraction, default=0.1,
                   help="fraction (0-1) of each layer's channels always kept")
    add_finetune_args(p, lr=0.02)
    p.set_defaults(func=run)


def add_finetune_args(p: argparse.ArgumentParser, lr: float) -> None:
    p.add_argument("--epochs", type=positive_float, help="fine-tuning epochs")
    p.add_argument("--time-budget", type=positive_float, metavar="MINUTES",
                   help="or fit fine-tuning into this many minutes")
    p.add_argument("--lr", type=positive_float, default=lr)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--val-split", type=val_split,
                   help="held-out fraction (or count); default: the hold-out the checkpoint's run recorded (its "
                        "val_split and split seed), else 0.1")
    p.add_argument("--workers", type=non_negative_int, help="data loader processes (0: load in this process)")
    p.add_argument("--device", type=device, help="cpu (default), cuda, cuda:1 ...")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                   help=f"default {AUTO_PRECISION_HELP}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other training option")


def refuse_non_rgb(model, option: str, command: str) -> None:
    """The trainer reads images as RGB, so a model of another channel count could only fail after the work."""
    from . import UserError

    if model.spec.in_chans != 3:
        raise UserError(f"{option} is a {model.spec.in_chans}-channel model, and resnets {command} fine-tunes with "
                        "the resnets trainer, which reads images as RGB (3 channels); use a 3-channel model")


def compression_hold_out(args: argparse.Namespace, metadata: dict) -> tuple[float | int, int]:
    """(val_split, seed) a prune/distill run holds out: the checkpoint's recorded hold-out (so its "held-out"
    images are ones the network never trained on), unless --val-split or --set val_split/split_seed say otherwise."""
    from ..deploy.data import checkpoint_hold_out
    from ..train import parse_set

    val_split, seed = checkpoint_hold_out(metadata, args.val_split)
    extra = parse_set(args.set)
    return extra.get("val_split", val_split), (seed if extra.get("split_seed") is None else int(extra["split_seed"]))


def finetune_config(args: argparse.Namespace, model_name: str, data_meta: dict):
    """A TrainConfig for a short fine-tuning/distillation run from the common flags."""
    from ..train import parse_set, resolve_config
    from . import UserError

    if args.epochs is None and args.time_budget is None:
        raise UserError("give the fine-tuning length: --epochs N or --time-budget MINUTES")
    held_out, split_seed = compression_hold_out(args, data_meta)
    values = {"model": model_name, "data": args.data, "val_split": held_out, "split_seed": split_seed,
              "batch_size": args.batch_size,
              "lr": args.lr, "schedule": "cosine", "warmup": 0.05, "warmup_unit": "epochs", "nesterov": True,
              "weight_decay": 5e-4, "device": args.device or "cpu",
              "precision": args.precision or "auto",
              "channels_last": True, "augment": {"crop_padding": 4, "pad_mode": "zeros", "flip": True}
              if data_meta.get("image_size", 32) <= 64 else {"random_resized_crop": True, "flip": True}}
    if args.epochs is not None:
        values["epochs"] = args.epochs
    if args.workers is not None:
        values["workers"] = args.workers
    if args.time_budget is not None:
        values["time_budget"] = args.time_budget
    if isinstance(data_meta.get("mean"), list):
        values["normalization"] = [data_meta["mean"], data_meta["std"]]
    extra = parse_set(args.set)
    fixed = sorted(key for key in ("model", "model_options", "data") if key in extra)
    if fixed:  # the network is the pruned (or student) one and the data is --data: a --set would only mislabel the run
        raise UserError(f"--set {fixed[0]}=... cannot change {fixed[0]} here: this command trains the network it built "
                        "(the pruned model, or --student) on --data; set other training options only")
    values.update(extra)
    return resolve_config(None, values)


def run(args: argparse.Namespace) -> int:
    from ..deploy.data import load_deploy_data
    from ..deploy.export import input_size_at
    from ..deploy.prune import PruningError, prune_model
    from ..train import Trainer
    from ..train.trainer import check_new_run_dir
    from . import UserError
    from .quantize import top1

    if args.target_macs <= 0:
        raise UserError(f"--target-macs {args.target_macs:g} keeps no MACs; give the fraction to keep, in (0, 1] "
                        "(0.5 halves them)")
    check_output(args.out, reads=[args.checkpoint], directory=True, data=[args.data])
    check_new_run_dir(args.out)
    model, metadata = load_network(args.checkpoint, args.model, "--checkpoint", "--model")
    refuse_non_rgb(model, "--checkpoint", "prune")
    config = finetune_config(args, str(metadata.get("model_name") or args.model or "pruned"), metadata)
    try:
        # MACs counted at the size the network was trained at, not its design size
        result = prune_model(model, args.target_macs, criterion=args.criterion, min_keep=args.min_keep,
                             input_size=input_size_at(model, metadata.get("image_size")))
    except PruningError as exc:
        raise UserError(str(exc)) from None
    print(f"pruned: {result}; block widths {list(result.block_widths)}")
    data = load_deploy_data(args.data, metadata, 0, val_split=config.val_split, seed=config.held_out_seed,
                            in_chans=model.spec.in_chans, conv_type=model.spec.conv_type, source=args.checkpoint)
    if data.val_loader is not None:
        before = top1(model, data.val_loader, data.num_classes)
        cut = top1(result.model, data.val_loader, data.num_classes)
        print(f"top-1 before pruning {100 * before:.2f}%, right after pruning {100 * cut:.2f}%")
    trainer = Trainer(config, args.out, splits=data.splits, model=result.model)
    run_result = trainer.fit()
    # measured as "before" was (fp32, no TTA, on the CPU), not in the trainer's precision: the difference is pruning's
    final = (top1(run_result.model.to("cpu"), data.val_loader, data.num_classes)
             if run_result.model is not None and data.val_loader is not None else None)
    if final is not None:
        print(f"after fine-tuning: top-1 {100 * final:.2f}% ({100 * (final - before):+.2f} points vs unpruned), "
              f"{result.macs_fraction:.0%} of the MACs; checkpoint {args.out}/best.safetensors")
    return 0
