"""`resnets bench`: inference latency, throughput and efficiency beside torchvision's eager model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark inference (fp32/bf16/int8, compile, onnxruntime, OpenVINO) against torchvision",
        description="Time a model's inference forms round-robin in one process: torchvision's eager fp32 NCHW "
                    "model of the same architecture (the baseline), ours eager, channels-last + folded BN, bf16, "
                    "int8 (FX x86; PT2E + torch.compile with --compile), optionally compiled, onnxruntime and OpenVINO. "
                    "Reports p50/p90 latency, images/s, achieved GFLOP/s (2 x MACs), its share of the matmul peak "
                    "measured in the same run, and the speed-up over the baseline. --compare prints a latency/"
                    "params/MACs table of several backbones (ours and torchvision's).",
        epilog="example: resnets bench --model resnet50 --batch 1,32 --precision fp32,bf16,int8")
    p.add_argument("--model", default="resnet50", help="a resnets model name")
    p.add_argument("--checkpoint", help="time this checkpoint's network instead of a fresh one (int8 calibrates on "
                   "--calib-data when given, else on random images: speed only)")
    p.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--precision", default="fp32,bf16,int8", help="comma-separated: fp32, bf16, int8")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd variants (slow to build)")
    p.add_argument("--onnxruntime", action="store_true", help="also time onnxruntime on the exported fp32 model")
    p.add_argument("--openvino", action="store_true", help="also time OpenVINO on the exported ONNX model, in each of "
                   "--precision's fp32, bf16 and int8 (int8: the ONNX QDQ file, calibrated like the int8 rows)")
    p.add_argument("--calib-data", metavar="DIR", help="images to calibrate int8 with")
    p.add_argument("--rounds", type=int, default=10, help="timed calls of each variant (round-robin)")
    p.add_argument("--input-size", type=int, metavar="PIXELS", help="image side (default: 224, or 32 for CIFAR nets)")
    p.add_argument("--compare", help="comma-separated models for the backbone table, e.g. "
                   "resnet50,densenet121,efficientnet_b0,mobilenet_v3_large (torchvision names allowed)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy.bench import benchmark, compare_architectures, format_compare, format_rows
    from ..deploy.export import ExportError
    from ..factory import create_model
    from . import UserError

    try:
        batches = [int(b) for b in _csv(args.batch)]
    except ValueError:
        raise UserError(f"--batch {args.batch!r} must be comma-separated integers such as 1,32") from None
    if not batches or any(b < 1 for b in batches):
        raise UserError("--batch needs positive batch sizes such as 1,32")
    precisions = _csv(args.precision)
    unknown = [p for p in precisions if p not in ("fp32", "bf16", "int8")]
    if unknown:
        raise UserError(f"--precision {unknown[0]!r} is unknown; choose from fp32, bf16, int8")
    if args.rounds < 1:
        raise UserError("--rounds must be at least 1")
    if args.input_size is not None and args.input_size < 8:
        raise UserError("--input-size must be at least 8 pixels")
    output: dict = {}
    if args.compare:
        side = args.input_size or 224
        rows = compare_architectures(_csv(args.compare), batch=batches[0], rounds=args.rounds, input_size=(3, side, side))
        print(format_compare(rows))
        output["compare"] = rows
    else:
        metadata = {}
        if args.checkpoint:
            from ..weights import model_from_checkpoint

            model, ckpt = model_from_checkpoint(args.checkpoint)
            metadata = ckpt.metadata
            name = str(metadata.get("model_name") or args.model)
        else:
            model, name = create_model(args.model), args.model
        calibration = None
        if args.calib_data and "int8" in precisions:
            from ..deploy.data import load_deploy_data

            calibration = load_deploy_data(args.calib_data, metadata, 256).calibration
        try:
            rows, env = benchmark(model.eval(), name, batches, precisions, use_compile=args.compile,
                                  onnxruntime=args.onnxruntime, openvino=args.openvino, rounds=args.rounds,
                                  calibration=calibration,
                                  input_size=(model.spec.in_chans, args.input_size, args.input_size)
                                  if args.input_size else None,
                                  log=lambda m: print(m, flush=True))
        except ExportError as exc:  # a runtime asked for (onnxruntime, openvino) is missing
            raise UserError(str(exc)) from None
        print(format_rows(rows))
        bf16_peak = env["peak_bf16_gflops"]
        print(f"machine: {env['cpu']}, {env['threads']} threads, torch {env['torch']}; matmul peak "
              f"fp32 {env['peak_fp32_gflops']:.0f} GFLOP/s, bf16 "
              + (f"{bf16_peak:.0f} GFLOP/s" if bf16_peak is not None else "not timed (emulated here, no bf16 rows)"))
        output = {"rows": [r.as_dict() for r in rows], "env": env}
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=2))
    return 0
