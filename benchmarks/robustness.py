"""PGD, FGSM and corruption robustness of a standard and a fast-FGSM adversarially trained ResNet-20
on real CIFAR-10 (45k/5k split of the shared training set), plus their calibration.

Three steps, each run under the shared lock (each under ~10 minutes on 2 shared cores):

    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/robustness.py train --kind standard
    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/robustness.py train --kind fgsm_rs
    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/robustness.py evaluate

Use ``--device cuda`` on a GPU (then bf16 autocast is off and the budget can grow).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from resnets import create_model, save_weights
from resnets.evaluate.calibration import calibration_report, collect_logits, fit_temperature, reliability_diagram
from resnets.evaluate.corruptions import corruption_accuracy
from resnets.evaluate.robustness import Normalized, pixel_model_from_checkpoint, robust_accuracy
from resnets.explain.degradation import Budget, load_pixel_splits, train_classifier

DATA = "/work/shared/data/cifar10/train"
OUT = Path("docs/figures/robustness")
CKPT = Path("runs/robustness")  # checkpoints stay out of git
TRAIN_BUDGET = "epochs=2,train_subset=20000,val_subset=1000,log_points=4"
# Fast FGSM-RS costs two forward/backward passes per step: half the epochs is the same compute.
ADV_BUDGET = "epochs=1,train_subset=20000,val_subset=1000,log_points=4"
LINF = [0, 2 / 255, 4 / 255, 8 / 255]
L2 = [0, 0.25, 0.5]


def train(kind: str, budget_text: str, device: str) -> None:
    budget = Budget.parse(budget_text + ("" if kind == "standard" else f",adversarial={kind},adv_eps=8/255,adv_alpha=10/255"))
    splits, train_loader, val_loader = load_pixel_splits(DATA, budget, device=device)
    torch.manual_seed(budget.seed)
    net = create_model("resnet20", num_classes=len(splits.classes))
    model = Normalized(net, splits.mean, splits.std).to(device)
    t0 = time.perf_counter()
    history = train_classifier(model, train_loader, val_loader, budget, log=lambda r: print(r, flush=True))
    CKPT.mkdir(parents=True, exist_ok=True)
    save_weights(net, CKPT / f"resnet20_{kind}.safetensors",
                 {"classes": splits.classes, "mean": list(splits.mean), "std": list(splits.std),
                  "image_size": splits.image_size, "recipe": budget.__dict__, "history": history,
                  "train_seconds": time.perf_counter() - t0})
    print(f"saved {kind} in {time.perf_counter() - t0:.0f}s; final val error {history[-1]['val_error']:.3f}", flush=True)


def evaluate(samples: int, device: str) -> None:
    budget = Budget.parse("train_subset=all,val_subset=all")
    _, _, val_loader = load_pixel_splits(DATA, budget)
    images, labels = val_loader.dataset.images, val_loader.dataset.labels
    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))
    attack_idx, calib_idx = order[:samples], order[samples:]

    def batches(idx, size=250):
        return [(images[idx[i:i + size]].float() / 255, labels[idx[i:i + size]]) for i in range(0, idx.numel(), size)]

    results = {}
    baseline = None
    for kind in ("standard", "fgsm_rs"):
        if not (CKPT / f"resnet20_{kind}.safetensors").exists():
            print(f"no {kind} checkpoint in {CKPT}; run `train --kind {kind}` first; skipped", flush=True)
            continue
        model, ckpt = pixel_model_from_checkpoint(str(CKPT / f"resnet20_{kind}.safetensors"), device)
        row = {"train_seconds": ckpt.metadata.get("train_seconds"), "recipe": ckpt.metadata.get("recipe"),
               "samples": samples, "final_val_error": ckpt.metadata["history"][-1]["val_error"]}
        t0 = time.perf_counter()
        row["pgd20_linf"] = robust_accuracy(model, batches(attack_idx), LINF, "pgd", "linf", steps=20, device=device).to_dict()
        row["fgsm_linf"] = robust_accuracy(model, batches(attack_idx), LINF, "fgsm", "linf", device=device).to_dict()
        row["pgd10_l2"] = robust_accuracy(model, batches(attack_idx), L2, "pgd", "l2", steps=10, device=device).to_dict()
        row["attack_seconds"] = time.perf_counter() - t0
        print(kind, row["pgd20_linf"]["accuracy"], row["fgsm_linf"]["accuracy"], row["pgd10_l2"]["accuracy"], flush=True)
        t0 = time.perf_counter()
        corr = corruption_accuracy(model, batches(attack_idx), seed=0, device=device)
        baseline = baseline or corr
        row["corruptions"] = corr.to_dict(baseline)
        row["corruption_seconds"] = time.perf_counter() - t0
        print(kind, "clean", corr.clean_accuracy, "mean corruption error", corr.mean_error(), flush=True)
        # Calibration: temperature fitted on half of the remaining validation images, ECE on the other half.
        fit_half, test_half = calib_idx[: calib_idx.numel() // 2], calib_idx[calib_idx.numel() // 2:]
        fit_logits, fit_labels = collect_logits(model, batches(fit_half), device)
        t = fit_temperature(fit_logits, fit_labels)
        test_logits, test_labels = collect_logits(model, batches(test_half), device)
        cal = calibration_report(test_logits, test_labels, t)
        reliability_diagram(cal, OUT / f"reliability_{kind}.png", title=f"resnet20 ({kind}), CIFAR-10 held-out")
        row["calibration"] = {k: v for k, v in cal.items() if not k.startswith("bins")}
        results[kind] = row
        (OUT / "robustness.json").write_text(json.dumps(results, indent=2))
    plot(results)


def plot(results):
    from resnets.report.figures import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for kind, row in results.items():
        for ax, key, scale in ((axes[0], "pgd20_linf", 255), (axes[1], "pgd10_l2", 1)):
            r = row[key]
            ax.plot([e * scale for e in r["epsilons"]], [100 * a for a in r["accuracy"]], "o-",
                    label=f"{kind} PGD-{r['steps']}")
        r = row["fgsm_linf"]
        axes[0].plot([e * 255 for e in r["epsilons"]], [100 * a for a in r["accuracy"]], "x--", label=f"{kind} FGSM")
        corr = row["corruptions"]["accuracy"]
        sev_mean = [100 * sum(v[s] for v in corr.values()) / len(corr) for s in range(5)]
        axes[2].plot([0, 1, 2, 3, 4, 5], [100 * row["corruptions"]["clean_accuracy"]] + sev_mean, "o-", label=kind)
    axes[0].set_xlabel("L-inf epsilon (x/255)")
    axes[1].set_xlabel("L2 epsilon")
    axes[2].set_xlabel("corruption severity (0 = clean)")
    axes[0].set_title("L-inf attacks")
    axes[1].set_title("L2 PGD-10")
    axes[2].set_title("mean over 13 corruptions")
    for ax in axes:
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, OUT / "robustness.png", dpi=100)


def table(results) -> str:
    """The markdown tables of docs/robustness.md, models side by side (accuracies in %)."""
    pct = lambda a: f"{100 * a:.1f}"
    kinds = list(results)
    lines = []
    for key, title, scale, unit in (("pgd20_linf", "PGD-20 L-inf", 255, "/255"), ("fgsm_linf", "FGSM L-inf", 255, "/255"),
                                    ("pgd10_l2", "PGD-10 L2", 1, "")):
        eps = results[kinds[0]][key]["epsilons"]
        lines += [f"| {title} | " + " | ".join(f"eps {e * scale:g}{unit}" for e in eps) + " |",
                  "|---|" + "---|" * len(eps)]
        lines += [f"| {k} | " + " | ".join(pct(a) for a in results[k][key]["accuracy"]) + " |" for k in kinds]
        lines.append("")
    lines += ["| model | clean | mean corruption error | mCE vs standard | relative mCE | ECE | ECE after T | T | NLL | NLL after T |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for k in kinds:
        c, cal = results[k]["corruptions"], results[k]["calibration"]
        lines.append(f"| {k} | {pct(c['clean_accuracy'])} | {pct(c['mean_error'])} | {100 * c['mce']:.1f} | "
                     f"{100 * c['relative_mce']:.1f} | {pct(cal['ece'])} | {pct(cal['ece_scaled'])} | "
                     f"{cal['temperature']:.2f} | {cal['nll']:.3f} | {cal['nll_scaled']:.3f} |")
    lines += ["", "| corruption | " + " | ".join(f"{k} s1..s5" for k in kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name in results[kinds[0]]["corruptions"]["accuracy"]:
        lines.append(f"| {name} | " + " | ".join(
            " ".join(f"{100 * a:.0f}" for a in results[k]["corruptions"]["accuracy"][name]) for k in kinds) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["train", "evaluate", "plot", "table"])
    ap.add_argument("--kind", choices=["standard", "fgsm_rs", "pgd"], default="standard")
    ap.add_argument("--budget", default=None, help=f"default: {TRAIN_BUDGET} (standard), {ADV_BUDGET} (adversarial)")
    ap.add_argument("--samples", type=int, default=300, help="validation images attacked/corrupted")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's). On the shared 2-core machine, oversubscribed by other jobs, "
                         "1 thread measured 5x faster per step than 2 (resnet56, batch 64: 2.3 s vs 11.6 s)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if args.step == "train":
        train(args.kind, args.budget or (TRAIN_BUDGET if args.kind == "standard" else ADV_BUDGET), args.device)
    elif args.step == "evaluate":
        evaluate(args.samples, args.device)
    elif args.step == "table":
        print(table(json.loads((OUT / "robustness.json").read_text())))
    else:
        plot(json.loads((OUT / "robustness.json").read_text()))
