"""A headless Chromium driven through chromedriver (Debian's `chromium` and `chromium-driver`,
which interop/run.sh installs), for tests of the broker's web pages.

    from browser import chromium
    driver = chromium()      # or the `browser` fixture in conftest-using tests
"""
import os
import shutil

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

# Debian's paths; CHROMIUM_BIN / CHROMEDRIVER_BIN override them.
CHROMIUM = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (os.environ.get("CHROMEDRIVER_BIN") or shutil.which("chromedriver")
                or "/usr/bin/chromedriver")


def available() -> bool:
    """Whether both the browser and its driver are installed."""
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


def chromium(width: int = 1400, height: int = 900) -> webdriver.Chrome:
    """A new headless Chromium session; the caller quits it."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver
