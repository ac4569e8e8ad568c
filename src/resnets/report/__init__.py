"""Figures and the self-contained HTML run report (``resnets report RUN_DIR``)."""

from .browser import BrowserNotFound, find_browser, screenshot
from .html import REPORT_NAME, SCREENSHOT_NAME, ReportError, RunContents, render_report, scan_run

__all__ = ["BrowserNotFound", "REPORT_NAME", "SCREENSHOT_NAME", "ReportError", "RunContents", "find_browser", "render_report",
           "scan_run", "screenshot"]
