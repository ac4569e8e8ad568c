"""`resnets export`: write a checkpoint as ONNX, a torch.export program or OpenVINO IR, verified after writing."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX, a torch.export program (.pt2) or OpenVINO IR, verified",
        description="Export a resnets checkpoint with a dynamic batch dimension. Right after writing, the file is "
                    "reloaded (onnxruntime / torch.export.load / OpenVINO) and compared with the eager model on the same "
                    "inputs; the command fails with the max absolute difference when it exceeds --tolerance. "
                    "--int8 quantizes first (ONNX: onnxruntime static QDQ; exported-program: PT2E x86; "
                    "openvino: the int8 ONNX graph, int8 weights), calibrated on --calib-data.",
        epilog="example: resnets export --checkpoint runs/r20/best.safetensors --format onnx --out r20.onnx")
    p.add_argument("--checkpoint", required=True, help="a resnets checkpoint (.safetensors / .pt / run folder)")
    p.add_argument("--model", metavar="NAME", help="architecture of a checkpoint without a spec (a torchvision or "
                   "timm state dict), e.g. resnet50")
    p.add_argument("--format", required=True, help="onnx, exported-program or openvino")
    p.add_argument("--out", help="output file (default: next to the checkpoint, .onnx / .pt2 / .xml + .bin)")
    p.add_argument("--int8", action="store_true", help="quantize to int8 (needs --calib-data)")
    p.add_argument("--calib-data", metavar="DIR", help="training images for int8 calibration (ImageFolder or cifar10)")
    p.add_argument("--calib-images", type=positive_int, default=512)
    p.add_argument("--opset", type=positive_int, default=None,
                   help="ONNX opset (default 18; from 18 up to the newest the installed onnx defines)")
    p.add_argument("--tolerance", type=positive_float, default=1e-4,
                   help="max |logit difference| allowed for fp32 (times the largest logit when that is above 1)")
    p.add_argument("--no-verify", action="store_true", help="skip the check (not recommended)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy.export import DEFAULT_OPSET, FORMATS, ExportError, check_opset, export_model, input_size_at
    from ..deploy.quantize import CalibrationError
    from . import UserError
    from .args import check_output, load_network

    if args.format not in FORMATS:
        raise UserError(f"--format {args.format!r} is not supported; choose one of: {', '.join(FORMATS)}")
    if args.calib_data and not args.int8:
        raise UserError("--calib-data calibrates an int8 export; add --int8, or drop --calib-data for fp32")
    if args.int8 and not args.calib_data:
        raise UserError("--int8 needs calibration images: add --calib-data DIR (a few hundred training images "
                        "in an ImageFolder tree, or cifar10)")
    if args.format != "onnx" and args.opset is not None:
        raise UserError("--opset applies to --format onnx only")
    if args.opset is not None:
        try:
            check_opset(args.opset)
        except ExportError as exc:
            raise UserError(f"--opset: {exc}") from None
    suffix = {"onnx": ".onnx", "exported-program": ".pt2", "openvino": ".xml"}[args.format]
    source = Path(args.checkpoint)
    default = (source if source.is_file() else source / "model").with_suffix((".int8" if args.int8 else "") + suffix)
    if args.format == "openvino" and default.with_suffix(".bin") == source:
        default = source.with_suffix(".openvino.xml")  # the IR's .bin would be the input checkpoint itself
    out = check_output(args.out or default, reads=[args.checkpoint], kind=suffix, data=[args.calib_data])
    if out.suffix.lower() != suffix:
        raise UserError(f"--out {out}: --format {args.format} writes a {suffix} file; name it {out.with_suffix(suffix)}")
    if args.format == "openvino":  # the IR's weights land beside the .xml: that file must be safe to write too
        weights = check_output(out.with_suffix(".bin"), reads=[args.checkpoint], data=[args.calib_data])
        if weights.exists() and not out.exists():  # an earlier export's pair may be replaced, a lone .bin not
            raise UserError(f"--out {out}: OpenVINO writes its weights to {weights}, which exists without an IR "
                            f"beside it (not an earlier export's); choose another --out")
    model, metadata = load_network(args.checkpoint, args.model, "--checkpoint", "--model")
    model.eval()
    calibration = None
    if args.int8:
        from ..deploy.data import load_deploy_data

        calibration = load_deploy_data(args.calib_data, metadata, args.calib_images,
                                       in_chans=model.spec.in_chans, conv_type=model.spec.conv_type).calibration
    kwargs = dict(input_size=input_size_at(model, metadata.get("image_size")), verify=not args.no_verify,
                  tolerance=args.tolerance, int8=args.int8, calibration_data=calibration)
    from ..deploy.data import preprocessing_of

    kwargs["metadata"] = preprocessing_of(metadata)  # every format says how to prepare its input
    if args.format == "onnx":
        kwargs["opset"] = args.opset or DEFAULT_OPSET
    try:
        report = export_model(model, out, args.format, **kwargs)
    except (ExportError, CalibrationError) as exc:
        raise UserError(str(exc)) from None
    print(report)
    return 0
