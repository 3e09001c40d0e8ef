"""Render an HTML page to a PNG with Debian's headless Chromium, to check a report really draws."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from edgegen.errors import EdgegenError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def screenshot(html_path: Path, png_path: Path, width: int = 1280, height: int = 2000, timeout_s: float = 90.0) -> Path:
    browser = find_chromium()
    if browser is None:
        raise EdgegenError("no Chromium found (apt-get install chromium)")
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
            "--no-first-run", f"--user-data-dir={profile}", f"--window-size={width},{height}",
            f"--screenshot={png_path}", html_path.as_uri(),
        ]
        try:
            subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise EdgegenError(f"Chromium did not render {html_path} within {timeout_s:.0f} s") from None
    if not png_path.is_file():
        raise EdgegenError(f"Chromium wrote no screenshot of {html_path}")
    return png_path
