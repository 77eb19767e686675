"""Headless Debian chromium driven by selenium, as the dashboard test and benchmark use it."""

from __future__ import annotations

from pathlib import Path


def chrome(profile_dir: Path, window: str = "1400,1100"):
    """A headless chromium with a fresh profile; no background networking (the machine is offline)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile_dir}", f"--window-size={window}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
