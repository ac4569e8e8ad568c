"""`resnets report RUN_DIR`: one self-contained HTML page for a run."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="render a run folder as one self-contained HTML page",
        description="Render RUN_DIR (config.yaml, metrics.jsonl and any evaluation, calibration, robustness, "
                    "corruption, gradient-flow, degradation JSON and Grad-CAM PNGs found in it) as one HTML page "
                    "with every figure embedded.",
        epilog="example: resnets report runs/r20 --screenshot runs/r20/report.png")
    p.add_argument("run_dir", help="the run folder")
    p.add_argument("--out", help="HTML path (default: RUN_DIR/report.html)")
    p.add_argument("--title", help="page title")
    p.add_argument("--screenshot", metavar="PNG", help="also save a headless-Chromium screenshot of the page")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..cli import UserError
    from ..report import REPORT_NAME, SCREENSHOT_NAME, BrowserNotFound, ReportError, render_report, screenshot
    from .args import check_output

    page_path = check_output(args.out or Path(args.run_dir) / REPORT_NAME, reads=[args.run_dir], kind=".html")
    if args.screenshot:
        shot = check_output(args.screenshot, reads=[args.run_dir, page_path], option="--screenshot", kind=".png")
        if shot.resolve() == page_path.resolve():
            raise UserError(f"--screenshot {shot} is the report page itself; give a .png file name")
        run_dir = Path(args.run_dir).resolve()
        if shot.is_file() and run_dir in shot.resolve().parents and shot.name != SCREENSHOT_NAME:
            raise UserError(f"--screenshot {shot} is a figure of the run the report shows; writing there would "
                            f"replace it. Use {Path(args.run_dir) / SCREENSHOT_NAME} or a path outside the run")
    try:
        page = render_report(args.run_dir, args.out, args.title)
    except ReportError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {page}")
    if args.screenshot:
        try:
            print(f"wrote {screenshot(page, args.screenshot)}")
        except BrowserNotFound as exc:
            raise UserError(str(exc)) from None
    return 0
