"""`resnets distill`: train a student from a teacher checkpoint's soft targets plus the labels."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from .prune import add_finetune_args

    p = subparsers.add_parser(
        "distill", help="knowledge distillation: train a student model from a teacher checkpoint",
        description="Train --student with alpha x T^2 x KL(teacher_T || student_T) + (1 - alpha) x cross-entropy "
                    "(Hinton et al. 2015), using the regular trainer (schedules, bf16, checkpoints). The student "
                    "ends up a normal checkpoint in --out/best.safetensors.",
        epilog="example: resnets distill --teacher runs/r56/best.safetensors --student resnet20 --data cifar10 "
               "--epochs 30 --out runs/r20-kd")
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--student", required=True, help="student model name (resnets models) or checkpoint to start from")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the soft-target term (0-1)")
    add_finetune_args(p, lr=0.1)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from ..deploy.data import load_deploy_data
    from ..deploy.distill import DistillationLoss
    from ..factory import create_model
    from ..train import Trainer
    from ..weights import model_from_checkpoint
    from . import UserError
    from .prune import finetune_config

    if args.temperature <= 0:
        raise UserError(f"--temperature {args.temperature} must be positive (4 is common)")
    if not 0 <= args.alpha <= 1:
        raise UserError(f"--alpha {args.alpha} must be between 0 and 1")
    teacher, ckpt = model_from_checkpoint(args.teacher)
    data = load_deploy_data(args.data, ckpt.metadata, 0, val_split=args.val_split)
    num_classes = data.num_classes
    if teacher.spec.num_classes != num_classes:
        raise UserError(f"the teacher predicts {teacher.spec.num_classes} classes but --data has {num_classes}; "
                        "distil on the data the teacher was trained for")
    if os.path.exists(args.student):
        student, student_ckpt = model_from_checkpoint(args.student)
        name = str(student_ckpt.metadata.get("model_name") or "student")
    else:
        student, name = create_model(args.student, num_classes=num_classes), args.student
    config = finetune_config(args, name, ckpt.metadata)
    loss = DistillationLoss(teacher, temperature=args.temperature, alpha=args.alpha)
    result = Trainer(config, args.out, splits=data.splits, model=student, loss_fn=loss).fit()
    if result.final_val_top1 is not None:
        print(f"distilled {name}: top-1 {100 * result.final_val_top1:.2f}%; checkpoint {args.out}/best.safetensors")
    return 0
