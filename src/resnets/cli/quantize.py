"""`resnets quantize`: int8 post-training quantization with calibration, and its accuracy cost."""

from __future__ import annotations

import argparse

from .args import finite_float, non_negative_float, positive_int, val_split


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize", help="int8-quantize a checkpoint (calibrated) and report the accuracy change",
        description="Quantize a checkpoint to int8 (FX graph mode, x86 backend), calibrating on training images "
                    "from --data and measuring fp32 and int8 top-1 on a held-out split of it. With --qat-epochs, "
                    "quantization-aware fine-tuning follows when post-training quantization loses more than "
                    "--max-drop points.",
        epilog="example: resnets quantize --checkpoint runs/r20/best.safetensors --data cifar10 --out r20.int8.pt")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", metavar="NAME", help="architecture of a checkpoint without a spec (a torchvision or "
                   "timm state dict), e.g. resnet50")
    p.add_argument("--data", required=True, help="the training images (ImageFolder tree or cifar10)")
    p.add_argument("--out", required=True, help="where to write the int8 model (.pt, weights only)")
    p.add_argument("--calib-images", type=positive_int, default=512)
    p.add_argument("--val-split", type=val_split,
                   help="held-out fraction (or count) to measure on; default: the hold-out the checkpoint's run "
                        "recorded (its val_split and split seed, so none of its training images), else 0.1")
    p.add_argument("--qat-epochs", type=non_negative_float, default=0.0, help="quantization-aware fine-tuning epochs if needed")
    p.add_argument("--max-drop", type=finite_float, default=0.3,
                   help="top-1 points PTQ may lose before QAT runs (negative: QAT unless PTQ gains that much)")
    p.set_defaults(func=run)


def top1(model, loader, num_classes: int) -> float:
    """Top-1 accuracy on a loader of (normalised images, labels)."""
    from ..evaluate.metrics import evaluate

    return evaluate(model, loader, num_classes=num_classes).top1


def run(args: argparse.Namespace) -> int:
    from ..deploy.data import load_deploy_data
    from ..deploy.quantize import CalibrationError, quantize_int8, quantization_aware_finetune, save_quantized
    from . import UserError
    from .args import check_output, load_network

    check_output(args.out, reads=[args.checkpoint], kind=(".pt", ".pth"), data=[args.data])
    model, metadata = load_network(args.checkpoint, args.model, "--checkpoint", "--model")
    data = load_deploy_data(args.data, metadata, args.calib_images, val_split=args.val_split,
                            in_chans=model.spec.in_chans, conv_type=model.spec.conv_type, source=args.checkpoint)
    if data.val_loader is None:
        raise UserError("--data has no held-out images to measure the accuracy change on; use --val-split > 0")
    try:
        quantized = quantize_int8(model, data.calibration)
    except CalibrationError as exc:
        raise UserError(str(exc)) from None
    fp32, int8 = top1(model, data.val_loader, data.num_classes), top1(quantized, data.val_loader, data.num_classes)
    print(f"post-training int8: top-1 {100 * fp32:.2f}% -> {100 * int8:.2f}% ({100 * (int8 - fp32):+.2f} points), "
          f"calibrated on {quantized.calibration_images} images")
    if args.qat_epochs > 0 and 100 * (fp32 - int8) > args.max_drop:
        quantized = quantization_aware_finetune(model, data.splits, args.qat_epochs)
        int8 = top1(quantized, data.val_loader, data.num_classes)
        print(f"after {args.qat_epochs:g} epochs of quantization-aware training: top-1 {100 * int8:.2f}% "
              f"({100 * (int8 - fp32):+.2f} points vs fp32), fine-tuned on {quantized.qat_images} images")
    # the preprocessing it was calibrated and measured with travels with it: a deployer needs it to feed it images
    save_quantized(quantized, args.out, {"fp32_top1": fp32, "int8_top1": int8, **data.preprocessing})
    print(f"wrote {args.out}")
    return 0
