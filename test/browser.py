"""A real browser for the console's tests: Debian's headless Chromium driven by Playwright.

`make test` installs Chromium when it is missing (Makefile `browser`); Playwright's Python package brings
its own driver and is told to use /usr/bin/chromium (it downloads no browser). The flags are the ones
this machine needs (no sandbox as root, no GPU, and no background connections to Google's hosts, which
the closed network refuses). Screenshots go to var/test-artifacts/ (kept after the run, not in git).
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "var" / "test-artifacts"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def chromium_path() -> str:
    path = os.environ.get("FR_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Debian's chromium is needed for the console's tests: `make test` installs it "
                    "(apt-get install chromium)")
    return path


class Browser:
    """One page at a time, with what it logged: console errors, page errors and CSP violations."""

    def __init__(self, browser, shots: Path, api_key: str | None = None):
        self.browser, self.shots = browser, shots
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        if api_key:  # the key a person would have given the console earlier in this session
            self.context.add_init_script(f"sessionStorage.setItem('fr.apiKey', {json.dumps(api_key)});")
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list = []
        # Injected through the DevTools protocol: not subject to the page's CSP, sees its violations.
        self.page.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation', "
                                  "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.requests.append(r))
        self.n = 0

    def shot(self, name: str) -> Path:
        """A full-page screenshot, numbered in the order taken."""
        self.n += 1
        path = self.shots / f"{self.n:02d}-{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def csp_violations(self) -> list[str]:
        return self.page.evaluate("window.__csp || []")

    def drop_file(self, selector: str, name: str, data: bytes, mime: str) -> None:
        """Drop a file on an element as a person would drag it there (a DataTransfer holding it)."""
        handle = self.page.evaluate_handle(
            """([b64, name, mime]) => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], name, {type: mime}));
                return dt;
            }""", [base64.b64encode(data).decode(), name, mime])
        self.page.dispatch_event(selector, "dragover", {"dataTransfer": handle})
        self.page.dispatch_event(selector, "drop", {"dataTransfer": handle})


@contextlib.contextmanager
def chromium(test_name: str, api_key: str | None = None) -> Iterator[Browser]:
    """Headless Chromium for one test, its session holding `api_key` if given; closed (with its processes)
    when the test ends."""
    from playwright.sync_api import sync_playwright
    shots = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield Browser(browser, shots, api_key)
        finally:
            browser.close()
