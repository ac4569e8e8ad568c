"""Grad-CAM gallery on Imagenette with a ResNet-18 trained by this project (short CPU budget).

    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/gradcam_imagenette.py train
    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/gradcam_imagenette.py gallery

`train` runs `resnets train --recipe imagenette` at 112 px under a wall-clock budget (the trainer fits
its one-cycle schedule to it); `gallery` explains two held-out validation images per class (the
split the run held out) for the predicted class and writes docs/figures/gradcam_imagenette.png,
then a calibration/robustness pass and the HTML report of the run with a screenshot.
"""

import argparse
import json
from pathlib import Path

import torch

DATA = "/work/shared/data/imagenette/train"
RUN = Path("runs/imagenette-gradcam")
FIG = Path("docs/figures")
NAMES = {"n01440764": "tench", "n02102040": "springer", "n02979186": "cassette player", "n03000684": "chain saw",
         "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck", "n03425413": "gas pump",
         "n03445777": "golf ball", "n03888257": "parachute"}


def train(minutes: float, device: str) -> None:
    from resnets.cli import main

    status = main(["train", "--recipe", "imagenette", "--data", DATA, "--image-size", "112", "--time-budget",
                   str(minutes), "--out", str(RUN), "--device", device, "--no-progress"])
    if status:  # the command printed why (a folder that already holds a run: pass --run, or use `gallery`)
        raise SystemExit(status)


def gallery(device: str) -> None:
    from resnets.data import load_data, make_loader
    from resnets.evaluate.robustness import pixel_model_from_checkpoint
    from resnets.explain.gradcam import grad_cam, save_gallery
    from resnets.cli import main

    model, ckpt = pixel_model_from_checkpoint(str(RUN / "best.safetensors"), device)
    config = ckpt.metadata["config"]
    splits = load_data(DATA, val_split=config["val_split"], seed=config["seed"], image_size=ckpt.metadata["image_size"],
                       classes=ckpt.metadata["classes"])
    val = splits.val
    picks = []
    for c in range(len(splits.classes)):
        picks.extend((val.labels == c).nonzero().flatten()[:2].tolist())
    # The evaluation pipeline itself (resize, centre crop), in pixels: the model sees what `eval` showed it.
    pick_loader = make_loader(val.subset(torch.tensor(picks)), len(picks), train=False, mean=(0.0, 0.0, 0.0),
                              std=(1.0, 1.0, 1.0), workers=0, device=device)
    x, y = next(iter(pick_loader))
    y = y.cpu()
    cams, predicted = grad_cam(model, x)
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), 1)
    classes = ckpt.metadata["classes"]
    titles = []
    for i in range(len(picks)):
        p, t = int(predicted[i]), int(y[i])
        mark = "" if p == t else f" (true: {NAMES.get(classes[t], classes[t])})"
        titles.append(f"{NAMES.get(classes[p], classes[p])} {probs[i, p] * 100:.0f}%{mark}")
    FIG.mkdir(parents=True, exist_ok=True)
    save_gallery(FIG / "gradcam_imagenette.png", x.cpu(), cams.cpu(), titles, columns=4)
    correct = (predicted.cpu() == y).float().mean().item()
    summary = json.loads((RUN / "summary.json").read_text())
    info = {"gallery_images": len(picks), "gallery_correct": correct, "summary": summary}
    (FIG / "gradcam_imagenette.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    # The same run through the other tools, then its report.
    cams_dir = RUN / "gradcam"
    cams_dir.mkdir(exist_ok=True)
    from resnets.explain.gradcam import save_explanation, saliency
    sal, _ = saliency(model, x[:4], predicted[:4])
    for i in range(4):
        save_explanation(cams_dir / f"gradcam_{i}.png", x[i].cpu(), cams[i].cpu(), sal[i].cpu(), title=titles[i])
    from resnets.evaluate import evaluate

    held_out = make_loader(val, 200, train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), workers=0, device=device)
    result = evaluate(model, held_out, len(classes), classes, device=device)
    result.extra = {"split": "held-out 10% of Imagenette train (the run's validation split)"}
    result.write_json(RUN / "eval_val.json")
    main(["calibrate", "--checkpoint", str(RUN / "best.safetensors"), "--data", DATA, "--out", str(RUN),
          "--device", device])
    main(["report", str(RUN), "--screenshot", str(FIG / "report_screenshot.png")])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["train", "gallery"])
    ap.add_argument("--minutes", type=float, default=7.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--run", default=str(RUN))
    ap.add_argument("--figures", default=str(FIG))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's). On the shared 2-core machine, oversubscribed by other jobs, "
                         "1 thread measured 5x faster per step than 2 (resnet56, batch 64: 2.3 s vs 11.6 s)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    DATA, RUN, FIG = args.data, Path(args.run), Path(args.figures)
    train(args.minutes, args.device) if args.step == "train" else gallery(args.device)
