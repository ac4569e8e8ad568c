"""How close a model's convolutions train to this machine's peak: each convolution of the model, timed alone
(forward, and forward + backward) at the training batch in channels-last, in the precision training uses on
this machine (bf16 autocast where the CPU has native bf16, fp32 elsewhere, as ``precision: auto`` resolves), as
GFLOP/s beside a matmul of the same precision measured in the same run; then whole training steps in a few
layouts (``--compile`` adds a ``torch.compile``d step). Answers "is the step slow, or is the hardware the limit?".

    .venv/bin/python benchmarks/conv_efficiency.py --model resnet_airbench_narrow --batch 512 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


def median_seconds(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv_inputs(model: nn.Module, image_size: int) -> list[tuple[nn.Conv2d, tuple[int, ...]]]:
    """Every Conv2d with the input shape it sees in one forward pass (batch 1)."""
    seen: list[tuple[nn.Conv2d, tuple[int, ...]]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((m, tuple(args[0].shape))))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_airbench_narrow")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 where the CPU runs it natively, else fp32 (what the recipes train in)")
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd whole step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from resnets import create_model
    from resnets.deploy.bench import matmul_peak_gflops
    from resnets.precision import cpu_name, resolve_precision

    args.precision = resolve_precision(args.precision, "cpu")
    bf16 = args.precision == "bf16"
    peak = matmul_peak_gflops(torch.bfloat16 if bf16 else torch.float32)  # the peak `resnets bench` reports
    print(f"{args.model}, batch {args.batch}, {args.image_size} px, {args.threads} threads, {args.precision}, "
          f"{cpu_name()}; {args.precision} matmul (1024^3): {peak:.0f} GFLOP/s")
    print(f"{'convolution':32s} {'fwd ms':>8s} {'GFLOP/s':>8s} {'f+b ms':>8s} {'GFLOP/s':>8s} {'of peak':>8s}")
    total_ms = total_flop = 0.0
    for conv, shape in conv_inputs(create_model(args.model), args.image_size):
        conv = conv.train().to(memory_format=torch.channels_last)
        # the first convolution sees the images, whose gradient training never computes
        x = torch.randn(args.batch, *shape[1:]).to(memory_format=torch.channels_last).requires_grad_(shape[1] != 3)

        def forward():
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return conv(x)

        out = forward()
        grad = torch.randn_like(out)

        def forward_backward():
            forward().backward(grad)

        macs = args.batch * out.shape[2] * out.shape[3] * conv.weight.numel()
        fwd, both = median_seconds(forward, args.repeats), median_seconds(forward_backward, args.repeats)
        flop = (6 if x.requires_grad else 4) * macs  # forward, weight gradient, input gradient
        label = f"{conv.in_channels}->{conv.out_channels} k{conv.kernel_size[0]} @{shape[2]}px"
        print(f"{label:32s} {fwd * 1e3:8.1f} {2 * macs / fwd / 1e9:8.0f} {both * 1e3:8.1f} "
              f"{flop / both / 1e9:8.0f} {flop / both / 1e9 / peak:8.0%}")
        total_ms += both * 1e3
        total_flop += flop
    print(f"{'all convolutions':32s} {'':8s} {'':8s} {total_ms:8.1f} {total_flop / total_ms / 1e6:8.0f} "
          f"{total_flop / total_ms / 1e6 / peak:8.0%}")
    for index, (label, step_ms) in enumerate(whole_steps(args).items()):
        share = f"  (the convolutions above: {total_ms / step_ms:.0%} of it)" if index == 0 else ""
        print(f"whole training step, {label:30s} {step_ms:8.1f} ms{share}")
    return 0


def whole_steps(args: argparse.Namespace) -> dict[str, float]:
    """Milliseconds per SGD step of the whole model (cross-entropy, batch ``args.batch``) in a few layouts."""
    from resnets import create_model

    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 10, (args.batch,))
    cl, nchw = torch.channels_last, torch.contiguous_format
    # (label, memory format, autocast, bf16 weights, compiled)
    if args.precision == "bf16":
        layouts = [("bf16 autocast, channels-last", cl, True, False, False),
                   ("bf16 autocast, NCHW", nchw, True, False, False),
                   ("bf16 weights, channels-last", cl, False, True, False)]
    else:
        layouts = [("fp32, channels-last", cl, False, False, False), ("fp32, NCHW", nchw, False, False, False)]
    if args.compile:
        layouts.append((f"{layouts[0][0]}, compiled", cl, layouts[0][2], False, True))
    result = {}
    for label, memory_format, autocast, pure_bf16, compiled in layouts:
        model = create_model(args.model).train().to(memory_format=memory_format)
        x = images.to(memory_format=memory_format)
        if pure_bf16:
            model, x = model.bfloat16(), x.bfloat16()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        forward = torch.compile(model) if compiled else model

        def step():
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                loss = nn.functional.cross_entropy(forward(x).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        result[label] = median_seconds(step, args.repeats) * 1e3
    return result


if __name__ == "__main__":
    raise SystemExit(main())
