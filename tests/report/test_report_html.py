"""The HTML run report: finds a run's files, embeds every figure, and renders in a real browser."""

import base64
import json
import re

import pytest
import torch
import yaml

from resnets.evaluate.calibration import calibration_report
from resnets.evaluate.corruptions import CorruptionResult
from resnets.evaluate.robustness import RobustnessResult
from resnets.explain.gradcam import save_explanation
from resnets.report import ReportError, find_browser, render_report, scan_run, screenshot


pytestmark = pytest.mark.usefixtures("one_thread")


def _make_run(root):
    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump({"model": "resnet20", "lr": 0.1, "epochs": 5}))
    with open(root / "metrics.jsonl", "w") as fh:
        for e in range(5):
            fh.write(json.dumps({"epoch": e, "step": 10 * (e + 1), "lr": 0.1 * (1 - e / 5), "train_loss": 2 - 0.3 * e,
                                 "train_top1": 0.2 + 0.1 * e, "val_top1": 0.25 + 0.1 * e, "val_loss": 1.9 - 0.3 * e})
                     + "\n")
    classes = ["cat", "dog", "ship"]
    (root / "eval.json").write_text(json.dumps({
        "top1": 0.7, "top5": 1.0, "loss": 0.8, "count": 30, "classes": classes,
        "per_class_accuracy": {"cat": 0.6, "dog": 0.7, "ship": 0.8}, "confusion": [[6, 3, 1], [2, 7, 1], [1, 1, 8]],
        "tta": "none", "extra": {}}))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 3, generator=g) * 3
    labels = torch.multinomial(torch.softmax(logits / 3, 1), 1, generator=g).flatten()
    (root / "calibration.json").write_text(json.dumps(calibration_report(logits, labels, 3.0)))
    rob = {"pgd": RobustnessResult("pgd", "linf", 20, 1, [0, 2 / 255, 8 / 255], [0.9, 0.4, 0.01], 100).to_dict(),
           "fgsm": RobustnessResult("fgsm", "linf", 1, 1, [0, 2 / 255, 8 / 255], [0.9, 0.5, 0.2], 100).to_dict()}
    (root / "robustness.json").write_text(json.dumps(rob))
    corr = CorruptionResult(0.9, {"fog": [0.8, 0.7, 0.6, 0.5, 0.4], "contrast": [0.85, 0.8, 0.7, 0.6, 0.3]}, 100, 0)
    (root / "corruptions.json").write_text(json.dumps(corr.to_dict()))
    (root / "gradcam").mkdir()
    img = torch.rand(3, 32, 32, generator=g)
    save_explanation(root / "gradcam" / "cat_0.png", img, torch.rand(32, 32, generator=g), title="cat")
    (root / "last.pt").write_bytes(b"not read")
    return root


def test_scan_finds_every_part(tmp_path):
    found = scan_run(_make_run(tmp_path / "run"))
    assert found.config_text and len(found.metrics) == 5
    assert list(found.evals) == ["eval.json"] and list(found.calibration) == ["calibration.json"]
    assert set(found.robustness) == {"robustness.json: pgd", "robustness.json: fgsm"}
    assert list(found.corruptions) == ["corruptions.json"]
    assert [p.name for p in found.gradcam_images] == ["cat_0.png"]


def test_report_is_self_contained_and_has_its_figures(tmp_path):
    run = _make_run(tmp_path / "run")
    page = render_report(run)
    text = page.read_text()
    for title in ("Configuration", "Training curves", "Evaluation: eval.json", "Calibration", "Adversarial robustness",
                  "Corruptions", "Grad-CAM gallery"):
        assert title in text, title
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    # curves, confusion, per-class, reliability, robustness plot, one Grad-CAM image
    assert len(images) == 6
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "http://" not in text and "https://" not in text, "the page must not fetch anything"
    assert "8.0/255" in text and "mean corruption error" in text


def test_empty_or_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        render_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="nothing to report"):
        render_report(tmp_path / "empty")


@pytest.mark.skipif(find_browser() is None, reason="chromium is not installed (Debian: apt-get install -y chromium, "
                                                   "or `make browser`); the screenshot check needs a real browser")
def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    page = render_report(_make_run(tmp_path / "run"))
    shot = screenshot(page, tmp_path / "shot.png", width=1200, height=2400)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2400)
    pixels = torch.from_numpy(__import__("numpy").asarray(image).copy()).reshape(-1, 3).float()
    non_white = (pixels.min(1).values < 200).float().mean().item()
    # Coloured plot pixels (blue curves/bars) must be on screen: the figures really rendered.
    blue = ((pixels[:, 2] > pixels[:, 0] + 40) & (pixels[:, 2] > 120)).float().mean().item()
    assert non_white > 0.03, f"the page looks blank ({non_white:.3%} non-white pixels)"
    assert blue > 0.002, f"no figure colours visible ({blue:.3%} blue pixels)"


def test_a_line_torn_by_a_kill_does_not_drop_the_training_curves(tmp_path):
    """The trainer appends metrics.jsonl line by line (and skips a torn last line when it resumes); one torn line
    made the report list the whole file as unreadable and show no curves."""
    run = _make_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 5, "train_lo')
    found = scan_run(run)
    assert len(found.metrics) == 5 and found.unreadable == [
        next(u for u in found.unreadable if u.startswith("metrics.jsonl line 6 (skipped)"))]
    assert "Training curves" in render_report(run).read_text()


def test_a_result_file_of_an_unexpected_layout_is_listed_not_fatal(tmp_path):
    """A hand-made calibration-like file without a temperature stopped the whole report with a KeyError."""
    run = _make_run(tmp_path / "run")
    (run / "calib.json").write_text(json.dumps({"ece": 0.1, "bins": [], "nll": 0.5}))
    (run / "corr.json").write_text(json.dumps({"mean_error": 0.2, "accuracy": {"fog": "high"}}))
    page = render_report(run).read_text()
    assert "Training curves" in page and "Files that could not be read" in page
    assert "calib.json (skipped: not the layout resnets writes; KeyError" in page
    assert "corr.json (skipped: not the layout resnets writes;" in page


def test_an_undefined_mce_and_a_diverged_gradient_flow_still_render(tmp_path):
    # a model compared with itself had mCE inf (stored null), which dropped the corruptions section; a gradflow
    # line with a diverged run's null values stopped the whole report with a traceback
    run = _make_run(tmp_path / "run")
    clean = CorruptionResult(1.0, {"fog": [1.0] * 5, "contrast": [0.9] * 5}, 100, 0)
    data = clean.to_dict(clean)
    assert data["corruption_errors"] == {"fog": 1.0, "contrast": 1.0} and data["mce"] == 1.0
    worse = CorruptionResult(1.0, {"fog": [0.9] * 5, "contrast": [0.8] * 5}, 100, 0)
    undefined = worse.to_dict(clean)
    assert undefined["mce_undefined_for"] == ["fog"] and undefined["corruption_errors"]["fog"] is None
    assert undefined["mce"] == pytest.approx(2.0)  # contrast only: 1.0 / 0.5
    # a baseline that gained accuracy under a corruption has no loss to compare with: left out, not sign-flipped
    gaining = CorruptionResult(0.8, {"brightness": [0.82] * 5}, 100, 0)
    losing = CorruptionResult(0.8, {"brightness": [0.7] * 5}, 100, 0)
    assert losing.relative_mce(gaining) is None and losing.undefined_corruptions(gaining) == ["brightness"]
    (run / "corruptions.json").write_text(json.dumps(undefined))
    record = {"step": 0, "loss": None, "blocks": ["layer1.0", "layer1.1"], "param_grad": [None, 0.1],
              "output_grad": [0.2, None], "branch_norm": [1.0, None], "shortcut_norm": [1.0, 1.0],
              "branch_ratio": [1.0, None], "branch_grad": [0.1, 0.1], "shortcut_grad": [0.1, 0.1]}
    (run / "gradflow.jsonl").write_text(json.dumps(record) + "\n")
    page = render_report(run).read_text()
    assert "Corruptions: corruptions.json" in page and "mCE 200.0" in page and "Gradient flow" in page


def test_the_calibration_section_says_where_the_temperature_was_fitted_and_measured(tmp_path):
    # fitted and measured on the same images, the scaled figures are optimistic: the JSON said so, the report not
    run = _make_run(tmp_path / "run")
    data = json.loads((run / "calibration.json").read_text())
    data.update(fit_on="validation split (40 images)", evaluated_on="the same images (the scaled figures are "
                "optimistic)")
    (run / "calibration.json").write_text(json.dumps(data))
    page = render_report(run).read_text()
    assert "fitted on validation split (40 images)" in page and "the scaled figures are optimistic" in page


def test_the_gradient_flow_json_of_explain_gradflow_gets_its_section(tmp_path):
    # only a trainer's gradflow.jsonl was read; `resnets explain gradflow` writes {network: [records]}
    from resnets.cli import main

    out = tmp_path / "gf"
    assert main(["explain", "gradflow", "--model", "plain20,resnet20", "--steps", "0", "--batch-size", "4",
                 "--image-size", "16", "--out", str(out)]) == 0
    found = scan_run(out)
    assert sorted(found.gradflow) == ["plain20", "resnet20"]
    assert "<h2>Gradient flow</h2>" in render_report(out).read_text()
