"""Many ``cifar_fast.py`` variants in one process (CUDA start-up and cuDNN autotuning paid once), each appended
as one JSON line to ``--jsonl`` as soon as it finishes, so a run cut short by a time limit keeps what it did.

A variants file maps a label to the extra ``cifar_fast.py`` arguments of that variant:

    base: []
    ls01: [--set, label_smoothing=0.1]
    e14: [--epochs, "14"]

    python benchmarks/cifar_fast_sweep.py --variants sweep.yaml --jsonl out.jsonl -- --device cuda --seeds 0 1 --epochs 11
    python benchmarks/cifar_fast_sweep.py --variants sweep.yaml --only e14,base --jsonl out.jsonl -- ...  # a subset
    .venv/bin/python benchmarks/cifar_fast_sweep.py --show out.jsonl     # the table, best first
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar_fast import main as cifar_fast  # noqa: E402


def show(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: -r["mean_val_top1_tta"])
    for r in rows:
        accs = " / ".join(f"{x['val_top1_tta'] * 100:.2f}" for x in r["runs"])
        secs = statistics.median(x["minutes"] * 60 for x in r["runs"])
        epochs = statistics.mean(x["epochs"] for x in r["runs"])
        print(f"{r['label']:<24} {r['mean_val_top1_tta'] * 100:6.2f}%  ({accs})  {epochs:5.1f} ep  {secs:6.1f} s median  "
              f"{' '.join(r['overrides'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", help="YAML: label -> list of extra cifar_fast.py arguments")
    parser.add_argument("--jsonl", help="append each variant's results here")
    parser.add_argument("--only", metavar="LABELS", help="comma list: run only these variants of the file, in this order")
    parser.add_argument("--show", metavar="JSONL", help="print a results file as a table and exit")
    parser.add_argument("common", nargs=argparse.REMAINDER, help="after --: arguments every variant shares")
    args = parser.parse_args()
    if args.show:
        show(args.show)
        return 0
    if not (args.variants and args.jsonl):
        parser.error("--variants and --jsonl are required (or --show JSONL)")
    variants = yaml.safe_load(Path(args.variants).read_text())
    if not isinstance(variants, dict):
        parser.error(f"{args.variants}: expected a mapping of label -> argument list")
    if args.only:
        labels = [label.strip() for label in args.only.split(",") if label.strip()]
        unknown = [label for label in labels if label not in variants]
        if unknown:
            parser.error(f"--only: no variant {', '.join(unknown)} in {args.variants} (it has {', '.join(variants)})")
        variants = {label: variants[label] for label in labels}
    common = [a for a in args.common if a != "--"]
    for label, extra in variants.items():
        start = time.perf_counter()
        cifar_fast([*common, *[str(a) for a in (extra or [])], "--label", str(label), "--jsonl", args.jsonl])
        print(f"== {label}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
