"""A real headless Chromium (Debian's ``chromium``) driven by Playwright, which records every
request a page makes. No browser is downloaded: Playwright is pointed at the installed one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import IN_CI

CHROMIUM = os.environ.get("IMGCACHE_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "img"


def chromium_path() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    message = f"{CHROMIUM} is missing (Debian package 'chromium')"
    if IN_CI:
        pytest.fail(message + "; CI=true: it must be installed")
    pytest.skip(message)


@contextmanager
def browser(profile: Path) -> Iterator[tuple[Any, list[str]]]:
    """A fresh browser context (its own user-data-dir) and the list of every URL it sent a
    request to (those the page's Content-Security-Policy blocked before sending left out)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    requested: list[str] = []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        context.on("request", lambda request: requested.append(request.url))
        # a request the page's CSP refused never left the browser: it is not counted as sent
        context.on("requestfailed", lambda request: request.failure == "csp" and requested.remove(request.url))
        context.set_default_timeout(30_000)
        try:
            yield context, requested
        finally:
            context.close()


def foreign(requested: list[str], origin: str) -> list[str]:
    """The requests that went anywhere but ``origin`` (inline ``data:``/``blob:`` images aside)."""
    return [url for url in requested if not url.startswith((origin + "/", "data:", "blob:"))]


def screenshot(page: Any, name: str) -> Path:
    """docs/img/web-NAME.png, the picture of the page the README links to."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"web-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
