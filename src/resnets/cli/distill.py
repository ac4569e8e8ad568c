"""`resnets distill`: train a student from a teacher checkpoint's soft targets plus the labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import positive_float, unit_fraction


def register(subparsers: argparse._SubParsersAction) -> None:
    from .prune import add_finetune_args

    p = subparsers.add_parser(
        "distill", help="knowledge distillation: train a student model from a teacher checkpoint",
        description="Train --student with alpha x T^2 x KL(teacher_T || student_T) + (1 - alpha) x cross-entropy "
                    "(Hinton et al. 2015), using the regular trainer (schedules, bf16, checkpoints). The student "
                    "ends up a normal checkpoint in --out/best.safetensors.",
        epilog="example: resnets distill --teacher runs/r56/best.safetensors --student resnet20 --data cifar10 "
               "--epochs 30 --out runs/r20-kd")
    p.add_argument("--teacher", help="teacher checkpoint (required, with --student, --data and --out, unless "
                   "--resume)")
    p.add_argument("--teacher-model", metavar="NAME", help="architecture of a --teacher without a spec "
                   "(a torchvision/timm state dict), e.g. resnet50")
    p.add_argument("--student", help="student model name (resnets models) or checkpoint to start from")
    p.add_argument("--student-model", metavar="NAME", help="architecture of a --student checkpoint without a spec "
                   "(a torchvision/timm state dict), e.g. resnet18")
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a distillation run from RUN_DIR/last.pt with the "
                   "arguments recorded in RUN_DIR/distill.yaml (the teacher must still be where it was; only "
                   "--workers and --device may be given with it)")
    p.add_argument("--temperature", type=positive_float, default=4.0)
    p.add_argument("--alpha", type=unit_fraction, default=0.9, help="weight of the soft-target term (0-1)")
    add_finetune_args(p, lr=0.1)
    p.set_defaults(func=run, parser=p)


def check_student_head(student, metadata: dict, origin: str, classes: list[str]) -> None:
    """Refuse a student checkpoint whose head predicts other classes, or the same ones in another order, than
    the teacher and the data: distillation would fail mid-run or silently swap labels. The comparison is
    ``resnets finetune --keep-head``'s (``check_head``); only the advice differs."""
    from ..transfer import SourceInfo, check_head

    info = SourceInfo(origin=origin, spec=student.spec, num_classes=student.spec.num_classes, metadata=metadata)
    check_head(info, len(classes), replace_head=False, class_names=list(classes),
               advice="the student must predict the teacher's classes in the same order. Start from a checkpoint "
                      "trained on these classes, or give a model name (e.g. --student resnet20) to train a fresh "
                      "student")


def _teacher_and_data(args: argparse.Namespace):
    """The teacher network, its metadata and the data split, from the teacher's saved classes and statistics."""
    from ..deploy.data import load_deploy_data
    from . import UserError
    from .args import load_network
    from .prune import compression_hold_out, refuse_non_rgb

    teacher, metadata = load_network(args.teacher, args.teacher_model, "--teacher", "--teacher-model")
    refuse_non_rgb(teacher, "--teacher", "distill")
    val_split, seed = compression_hold_out(args, metadata)
    data = load_deploy_data(args.data, metadata, 0, val_split=val_split, seed=seed,
                            in_chans=teacher.spec.in_chans, conv_type=teacher.spec.conv_type, source=args.teacher)
    if teacher.spec.num_classes != data.num_classes:
        raise UserError(f"the teacher predicts {teacher.spec.num_classes} classes but --data has {data.num_classes}; "
                        "distil on the data the teacher was trained for")
    return teacher, metadata, data


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from ..deploy.distill import DistillationLoss
    from ..factory import create_model
    from ..train import Trainer
    from ..train.distributed import fault_drill_from_env
    from ..train.trainer import check_new_run_dir, resume
    from . import UserError
    from .args import check_output
    from .args import load_network
    from .prune import finetune_config, refuse_non_rgb
    from .resuming import read_record, refuse_changes_on_resume, require, resume_folder, write_record

    if args.resume:
        refuse_changes_on_resume(args, may_change=("workers", "device"))
        folder = resume_folder(args.resume)
        saved = read_record(folder, "distill")
        if not os.path.exists(saved.teacher):
            raise UserError(f"the run was distilled from --teacher {saved.teacher}, which is not there any more "
                            f"(relative paths are from the folder the run started in); put it back to resume {folder}")
        teacher, _, data = _teacher_and_data(saved)
        kept = {key: getattr(args, key) for key in ("workers", "device") if getattr(args, key) is not None}
        result = resume(folder, kept, splits=data.splits, callbacks=fault_drill_from_env(),
                        loss_fn=DistillationLoss(teacher, temperature=saved.temperature, alpha=saved.alpha))
        name, out = result.config.model, folder
    else:
        require(args, "teacher", "student", "data", "out")
        student_is_file = os.path.exists(args.student)
        if args.student_model and not student_is_file:
            raise UserError(f"--student-model names the architecture of a --student checkpoint file, but "
                            f"{args.student!r} is not a file; give the model name as --student alone")
        check_output(args.out, reads=[args.teacher, args.student if student_is_file else None], directory=True,
                     data=[args.data])
        check_new_run_dir(args.out)
        teacher, metadata, data = _teacher_and_data(args)
        if student_is_file:
            student, student_meta = load_network(args.student, args.student_model, "--student", "--student-model")
            refuse_non_rgb(student, "--student", "distill")
            check_student_head(student, student_meta, f"--student {args.student}", data.splits.classes)
            name = str(student_meta.get("model_name") or args.student_model or "student")
        else:
            name = args.student
        config = finetune_config(args, name, metadata)
        if not student_is_file:  # a fresh student's initialisation follows the run's seed, so reruns match
            torch.manual_seed(config.seed)
            student = create_model(args.student, num_classes=data.num_classes)
        os.makedirs(args.out, exist_ok=True)
        write_record(Path(args.out), "distill", args)
        loss = DistillationLoss(teacher, temperature=args.temperature, alpha=args.alpha)
        result = Trainer(config, args.out, splits=data.splits, model=student, loss_fn=loss,
                         callbacks=fault_drill_from_env()).fit()
        out = Path(args.out)
    if result.final_val_top1 is not None:
        print(f"distilled {name}: top-1 {100 * result.final_val_top1:.2f}%; checkpoint {out / 'best.safetensors'}")
    return 0
