"""`resnets bench`: inference latency, throughput and efficiency beside torchvision's eager model."""

from __future__ import annotations

import argparse

from .args import positive_int


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _batches(text: str) -> list[int]:
    """``--batch 1,32``: positive batch sizes, checked at parse time."""
    try:
        batches = [int(b) for b in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers such as 1,32") from None
    if not batches or any(b < 1 for b in batches):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive batch sizes such as 1,32")
    return batches


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
    p.add_argument("--model", help="a resnets model name (default resnet50)")
    p.add_argument("--checkpoint", help="time this checkpoint's network instead of a fresh one (int8 calibrates on "
                   "--calib-data when given, else on random images: speed only); --model may only repeat its "
                   "architecture, or name it for a checkpoint without a spec (a torchvision or timm state dict)")
    p.add_argument("--batch", type=_batches, default=[1, 32], help="comma-separated batch sizes")
    p.add_argument("--precision", default="fp32,bf16,int8", help="comma-separated: fp32, bf16, int8")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd variants (slow to build)")
    p.add_argument("--onnxruntime", action="store_true", help="also time onnxruntime on the exported fp32 model")
    p.add_argument("--openvino", action="store_true", help="also time OpenVINO on the exported ONNX model, in each of "
                   "--precision's fp32, bf16 and int8 (int8: the ONNX QDQ file, calibrated like the int8 rows)")
    p.add_argument("--calib-data", metavar="DIR", help="images to calibrate int8 with")
    p.add_argument("--rounds", type=positive_int, default=10, help="timed calls of each variant (round-robin)")
    p.add_argument("--input-size", type=positive_int, metavar="PIXELS", help="image side (default: 224, or 32 for CIFAR nets)")
    p.add_argument("--compare", help="comma-separated models for the backbone table, e.g. "
                   "resnet50,densenet121,efficientnet_b0,mobilenet_v3_large (torchvision names allowed), timed at each --batch")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy.bench import benchmark, compare_architectures, format_compare, format_rows
    from ..deploy.export import ExportError, input_size_at
    from ..factory import create_model
    from . import UserError
    from .args import check_output

    batches = args.batch
    precisions = _csv(args.precision)
    unknown = [p for p in precisions if p not in ("fp32", "bf16", "int8")]
    if unknown:
        raise UserError(f"--precision {unknown[0]!r} is unknown; choose from fp32, bf16, int8")
    if args.input_size is not None and args.input_size < 8:
        raise UserError("--input-size must be at least 8 pixels")
    if args.json:
        check_output(args.json, reads=[args.checkpoint], option="--json", kind=".json")
    if args.compare and (args.checkpoint or args.model):
        raise UserError("--compare times fresh backbones by name; it takes no --model or --checkpoint (list the "
                        "models in --compare)")
    output: dict = {}
    if args.compare:
        names = _csv(args.compare)
        if not names:
            raise UserError("--compare needs model names, e.g. resnet50,densenet121")
        side = args.input_size or 224
        rows = [row for batch in batches
                for row in compare_architectures(names, batch=batch, rounds=args.rounds, input_size=(3, side, side))]
        print(format_compare(rows))
        output["compare"] = rows
    else:
        metadata = {}
        if args.checkpoint:
            from .args import load_network

            # --model names the architecture of a spec-less state dict; beside a spec it may only repeat it
            model, metadata = load_network(args.checkpoint, args.model, "--checkpoint", "--model",
                                           name_for_spec_less_only=True)
            name = _checkpoint_name(model.spec, metadata, args.model, args.checkpoint)
        else:
            name = args.model or "resnet50"
            model = create_model(name)
        calibration = None
        if args.calib_data and "int8" in precisions:
            from ..deploy.data import load_deploy_data

            # at the size timed: the int8 ONNX graph OpenVINO runs takes no other
            side = args.input_size or model.spec.default_image_size
            calibration = load_deploy_data(args.calib_data, {**metadata, "image_size": side}, 256,
                                           in_chans=model.spec.in_chans, conv_type=model.spec.conv_type).calibration
        try:
            rows, env = benchmark(model.eval(), name, batches, precisions, use_compile=args.compile,
                                  onnxruntime=args.onnxruntime, openvino=args.openvino, rounds=args.rounds,
                                  calibration=calibration,
                                  input_size=input_size_at(model, args.input_size),
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
        from ..jsonfile import write_json

        write_json(args.json, output)
    return 0


def _checkpoint_name(spec, metadata: dict, model: str | None, checkpoint: str) -> str:
    """The architecture name of a --checkpoint (which picks the torchvision baseline). A --model beside it must
    name the same architecture: the checkpoint's network is what gets timed."""
    from ..transfer.source import zoo_name
    from ..zoo import get_spec
    from . import UserError

    own = str(metadata.get("model_name") or zoo_name(spec) or "checkpoint")
    if model is None or model == own:
        return own
    same = get_spec(model).replace(num_classes=spec.num_classes, in_chans=spec.in_chans, paper="") == \
        spec.replace(paper="")
    if not same:
        raise UserError(f"--checkpoint {checkpoint} is a {own} ({spec.describe()}), not --model {model}; the "
                        "checkpoint's network is what is timed, so drop --model (or drop --checkpoint to time a "
                        f"fresh {model})")
    return model

