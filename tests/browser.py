"""Headless Chromium (the Debian package) driven by Selenium through Debian's
chromedriver: the paths are given, so Selenium Manager never downloads a browser
or a driver. axe-core (from npm, put under .local/axe by scripts/install) checks
each page.

The service under test runs on the test's event loop and Selenium blocks, so
every browser step runs in a thread (`Browser.do`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "console"
AXE = ROOT / ".local" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
#: axe impacts that fail a page
SERIOUS = ("serious", "critical")
T = TypeVar("T")


def executables() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def require_browser() -> tuple[str, str]:
    """The browser, its driver and axe-core; CI must have them (scripts/install puts them there)."""
    found = executables()
    if found is None or not AXE.is_file():
        if os.environ.get("CI"):
            pytest.fail("chromium, chromedriver or axe-core is missing: scripts/install installs them")
        pytest.skip("chromium, chromedriver or axe-core is not installed (scripts/install installs them)")
    assert found is not None
    return found


def start_driver() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium, chromedriver = require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--force-device-scale-factor=1", "--lang=en"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=chromedriver))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


class Browser:
    """One browser against one instance of the service."""

    def __init__(self, driver: Any, base: str) -> None:
        self.driver = driver
        self.base = base

    async def do(self, step: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(step, *args)

    # ------------------------------------------------------------ sync steps (in a thread)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def sign_in(self, token: str) -> None:
        from selenium.webdriver.common.by import By

        self.open("/console/sign-in")
        self.driver.delete_all_cookies()  # whoever was signed in before
        self.open("/console/sign-in")
        self.driver.find_element(By.ID, "token").send_keys(token)
        self.submit_form("/console/sign-in")

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def open_until(self, path: str, text: str, timeout: float = 10.0) -> str:
        """Open `path` again until its text holds `text` (what the plugins learn from the bus comes
        a moment later); the page's text."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            self.open(path)
            body = self.text()
            if text in body:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} never showed {text!r}:\n{body}")
            time.sleep(0.2)

    def title(self) -> str:
        return self.driver.title

    def click(self, text: str) -> None:
        """Click the link or button whose visible text is `text`."""
        from selenium.webdriver.common.by import By

        for element in self.driver.find_elements(By.CSS_SELECTOR, "a, button"):
            if element.text.strip() == text:
                self._navigating(element.click)
                return
        raise AssertionError(f"no link or button {text!r} on {self.driver.current_url}:\n{self.text()}")

    def fill(self, element_id: str, value: str) -> None:
        from selenium.webdriver.common.by import By

        field = self.driver.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(value)

    def submit_form(self, action: str) -> None:
        from selenium.webdriver.common.by import By

        button = self.driver.find_element(By.CSS_SELECTOR, f"form[action='{action}'] button[type='submit']")
        self._navigating(button.click)

    def _navigating(self, act: Callable[[], Any]) -> None:
        """Do what loads a new page, and wait until it has replaced this one."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.wait import WebDriverWait

        page = self.driver.find_element(By.TAG_NAME, "html")
        act()

        def replaced(_: Any) -> bool:
            try:
                page.is_enabled()
            except WebDriverException:  # stale, or (mid-navigation) no longer in the document
                return True
            return False

        WebDriverWait(self.driver, 15).until(replaced)
        WebDriverWait(self.driver, 15).until(
            lambda driver: driver.execute_script("return document.readyState") == "complete")

    def cookie(self, name: str) -> dict[str, Any] | None:
        return self.driver.get_cookie(name)

    def check(self, name: str) -> None:
        """Save a screenshot of the whole page as docs/console/<name>.png, then run axe-core on
        it: no serious or critical violation."""
        driver = self.driver
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, max(600, min(int(height) + 20, 4000)))
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
        driver.set_window_size(1280, 900)
        driver.execute_script(AXE.read_text())
        results = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']}).then(done, e => done({error: String(e)}));")
        assert "error" not in results, f"{name}: axe-core failed: {results}"
        serious = [v for v in results["violations"] if v.get("impact") in SERIOUS]
        assert not serious, f"{name}: accessibility violations:\n" + "\n".join(
            f"- {v['id']} ({v['impact']}): {v['help']}: "
            + "; ".join(", ".join(n["target"]) for n in v["nodes"]) for v in serious)
