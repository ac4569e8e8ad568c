"""CIFAR-10 compression experiments for docs/benchmarks.md: fp32 vs int8, pruned to 50% of MACs
after fine-tuning, and a distilled resnet20 vs the same resnet20 trained alone on the same budget.

Every stage is a separate command writing its numbers to ``<out>/results.json``; the figures in
docs/benchmarks.md came from running these in order under one hold of the shared heavy lock:

    python benchmarks/cifar_compression.py train --model resnet20 --minutes 3
    python benchmarks/cifar_compression.py quantize --model resnet20
    python benchmarks/cifar_compression.py prune --model resnet20 --fraction 0.5 --minutes 1.5
    python benchmarks/cifar_compression.py train --model resnet56 --minutes 7
    python benchmarks/cifar_compression.py quantize --model resnet56
    python benchmarks/cifar_compression.py distill --teacher resnet56 --student resnet20
    python benchmarks/cifar_compression.py openvino --model resnet20      # (and resnet56) OpenVINO fp32 / bf16 / int8

The distilled student gets exactly the optimizer steps the resnet20 baseline took (same budget).
Validation is a seeded, stratified 5,000-image hold-out of the shared training set (never trained on).
``--device cuda`` runs the same stages on a GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

DATA = "/work/shared/data/cifar10/train"


def _config(args, model: str, **extra):
    from resnets.train import resolve_config

    values = {"model": model, "data": args.data, "val_split": args.val_count, "batch_size": args.batch_size, "lr": 0.2,
              "schedule": "onecycle", "peak_at": 0.2, "nesterov": True, "weight_decay": 5e-4,
              "augment": {"crop_padding": 4, "pad_mode": "zeros", "flip": True}, "label_smoothing": 0.0,
              "precision": args.precision, "channels_last": True,
              "device": args.device, "eval_batch_size": 500, "progress": False, "tensorboard": False,
              "seed": 0, "workers": 0}
    values.update(extra)
    return resolve_config(None, values)


def _record(out: Path, key: str, value: dict) -> None:
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[key] = value
    path.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(key, json.dumps(value, indent=1))


_SPLITS = None


def _splits(args):
    global _SPLITS
    if _SPLITS is None:
        from resnets.data import load_data

        _SPLITS = load_data(args.data, val_split=args.val_count, seed=0)
    return _SPLITS


def _train(args, name: str, model_name: str, model=None, loss_fn=None, **extra):
    from resnets.train import Trainer

    config = _config(args, model_name, **extra)
    out_dir = Path(args.out) / name
    start = time.time()
    trainer = Trainer(config, out_dir, splits=_splits(args), model=model, loss_fn=loss_fn)
    result = trainer.fit()
    seconds = time.time() - start
    return trainer, {"val_top1": result.final_val_top1, "steps": trainer.step, "epochs": trainer.step / trainer.steps_per_epoch,
                     "seconds": round(seconds, 1), "checkpoint": str(out_dir / "best.safetensors"),
                     "budget": f"{config.time_budget} min" if config.time_budget else f"{trainer.step} steps"}


def _val_accuracy(model, args, precision: str = "fp32") -> float:
    from resnets.data import make_loader
    from resnets.evaluate.metrics import evaluate

    splits = _splits(args)
    loader = make_loader(splits.val, batch_size=500, train=False, mean=splits.mean, std=splits.std)
    return evaluate(model, loader, num_classes=len(splits.classes), precision=precision).top1


def _calibration(args, images: int = 512):
    from resnets.deploy.data import calibration_batches

    return calibration_batches(_splits(args).train, images)  # drawn over every class, as `resnets quantize` does


def cmd_train(args) -> None:
    name = args.name or args.model
    length = {"steps": args.steps} if args.steps else {"time_budget": args.minutes}
    _, info = _train(args, name, args.model, **length)
    _record(Path(args.out), f"train/{name}", info)


def _load(args, name: str):
    from resnets import model_from_checkpoint

    model, _ = model_from_checkpoint(Path(args.out) / name / "best.safetensors")
    return model.eval()


def cmd_quantize(args) -> None:
    from resnets.deploy.quantize import quantize_int8, save_quantized
    from resnets.weights import save_weights

    model = _load(args, args.model)
    fp32 = _val_accuracy(model, args)
    start = time.time()
    calib = _calibration(args, args.calib_images)
    quantized = quantize_int8(model, calib, flow="fx")
    int8 = _val_accuracy(quantized, args)
    out = Path(args.out) / args.model
    save_quantized(quantized, out / "int8.pt")
    save_weights(model, out / "fp32.pt")
    _record(Path(args.out), f"quantize/{args.model}", {
        "fp32_top1": fp32, "int8_top1": int8, "delta_points": 100 * (int8 - fp32),
        "calibration_images": quantized.calibration_images, "seconds": round(time.time() - start, 1),
        "fp32_bytes": (out / "fp32.pt").stat().st_size, "int8_bytes": (out / "int8.pt").stat().st_size})


def cmd_openvino(args) -> None:
    from resnets.deploy.openvino import compile_openvino

    model = _load(args, args.model)
    size = tuple(model.spec.default_input_size)
    record = {"fp32_top1": _val_accuracy(model, args), "eager_bf16_top1": _val_accuracy(model, args, "bf16")}
    calib = _calibration(args, args.calib_images)
    for precision in ("fp32", "bf16", "int8"):
        compiled = compile_openvino(model, precision, input_size=size, calibration_data=calib)
        record[f"openvino_{precision}_top1"] = _val_accuracy(compiled, args)
        record[f"openvino_{precision}_delta_points"] = 100 * (record[f"openvino_{precision}_top1"] - record["fp32_top1"])
    _record(Path(args.out), f"openvino/{args.model}", record)


def cmd_prune(args) -> None:
    from resnets.deploy.prune import prune_model

    model = _load(args, args.model)
    before = _val_accuracy(model, args)
    result = prune_model(model, args.fraction, criterion=args.criterion)
    after_cut = _val_accuracy(result.model, args)
    name = f"{args.model}-pruned{int(args.fraction * 100)}-{args.criterion}"
    _, info = _train(args, name, args.model, model=result.model, time_budget=args.minutes, lr=args.lr, peak_at=0.1)
    _record(Path(args.out), f"prune/{name}", {
        "top1_before": before, "top1_after_cut": after_cut, "top1_after_finetune": info["val_top1"],
        "delta_points": 100 * (info["val_top1"] - before), "macs_before": result.macs_before,
        "macs_after": result.macs_after, "params_before": result.params_before, "params_after": result.params_after,
        "block_widths": list(result.block_widths), "finetune": info})


def cmd_distill(args) -> None:
    from resnets import create_model
    from resnets.deploy.distill import DistillationLoss

    teacher = _load(args, args.teacher)
    results = json.loads((Path(args.out) / "results.json").read_text())
    baseline_name = args.baseline or args.student
    if f"train/{baseline_name}" not in results:
        raise SystemExit(f"no train/{baseline_name} in {Path(args.out) / 'results.json'}: train the baseline first "
                         f"(train --model {args.student} --name {baseline_name})")
    baseline = results[f"train/{baseline_name}"]
    student = create_model(args.student, num_classes=len(_splits(args).classes))
    loss = DistillationLoss(teacher, temperature=args.temperature, alpha=args.alpha)
    name = f"{args.student}-distilled-from-{args.teacher}"
    _, info = _train(args, name, args.student, model=student, loss_fn=loss, steps=baseline["steps"])
    _record(Path(args.out), f"distill/{name}", {
        "baseline": baseline_name, "student_alone_top1": baseline["val_top1"], "distilled_top1": info["val_top1"],
        "delta_points": 100 * (info["val_top1"] - baseline["val_top1"]), "teacher_top1": results[f"train/{args.teacher}"]["val_top1"],
        "temperature": args.temperature, "alpha": args.alpha, "steps": info["steps"], "distill": info})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--out", default="runs/deploy")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto",
                        help="auto (the default): bf16 where the CPU or GPU has it natively, fp32 elsewhere; the "
                             "figures in docs/benchmarks.md ran in bf16 on a CPU with AVX-512 BF16")
    parser.add_argument("--val-count", type=int, default=5000, help="held-out validation images")
    parser.add_argument("--batch-size", type=int, default=128)
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("train")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--steps", type=int, help="a fixed number of optimizer steps instead of --minutes")
    p.add_argument("--name", help="run name (default: the model name)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("quantize")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--calib-images", type=int, default=512)
    p.set_defaults(func=cmd_quantize)
    p = sub.add_parser("openvino")
    p.add_argument("--model", required=True)
    p.add_argument("--calib-images", type=int, default=512)
    p.set_defaults(func=cmd_openvino)
    p = sub.add_parser("prune")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--criterion", default="l1")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=0.05)
    p.set_defaults(func=cmd_prune)
    p = sub.add_parser("distill")
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--student", default="resnet20")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--baseline", help="the student-alone train run to match in steps and compare with "
                   "(default: the run named like the student)")
    p.set_defaults(func=cmd_distill)
    args = parser.parse_args()
    torch.manual_seed(0)
    from resnets.data import DataError
    from resnets.train import ConfigError

    try:
        args.func(args)
    except (ConfigError, DataError) as exc:  # above all a stage rerun into a folder that holds its earlier run: nothing is overwritten
        raise SystemExit(f"cifar_compression.py {args.stage}: {exc}") from None


if __name__ == "__main__":
    main()
