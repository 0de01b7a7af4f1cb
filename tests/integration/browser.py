"""Headless Chromium (Debian's `chromium`, driven by playwright) and `citystream dashboard` as a
child process, for the browser tests. Playwright never downloads a browser here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

from tests.support import ROOT

CHROMIUM = os.environ.get("CITYSTREAM_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "artifacts"


@contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        raise AssertionError(f"{CHROMIUM} not found: run deploy/local/bootstrap.sh (Debian "
                             "package chromium) or set CITYSTREAM_TEST_CHROMIUM")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser, width: int = 1920,
             height: int = 1080) -> tuple[Page, list[str]]:
    """A page and the list its JavaScript errors are collected in.

    bypass_csp: playwright's waits evaluate strings, which the page's CSP forbids; the tests
    thereby also prove that the page renders hostile text safely without relying on the CSP.
    """
    page = browser.new_page(viewport={"width": width, "height": height}, bypass_csp=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def wait_rendered(page: Page, timeout_s: float = 30) -> None:
    page.wait_for_function("document.body.dataset.snapshotEvents && "
                           "document.body.dataset.historyEvents", timeout=timeout_s * 1000)


class DashboardProcess:
    """`citystream dashboard` with the given environment, on its own port."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env = {**os.environ, **env, "CITYSTREAM_DASHBOARD__PORT": str(port)}
        self.url = f"http://127.0.0.1:{port}/"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> DashboardProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "citystream", "-v", "dashboard"],
                                         stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dashboard exited:\n{self.log.read_text()}")
            if "dashboard running" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.2)
        raise AssertionError(f"dashboard did not start:\n{self.log.read_text()}")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url.rstrip("/") + path, timeout=10) as resp:
            return bytes(resp.read())

    def events(self, count: int) -> bytes:
        """The first `count` events of /events, raw."""
        with urllib.request.urlopen(self.url + "events", timeout=10) as resp:
            raw = b""
            while raw.count(b"\ndata: ") < count:
                raw += resp.readline()
            return raw

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
