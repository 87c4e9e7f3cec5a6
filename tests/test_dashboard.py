"""The built-in dashboard in headless Chromium (Debian's package) against a running twin."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import IN_CI, feed_t
from tests.services import ServiceMissing, find_program, wait_until
from twin.service import Twin

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> str:
    try:
        return find_program("chromium")
    except ServiceMissing as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def test_a_new_alert_appears_without_a_reload_and_can_be_acknowledged(
    served: tuple[Twin, int], chromium: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    twin, port = served
    feed_t(twin, "press7", 20, 1)
    wait_until(lambda: twin.state.get("press7") is not None, 10, "the first reading")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector('#fleet tr[data-machine="press7"]')
        page.wait_for_selector("#live.on")
        assert page.locator("#alerts tbody tr").count() == 0
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))

        feed_t(twin, "press7", 150, 2)  # raises the "hot" alert
        row = page.wait_for_selector("#alerts tr[data-alert-id]", timeout=10_000)
        assert row is not None
        assert "press7" in row.inner_text()
        assert navigations == []  # no reload
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        page.fill("#token", "op")
        page.click("#alerts button")
        page.wait_for_selector("#alerts td:has-text('by dashboard')")
        page.click('#fleet tr[data-machine="press7"]')
        page.wait_for_selector("#signals td:has-text('150')")
        browser.close()
    (alert,) = twin.alerts.query(machine="press7")[1]
    assert (alert.acknowledged, alert.acknowledged_by) == (True, "dashboard")
    assert (tmp_path / "dashboard.png").stat().st_size > 1000
