"""Render a page in a headless Chromium and save a screenshot: how the report is checked as a
user would see it (and a quick way to share a report as one image)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class BrowserNotFound(RuntimeError):
    """No Chromium-family browser on PATH."""


def find_browser() -> str | None:
    """Path of the first Chromium-family browser on PATH (``$RESNETS_BROWSER`` wins), or None."""
    override = os.environ.get("RESNETS_BROWSER")
    if override:
        return shutil.which(override) or (override if Path(override).is_file() else None)
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(page: str | os.PathLike, out: str | os.PathLike, width: int = 1280, height: int = 2400,
               timeout: float = 60.0) -> Path:
    """Screenshot ``page`` (an HTML file) at ``width`` x ``height`` into ``out`` (PNG)."""
    browser = find_browser()
    if browser is None:
        raise BrowserNotFound("no Chromium found on PATH; install it (Debian: `apt-get install -y chromium`, or "
                              "`make browser`) or set RESNETS_BROWSER to a Chrome/Chromium binary")
    page, out = Path(page).resolve(), Path(out).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"page {str(page)!r} does not exist")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={out}", page.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"{Path(browser).name} wrote no screenshot (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-500:]}")
    return out
