"""`resnets models [PATTERN]`: the model table."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models", help="list the registered models with parameters, GMACs and their paper",
        description="List registered models matching PATTERN (shell-style, e.g. 'resnet*', '*wrn*') with their "
                    "parameter count, multiply-accumulates at their native input size and the paper they come from.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-macs", action="store_true", help="skip the MAC count (faster for the deepest nets)")
    p.add_argument("--pretrained", action="store_true",
                   help="only models with published (torchvision) weights, with their tags: `create_model(\"NAME.TAG\")` "
                        "or `--from TAG` load them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..model import ResNet
    from ..profile import profile
    from ..zoo import get_entry, list_models, pretrained_tags

    names = list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        which = "model with published weights" if args.pretrained else "model"
        raise UserError(f"no {which} matches {args.pattern!r}; try `resnets models{' --pretrained' * args.pretrained}` "
                        "for the full list")
    rows = []
    for name in names:
        entry = get_entry(name)
        model = ResNet(entry.spec)
        if args.no_macs:
            params, gmacs = sum(p.numel() for p in model.parameters()), None
        else:
            prof = profile(model, entry.input_size)
            params, gmacs = prof.params, prof.gmacs
        rows.append({"name": name, "params": params, "gmacs": gmacs, "input": "x".join(map(str, entry.input_size)),
                     "paper": entry.paper, "torchvision": entry.torchvision, "timm": entry.timm,
                     "weights": pretrained_tags(name)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max([20] + [len(r["name"]) for r in rows])  # the name column fits the longest name
    last = "weights" if args.pretrained else "paper"
    print(f"{'model':<{width}} {'params':>9} {'GMACs':>8}  {'input':<13} {last}")
    for r in rows:
        g = f"{r['gmacs']:.3f}" if r["gmacs"] is not None else "-"
        print(f"{r['name']:<{width}} {r['params'] / 1e6:>8.2f}M {g:>8}  {r['input']:<13} "
              f"{', '.join(r['weights']) if args.pretrained else r['paper']}")
    return 0
