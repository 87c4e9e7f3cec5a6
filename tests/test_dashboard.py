"""The built-in dashboard in headless Chromium (Debian's package) against a running twin."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI, feed_pipeline, feed_t
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


def test_the_machine_page_charts_its_history_forecast_what_if_and_advice_and_plans_maintenance(
    served: tuple[Twin, int], chromium: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    twin, port = served
    now = int(time.time() * 1000)
    messages: list[tuple[str, object]] = [
        ("factory/s1/lathe3/status", {"state": "online", "type": "L", "ts": now - 60_000})
    ]
    for i in range(30):  # a worn tool, at low speed with a small temperature difference
        values = {
            "air_temp_k": 302.0,
            "process_temp_k": 310.0 + 0.01 * i,
            "rotational_speed_rpm": 1320 - i,
            "torque_nm": 45.0,
            "tool_wear_min": 190 + i,
        }
        ts = now - 30_000 + i * 1000
        messages.append(("factory/s1/lathe3/telemetry", {"seq": i, "ts": ts, "values": values}))
        worn = {
            **values,
            "process_temp_k": 311.5,
            "rotational_speed_rpm": 1500,
            "tool_wear_min": 200,
        }
        messages.append(("factory/s1/mill2/telemetry", {"seq": i, "ts": ts, "values": worn}))
    feed_pipeline(twin, *messages)

    def scored() -> bool:
        return all((twin.state.get(m) or {}).get("risk") for m in ("lathe3", "mill2"))

    wait_until(scored, 10, "both machines scored")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"http://127.0.0.1:{port}/")
        page.click('#fleet tr[data-machine="lathe3"]')
        # Each signal's history, the forecast with its band and threshold.
        page.wait_for_selector("#signal-charts svg.chart polyline", state="attached")
        assert page.locator("#signal-charts svg.chart").count() == 5
        page.wait_for_selector("#forecast-chart svg polygon.band", state="attached")
        assert "crosses the threshold" in page.inner_text("#forecast-text")
        # What-if controls for the controllable signals, and the advice.
        page.wait_for_selector("#whatif input[name=rotational_speed_rpm]")
        page.wait_for_function("document.querySelector('#whatif-result').textContent.includes('→')")
        before = page.inner_text("#whatif-result")
        page.wait_for_function("document.querySelector('#advice').textContent.length > 10")
        assert "raise rotational_speed_rpm" in page.inner_text("#advice")
        page.eval_on_selector(
            "#whatif input[name=rotational_speed_rpm]",
            "input => { input.value = 1600; input.dispatchEvent(new Event('input')); }",
        )
        page.wait_for_function(
            f"document.querySelector('#whatif-result').textContent !== {before!r}"
        )
        # A maintenance plan as a timeline, accepted.
        page.fill("#token", "op")
        page.click("#plan-button")
        page.wait_for_selector("#timeline rect.window", state="attached")
        assert page.locator("#plan-costs tr").count() == 3
        page.click("#accept-button")
        page.wait_for_selector("#maintenance-list td:has-text('mill2')")
        page.screenshot(path=str(tmp_path / "machine.png"), full_page=True)
        browser.close()
    assert errors == []
    assert [w.machine for w in twin.schedule.windows()] == ["mill2"]  # lathe3: a tool won't do
    assert (tmp_path / "machine.png").stat().st_size > 10_000


def test_the_orders_page_quotes_places_and_draws_an_order(
    served: tuple[Twin, int], chromium: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    twin, port = served
    now = int(time.time() * 1000)
    messages: list[tuple[str, object]] = []
    for name, kind in (("saw1", "L"), ("mill1", "M")):
        messages.append((f"factory/s1/{name}/status", {"state": "online", "type": kind}))
        values = {
            "air_temp_k": 300.0,
            "process_temp_k": 310.0,
            "rotational_speed_rpm": 1500,
            "torque_nm": 40.0,
            "tool_wear_min": 20,
        }
        messages.append((f"factory/s1/{name}/telemetry", {"seq": 1, "ts": now, "values": values}))
    feed_pipeline(twin, *messages)
    wait_until(
        lambda: all((twin.state.get(m) or {}).get("risk") for m in ("saw1", "mill1")), 10, "scored"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"http://127.0.0.1:{port}/")
        # The catalogue's options as controls; a quote shows the scheme and the promise.
        page.wait_for_selector("#quote-options select[data-option=material]")
        page.fill("#quote-quantity", "5")
        page.fill("#quote-customer", "ACME")
        page.click("#quote-form button[type=submit]")
        page.wait_for_selector("#quote-timeline rect.operation", state="attached")
        assert page.locator("#quote-scheme tr").count() == 4  # saw, mill, deburr, price
        assert "Promised" in page.inner_text("#quote-promise")
        # A forbidden combination is named.
        page.select_option("#quote-options select[data-option=material]", "steel")
        page.select_option("#quote-options select[data-option=finish]", "anodised")
        page.click("#quote-form button[type=submit]")
        page.wait_for_function(
            "document.querySelector('#quote-error').textContent.includes('cannot be combined')"
        )
        page.select_option("#quote-options select[data-option=finish]", "none")
        page.click("#quote-form button[type=submit]")
        page.wait_for_selector("#place-button:not([hidden])")
        page.fill("#token", "op")
        page.click("#place-button")
        page.wait_for_selector("#order-list td:has-text('ACME')")
        page.click("#order-list tbody tr")
        page.wait_for_selector("#order-timeline rect.operation", state="attached")
        assert page.locator("#order-timeline rect.operation").count() == 3
        page.screenshot(path=str(tmp_path / "orders.png"), full_page=True)
        browser.close()
    assert errors == []
    placed = twin.orders.page(None, "ACME", None, 10, 0)[0]
    assert placed[0]["options"]["material"] == "steel"
    assert (tmp_path / "orders.png").stat().st_size > 10_000
