"""Debian's headless Chromium driven by Selenium (never a downloaded browser), and where
browser tests leave their screenshots."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import not_run

# Screenshots are test artifacts: CI keeps this directory.
ARTIFACTS = Path(
    os.environ.get("EARMARK_TEST_ARTIFACTS") or Path(__file__).parent.parent / "build" / "artifacts"
)


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    found, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (found and driver):
        not_run("Debian's chromium and chromium-driver are not installed: browser tests NOT RUN")
    from selenium import webdriver
    from selenium.common.exceptions import SessionNotCreatedException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports land there
    try:
        browser = webdriver.Chrome(service=Service(driver), options=options)
    except SessionNotCreatedException:  # Chromium that died starting up, on a busy machine
        browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def screenshot(browser: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(browser.get_screenshot_as_png())
    return path
