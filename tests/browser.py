"""A real browser for the page tests: Debian's chromium, headless, driven by selenium through chromium-driver."""
from __future__ import annotations

import json
import shutil

import pytest

NO_BROWSER = ("no browser: Debian's chromium and chromium-driver are not installed "
              "(apt-get install -y chromium chromium-driver; .ci/run installs them)")


def chrome(width=1200, height=900, phone=False):
    """A headless chromium of the given window size, or with ``phone`` a phone's screen (390 x 844 CSS pixels, as
    Chrome's device emulation sets it: headless windows are at least 500 pixels wide). It keeps a performance log,
    so that tests can read the requests the page sent (``posted``)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra: pip install -e "
                                    "'.[test]'")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip(NO_BROWSER)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--lang=zh-CN",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
    if phone:
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    return browser


def _requests(driver) -> list[dict]:
    """The requests the browser sent since the last call, from its network log (read once: the log drains)."""
    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            sent.append(message["params"]["request"])
    return sent


def requested(driver) -> list[str]:
    """The URLs the page asked for since the last look at the log."""
    return [r["url"] for r in _requests(driver)]


def posted(driver, path: str) -> list[dict]:
    """The JSON bodies of the POSTs to ``path`` since the last look at the log."""
    return [json.loads(r["postData"]) for r in _requests(driver) if r["method"] == "POST" and r["url"].endswith(path)]
