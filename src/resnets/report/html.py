"""One self-contained HTML page for a run directory: every figure embedded as a base64 PNG.

``render_report(run_dir)`` looks for what a run leaves behind and shows each part it finds:

* ``config.yaml`` (the resolved recipe) and ``summary.json`` (headline numbers),
* ``metrics.jsonl``: curves of loss, accuracy and learning rate per epoch,
* evaluation JSON (``resnets eval``: confusion matrix and per-class accuracy),
* calibration JSON (reliability diagram, ECE, temperature),
* robustness JSON (accuracy vs epsilon per attack) and corruption JSON (per corruption/severity),
* ``gradflow.jsonl`` (gradient flow), ``degradation.json`` (the degradation figure),
* Grad-CAM PNGs (any ``*.png`` under a ``gradcam*`` folder or named ``*gradcam*``), and other PNGs.

Files are recognised by their content, not only their names, so outputs written under any name
into the run folder are picked up. Nothing is fetched from the network when the page is viewed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPORT_NAME = "report.html"
SCREENSHOT_NAME = "report.png"  # the page's own screenshot: never embedded as a figure of the run


class ReportError(ValueError):
    """The run directory is missing or holds nothing a report can show."""


@dataclass
class Section:
    title: str
    body: str


@dataclass
class RunContents:
    """What ``scan_run`` found in a run directory."""

    config_text: str | None = None
    summary: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    robustness: dict[str, dict[str, Any]] = field(default_factory=dict)
    corruptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    gradflow: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Gradient-flow records by run: a trainer's ``gradflow.jsonl`` ("run"), and ``resnets explain gradflow``'s
    ``gradflow.json`` (one list per network)."""
    degradation: dict[str, Any] | None = None
    gradcam_images: list[Path] = field(default_factory=list)
    other_images: list[Path] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not any([self.config_text, self.summary, self.metrics, self.evals, self.calibration, self.robustness,
                        self.corruptions, self.groups, self.gradflow, self.degradation, self.gradcam_images,
                        self.other_images])


def _read_jsonl(path: Path, rel: Path, found: RunContents) -> list[dict[str, Any]]:
    """The records of a JSON-lines log; a line a kill tore (the trainer appends one per epoch) is skipped and
    listed among the unreadable, not the reason every curve of the run disappears."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                found.unreadable.append(f"{rel} line {number} (skipped): {exc}")
    return rows


def _is_robustness(d: Any) -> bool:
    return isinstance(d, dict) and "epsilons" in d and "accuracy" in d and "attack" in d


def _classify_json(name: str, data: Any, found: RunContents) -> None:
    if not isinstance(data, dict):
        return
    if "confusion" in data and "per_class_accuracy" in data:
        found.evals[name] = data
        extra = data.get("extra")
        if isinstance(extra, dict) and isinstance(extra.get("groups"), dict):
            found.groups[name] = extra["groups"]
    elif "ece" in data and "bins" in data:
        found.calibration[name] = data
    elif _is_robustness(data):
        found.robustness[name] = data
    elif "mean_error" in data and isinstance(data.get("accuracy"), dict):
        found.corruptions[name] = data
    elif "per_group" in data and "worst_group" in data:
        found.groups[name] = data
    elif "runs" in data and "budget" in data and "final" in data:
        found.degradation = data
    elif name == "summary.json":
        found.summary = data
    elif all(isinstance(v, list) and v and all(isinstance(r, dict) and "param_grad" in r for r in v)
             for v in data.values()) and data:  # `resnets explain gradflow`: {network: [records]}
        found.gradflow.update(data)
    else:  # a file holding several results keyed by model or attack (e.g. robustness.json)
        for key, value in data.items():
            if isinstance(value, dict):
                _classify_json(f"{name}: {key}", value, found)


def scan_run(run_dir: str | os.PathLike) -> RunContents:
    """Find every report-able file in ``run_dir`` (not descending into checkpoints or TensorBoard)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ReportError(f"run directory {str(root)!r} does not exist or is not a folder; pass the folder a "
                          "`resnets train` run wrote (it holds config.yaml and metrics.jsonl)")
    found = RunContents()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part in ("tensorboard", "__pycache__") or part.startswith(".") for part in rel.parts):
            continue
        try:
            if path.name == "config.yaml":
                found.config_text = path.read_text(encoding="utf-8")
            elif path.name == "metrics.jsonl":
                found.metrics = _read_jsonl(path, rel, found)
            elif path.name.startswith("gradflow") and path.suffix == ".jsonl":
                found.gradflow[path.stem] = _read_jsonl(path, rel, found)
            elif path.suffix == ".json":
                _classify_json(str(rel), json.loads(path.read_text(encoding="utf-8")), found)
            elif path.suffix.lower() == ".png" and path.name != SCREENSHOT_NAME:
                is_cam = "gradcam" in path.name.lower() or any("gradcam" in p.lower() for p in rel.parts[:-1])
                (found.gradcam_images if is_cam else found.other_images).append(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            found.unreadable.append(f"{rel}: {exc}")
    return found


# ------------------------------------------------------------------ figures
def _figure_png(draw: Callable[[Any], None], size: tuple[float, float] = (6, 3.6)) -> bytes:
    from .figures import pyplot

    plt = pyplot()

    fig = plt.figure(figsize=size)
    try:
        draw(fig)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _png_via_file(writer: Callable[[Path], Any]) -> bytes:
    """Run a function that writes a PNG to a path (the library's plotters) and return the bytes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        writer(path)
        return path.read_bytes()


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "-"


def _curves(metrics: list[dict[str, Any]]) -> bytes:
    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r.get("epoch", i), r[key]) for i, r in enumerate(metrics) if isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]

    def draw(fig: Any) -> None:
        panels = [("loss", ["train_loss", "val_loss"]), ("accuracy (top-1)", ["train_top1", "val_top1"]),
                  ("learning rate", ["lr"])]
        for i, (title, keys) in enumerate(panels):
            ax = fig.add_subplot(1, 3, i + 1)
            for key in keys:
                xs, ys = series(key)
                if xs:
                    ax.plot(xs, ys, "o-" if len(xs) < 30 else "-", ms=3, label=key)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)

    return _figure_png(draw, (13, 3.6))


def _confusion(data: dict[str, Any]) -> bytes:
    matrix = data["confusion"]
    classes = data.get("classes") or [str(i) for i in range(len(matrix))]

    def draw(fig: Any) -> None:
        import numpy as np

        m = np.asarray(matrix, dtype=float)
        norm = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax = fig.add_subplot(1, 1, 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        n = len(classes)
        if n <= 30:
            ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(n), classes, fontsize=7)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("confusion matrix (row-normalised)", fontsize=10)

    return _figure_png(draw, (6, 5.5))


def _per_class(per_class: dict[str, Any]) -> bytes:
    names = [k for k, v in per_class.items() if v is not None]
    values = [100 * per_class[k] for k in names]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        ax.barh(range(len(names)), values, color="#4c72b0")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy (%)")
        ax.set_title("per-class accuracy", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)

    return _figure_png(draw, (6, max(2.5, 0.22 * len(names) + 1)))


def _robustness_plot(results: dict[str, dict[str, Any]]) -> bytes:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        for name, r in results.items():
            scale = 255 if r.get("norm") == "linf" else 1
            ax.plot([e * scale for e in r["epsilons"]], [100 * a for a in r["accuracy"]], "o-",
                    label=f"{name} ({r['attack']}, {r.get('norm')})")
        ax.set_xlabel("epsilon (x/255 for L-inf)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)

    return _figure_png(draw, (7, 4))


# ----------------------------------------------------------------- sections
def _add_section(sections: list[Section], found: RunContents, source: str, build: Callable[[], Section]) -> None:
    """A hand-edited or foreign result file must not stop the whole report: its section is left out and the
    file is listed among those that could not be read."""
    try:
        sections.append(build())
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError) as exc:
        found.unreadable.append(f"{source} (skipped: not the layout resnets writes; {type(exc).__name__}: {exc})")


def _sections(found: RunContents, run_dir: Path) -> list[Section]:
    sections: list[Section] = []
    if found.summary:
        rows = [[k, _pct(v) if "top" in k and isinstance(v, float) else v]
                for k, v in found.summary.items() if not isinstance(v, (dict, list))]
        sections.append(Section("Summary", _table(["field", "value"], rows)))
    if found.config_text:
        sections.append(Section("Configuration", f"<pre>{html.escape(found.config_text)}</pre>"))
    if found.metrics:
        def curves() -> Section:
            last = found.metrics[-1]
            rows = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in last.items()]
            return Section("Training curves", _img(_curves(found.metrics), "training curves")
                           + f"<p>{len(found.metrics)} epochs logged; last record:</p>"
                           + _table(["metric", "value"], rows))

        _add_section(sections, found, "metrics.jsonl", curves)
    for name, data in found.evals.items():
        def evaluation(name: str = name, data: dict = data) -> Section:
            body = (f"<p>top-1 {_pct(data.get('top1'))}, top-5 {_pct(data.get('top5'))}, loss "
                    f"{data.get('loss', 0):.4f}, {data.get('count')} images, TTA {html.escape(str(data.get('tta')))}</p>")
            body += _img(_confusion(data), "confusion matrix")
            if data.get("per_class_accuracy"):
                body += _img(_per_class(data["per_class_accuracy"]), "per-class accuracy")
            return Section(f"Evaluation: {name}", body)

        _add_section(sections, found, name, evaluation)
    if not found.evals and found.summary and isinstance(found.summary.get("final_per_class_top1"), dict):
        _add_section(sections, found, "summary.json", lambda: Section(
            "Per-class accuracy", _img(_per_class(found.summary["final_per_class_top1"]), "per-class accuracy")))
    for name, data in found.calibration.items():
        def calibration(name: str = name, data: dict = data) -> Section:
            from ..evaluate.calibration import reliability_diagram

            body = _table(["", "ECE", "NLL"], [["as trained", f"{data['ece']:.4f}", f"{data['nll']:.4f}"],
                                              [f"temperature {data['temperature']:.3f}", f"{data['ece_scaled']:.4f}",
                                               f"{data['nll_scaled']:.4f}"]])
            png = _png_via_file(lambda p: reliability_diagram(data, p))
            # where the temperature was fitted and measured: the same images make the scaled figures optimistic
            notes = [f"{label} {html.escape(str(data[key]))}" for key, label in
                     (("samples", "images:"), ("fit_on", "fitted on"), ("evaluated_on", "measured on"))
                     if data.get(key) is not None]
            caveat = f"<p>{'; '.join(notes)}</p>" if notes else ""
            return Section(f"Calibration: {name}", caveat + body + _img(png, "reliability diagram"))

        _add_section(sections, found, name, calibration)
    if found.robustness:
        def robustness() -> Section:
            rows = []
            for name, r in found.robustness.items():
                for eps, acc in zip(r["epsilons"], r["accuracy"]):
                    eps_text = f"{eps * 255:.1f}/255" if r.get("norm") == "linf" else f"{eps:g}"
                    rows.append([name, r["attack"], r.get("norm"), r.get("steps"), r.get("restarts"), eps_text,
                                 _pct(acc)])
            return Section("Adversarial robustness", _img(_robustness_plot(found.robustness), "robustness")
                           + _table(["source", "attack", "norm", "steps", "restarts", "epsilon", "accuracy"], rows))

        _add_section(sections, found, ", ".join(found.robustness), robustness)
    for name, data in found.corruptions.items():
        def corruptions(name: str = name, data: dict = data) -> Section:
            rows = [[c] + [_pct(a) for a in accs] + [_pct(sum(accs) / len(accs))]
                    for c, accs in data["accuracy"].items()]
            extra = f", mCE {data['mce'] * 100:.1f}" if data.get("mce") is not None else ""
            body = (f"<p>clean accuracy {_pct(data['clean_accuracy'])}, mean corruption error "
                    f"{_pct(data['mean_error'])}{extra} ({data.get('samples')} images)</p>")
            return Section(f"Corruptions: {name}", body + _table(["corruption", "s1", "s2", "s3", "s4", "s5", "mean"],
                                                                 rows))

        _add_section(sections, found, name, corruptions)
    for name, data in found.groups.items():
        def groups(name: str = name, data: dict = data) -> Section:
            rows = [[g, v["count"], _pct(v["accuracy"])] for g, v in data["per_group"].items()]
            body = (f"<p>worst group {html.escape(str(data['worst_group']))}: {_pct(data['worst_group_accuracy'])} "
                    f"(gap to overall {_pct(data['worst_group_gap'])})</p>")
            return Section(f"Groups: {name}", body + _table(["group", "images", "accuracy"], rows))

        _add_section(sections, found, name, groups)
    if found.gradflow:
        def gradient_flow() -> Section:
            from ..explain.gradflow import plot_gradient_flow

            # up to four records of each run: its first, last and two between
            picks = {label: records if len(records) <= 4 else
                     [records[i] for i in (0, len(records) // 3, 2 * len(records) // 3, -1)]
                     for label, records in found.gradflow.items()}
            png = _png_via_file(lambda p: plot_gradient_flow(picks, p))
            return Section("Gradient flow", _img(png, "gradient flow"))

        _add_section(sections, found, ", ".join(found.gradflow), gradient_flow)
    if found.degradation:
        def degradation() -> Section:
            from ..explain.degradation import plot_degradation

            rows = [[k, _pct(v["train_error"]), _pct(v["val_error"])] for k, v in found.degradation["final"].items()]
            png = _png_via_file(lambda p: plot_degradation(found.degradation, p))
            return Section("Degradation experiment", _img(png, "degradation")
                           + _table(["model", "train error", "val error"], rows))

        _add_section(sections, found, "degradation.json", degradation)
    if found.gradcam_images:
        tiles = "".join(f'<figure>{_img(p.read_bytes(), p.name)}<figcaption>{html.escape(p.name)}</figcaption></figure>'
                        for p in found.gradcam_images)
        sections.append(Section("Grad-CAM gallery", f'<div class="gallery">{tiles}</div>'))
    if found.other_images:
        tiles = "".join(f'<figure>{_img(p.read_bytes(), p.name)}<figcaption>{html.escape(str(p.relative_to(run_dir)))}'
                        f"</figcaption></figure>" for p in found.other_images)
        sections.append(Section("Other figures", f'<div class="gallery">{tiles}</div>'))
    if found.unreadable:
        items = "".join(f"<li>{html.escape(u)}</li>" for u in found.unreadable)
        sections.append(Section("Files that could not be read", f"<ul>{items}</ul>"))
    return sections


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;border-bottom:2px solid #4c72b0;padding-bottom:.3em}
h2{font-size:1.2em;margin-top:1.6em;color:#2a4d8f}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#eef2f8}
pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:.85em;max-height:30em}
img{max-width:100%;height:auto}
.gallery{display:flex;flex-wrap:wrap;gap:1em}
.gallery figure{margin:0;max-width:380px}
figcaption{font-size:.8em;color:#555}
nav a{margin-right:1em}
"""


def render_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, title: str | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``out``) and return its path."""
    from ..weights import atomic_write

    root = Path(run_dir)
    found = scan_run(root)
    if found.empty():
        raise ReportError(f"{root} holds nothing to report (no config.yaml, metrics.jsonl, result JSON or PNG "
                          "figures); run `resnets train --out DIR` or an evaluation into it first")
    sections = _sections(found, root)
    title = title or f"resnets run report: {root.resolve().name}"
    nav = "".join(f'<a href="#s{i}">{html.escape(s.title)}</a>' for i, s in enumerate(sections))
    body = "".join(f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>{s.body}</section>' for i, s in enumerate(sections))
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{body}"
            f"<footer><p><small>Generated by resnets from {html.escape(str(root))}.</small></p></footer></body></html>")
    path = Path(out) if out is not None else root / REPORT_NAME
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return path
