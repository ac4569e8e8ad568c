"""`resnets train`: train a model under a recipe, or resume a run folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..evaluate.tta import TTA_MODES
from ..precision import AUTO_PRECISION_HELP, PRECISION_CHOICES
from ..train.config import COMPILE_MODES
from .args import device, non_negative_int, positive_float, positive_int, val_split

# flag -> TrainConfig key, for the common overrides (everything else through --set key=value)
_FLAGS = {
    "model": "model", "data": "data", "epochs": "epochs", "steps": "steps", "batch_size": "batch_size", "lr": "lr",
    "device": "device", "precision": "precision", "seed": "seed", "time_budget": "time_budget", "tta": "tta",
    "val_split": "val_split", "workers": "workers", "image_size": "image_size",
    "accum_steps": "accum_steps", "lr_scaling": "lr_scaling",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model under a recipe (or resume a run)",
        description="Train a ResNet under a recipe (YAML shipped with resnets, or a path). Every recipe key can be "
                    "overridden with --set key=value (values are YAML; augment.* and model_options.* take dotted "
                    "keys); the common ones have flags. The run folder gets config.yaml, metrics.jsonl, last.pt "
                    "(every epoch) and best.safetensors (by validation accuracy).",
        epilog="example: resnets train --model resnet20 --data cifar10 --recipe cifar-fast --out runs/fast")
    p.add_argument("--recipe", help="recipe name (see --list-recipes) or path to a .yaml file")
    p.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    p.add_argument("--model", help="model name (`resnets models` lists them)")
    p.add_argument("--data", help="cifar10, cifar100, an ImageFolder tree, or a root with train/ and val/")
    p.add_argument("--out", help="run folder (default: runs/RECIPE-MODEL-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (or from RUN_DIR/last.pt)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any recipe key")
    p.add_argument("--epochs", type=positive_float)
    p.add_argument("--steps", type=positive_int, help="total optimizer steps (instead of the recipe's epochs; not with --epochs)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--device", type=device, help="cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", choices=PRECISION_CHOICES,
                   help=AUTO_PRECISION_HELP)
    p.add_argument("--seed", type=int)
    p.add_argument("--time-budget", type=positive_float, metavar="MINUTES",
                   help="fit the run's length (its steps) to this wall-clock budget, counted from after the data "
                        "load (a first decode of an image folder into the cache is not counted); it replaces "
                        "--epochs/--steps as the length")
    p.add_argument("--tta", choices=TTA_MODES,
                   help="test-time augmentation for the final evaluation")
    p.add_argument("--val-split", type=val_split, help="validation fraction (or count) held out when there is no val tree")
    p.add_argument("--image-size", type=positive_int)
    p.add_argument("--workers", type=non_negative_int)
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute each residual block's activations in backward: far less memory, ~1/3 more compute")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   choices=COMPILE_MODES, help="torch.compile the training forward and backward; MODE "
                   f"({', '.join(COMPILE_MODES)}): reduce-overhead replays CUDA graphs, the fast choice for small "
                   "nets on a GPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    dist = p.add_argument_group("several processes (docs/distributed.md; under torchrun: torchrun ... -m resnets train ...)")
    dist.add_argument("--nproc", type=positive_int, metavar="N", help="train on N local processes (launches torchrun)")
    dist.add_argument("--max-restarts", type=non_negative_int, metavar="K", help="with --nproc: restart the group up to K times "
                      "after a failure; every rank resumes from the run folder's last.pt")
    dist.add_argument("--sync-bn", action="store_true", default=None, help="BatchNorm statistics over the global batch")
    dist.add_argument("--accum-steps", type=positive_int, metavar="K", help="gradient accumulation: K micro-batches of "
                      "--batch-size per optimizer step (global batch = batch size x processes x K)")
    dist.add_argument("--lr-scaling", choices=("linear", "none"), help="lr follows the global batch linearly "
                      "(lr x global / (lr_reference_batch or batch_size); default) or not")
    p.set_defaults(func=run, parser=p)


def _overrides(args: argparse.Namespace) -> dict:
    from ..train import parse_set
    from . import UserError

    overrides = parse_set(args.set)
    for flag, key in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.epochs is not None and overrides.get("steps") is not None:  # resolve_config refuses it too, unnamed
        raise UserError(f"--epochs {args.epochs:g} and steps={overrides['steps']} both set the run length; give one")
    if args.channels_last:
        overrides["channels_last"] = True
    if args.grad_checkpointing:
        overrides["grad_checkpointing"] = True
    if args.compile:
        overrides.update(compile=True, compile_mode=args.compile)
    if args.sync_bn:
        overrides["sync_bn"] = True
    if args.no_progress:
        overrides["progress"] = False
    return overrides


def _default_out(config) -> Path:
    return Path("runs") / f"{config.recipe or 'custom'}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def _refuse_ignored_val_split(overrides: dict, data) -> None:
    """A val_split the user asked for, on data whose val/ tree would silently take its place, is a mistake."""
    from ..data.sources import held_out_folder
    from . import UserError

    if "val_split" not in overrides or not isinstance(data, str):
        return
    tree = held_out_folder(data)
    if tree is not None:
        raise UserError(f"val_split={overrides['val_split']} would do nothing: {data} has a {tree.name}/ tree, which "
                        f"is the validation set. Drop --val-split, or pass --data {Path(data) / 'train'} to hold out "
                        "part of the training images instead")


def run(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..data import DataError, check_source
    from ..train import ConfigError, NonFiniteLossError, list_recipes, resolve_config
    from ..train.distributed import (check_shared_run_dir, distributed_session, fault_drill_from_env, global_rank,
                                     launch, launched_by_torchrun, namespace_to_argv, own_checkpoint,
                                     restart_count, saved_device)
    from ..train.trainer import Trainer, check_new_run_dir, resume
    from ..zoo import get_entry
    from .resuming import refuse_changes_on_resume, resume_folder

    if args.list_recipes:
        from ..train import load_recipe

        for name in list_recipes():
            recipe = load_recipe(name)
            print(f"{name:<14} {recipe.get('description', '')}")
            print(f"{'':<14} expected: {recipe.get('expected', '')}")
        return 0
    try:
        if args.max_restarts is not None and args.nproc is None:
            raise UserError("--max-restarts goes with --nproc (under torchrun, give --max-restarts to torchrun)")
        if args.nproc is not None:  # this process becomes torchrun's agent; the ranks run this command
            if not args.resume:
                overrides = _overrides(args)
                config = resolve_config(args.recipe, overrides)
                get_entry(config.model)
                _refuse_ignored_val_split(overrides, config.data)
                check_source(config.data)  # a wrong --data would fail in every rank, restart after restart
                args.out = args.out or str(_default_out(config))
                check_new_run_dir(args.out)  # once, here: the ranks would each refuse it, and use up restarts
            command = ["train", *namespace_to_argv(args.parser, args, drop=("nproc", "max_restarts"))]
            return launch(args.nproc, command, args.max_restarts or 0)
        if args.resume:
            refuse_changes_on_resume(args, may_change=("workers", "device", "no_progress"))
            args.resume = str(resume_folder(args.resume))
            with distributed_session(args.device or saved_device(args.resume)) as process:
                kept = {"progress": False} if args.no_progress else {}
                if args.workers is not None:
                    kept["workers"] = args.workers
                if args.device is not None:
                    kept["device"] = args.device
                result = resume(args.resume, kept, process=process, callbacks=fault_drill_from_env())
        else:
            overrides = _overrides(args)
            config = resolve_config(args.recipe, overrides)
            get_entry(config.model)  # unknown model names fail here, with suggestions
            _refuse_ignored_val_split(overrides, config.data)
            if launched_by_torchrun() and not args.out:
                raise UserError("under torchrun pass --out: every rank and every restart must use one run folder")
            out = Path(args.out) if args.out else _default_out(config)
            with distributed_session(config.device) as process:
                callbacks = fault_drill_from_env()
                own = own_checkpoint(out) if restart_count() > 0 and check_shared_run_dir(process, out) else None
                if own is not None:  # torchrun restarted the group: continue this job's run
                    result = resume(out, checkpoint=own, process=process, callbacks=callbacks)
                else:  # the Trainer refuses a folder that already holds a run
                    result = Trainer(config, out, process=process, callbacks=callbacks).fit()
    except (ConfigError, DataError) as exc:
        raise UserError(str(exc)) from None
    except NonFiniteLossError as exc:
        print(f"resnets train: {exc}", file=sys.stderr)
        return 1
    if global_rank() != 0:
        return 0  # under torchrun, rank 0 reports
    summary = result.summary()
    print(f"run folder: {summary['run_dir']}")
    for key in ("best_val_top1", "final_val_top1", "final_val_top5"):
        if summary[key] is not None:
            print(f"{key}: {summary[key] * 100:.2f}%")
    print(f"train_minutes: {summary['train_minutes']:.2f}  steps: {summary['steps']}  epochs: {summary['epochs']}")
    return 0
