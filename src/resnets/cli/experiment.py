"""`resnets experiment degradation`: the plain-vs-residual depth experiment of He et al. 2015."""

from __future__ import annotations

import argparse

from .args import check_output, device


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experiment", help="reproducible experiments (degradation: plain vs residual depth)",
                              description="Run a named experiment end to end.")
    sub = p.add_subparsers(dest="experiment", metavar="NAME")
    d = sub.add_parser(
        "degradation", help="train plain and residual twins at several depths with one recipe",
        description="Train plainD and resnetD for each depth D with the same data, seed and schedule, and write "
                    "degradation.png (training and validation error curves, He et al. Fig. 6 layout) and "
                    "degradation.json (final numbers and full curves). Twins already trained with the same budget "
                    "in --out are kept, so depths can be added one call at a time.",
        epilog="example: resnets experiment degradation --data cifar10 --depths 20,56 "
               "--budget epochs=3,train_subset=10000 --out runs/degradation")
    d.add_argument("--data", required=True, help="cifar10, cifar100 or an in-memory-sized ImageFolder tree")
    d.add_argument("--depths", default="20,56", help="comma list of CIFAR depths with a plain and a residual model: 20, 32, 44, 56, 110 (default 20,56)")
    d.add_argument("--budget", default="", help="KEY=VALUE overrides: epochs, train_subset, val_subset, batch_size, "
                                                 "lr, weight_decay, warmup, log_points, bf16 (0, 1 or auto: bf16 where the "
                                                 "device runs it faster than fp32, the default), channels_last, seed")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--device", type=device, default="cpu")
    d.set_defaults(func=run_degradation_cmd)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def parse_depths(text: str) -> list[int]:
    """``"20,56"`` -> [20, 56]; anything else is a one-line error with an example."""
    from ..cli import UserError

    depths = []
    for part in (p.strip() for p in text.split(",")):
        if not part.isdigit() or int(part) < 1:
            raise UserError(f"--depths {text!r}: {part!r} is not a depth; give comma-separated whole numbers of the "
                            "form 6n+2 (20, 32, 44, 56, 110), e.g. --depths 20,56")
        depths.append(int(part))
    return depths


def run_degradation_cmd(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..explain.degradation import Budget, run_degradation

    depths = parse_depths(args.depths)
    try:
        budget = Budget.parse(args.budget)
    except ValueError as exc:
        message = str(exc)
        raise UserError("--" + message if message.startswith("budget ") else f"--budget: {message}") from None
    check_output(args.out, reads=[args.data], option="--out", directory=True, data=[args.data])
    try:
        result = run_degradation(args.data, depths, budget, args.out, device=args.device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for name, row in result.final().items():
        print(f"{name:>10}: train error {row['train_error'] * 100:6.2f}%  val error {row['val_error'] * 100:6.2f}%")
    print(f"wrote {args.out}/degradation.png and degradation.json")
    return 0
