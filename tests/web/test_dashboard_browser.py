"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, against the real server on 127.0.0.1 and simulated charge points from the ``ocpp``
package that answer remote commands the way a charge point does.

Runs on SQLite (its own server fixture): the dashboard reads through the same API handlers on
every database, which the API tests already cover on PostgreSQL.

With ``CHARGEGRID_SCREENSHOTS=<dir>`` the tests also save the screenshots shown in the README
(``CHARGEGRID_SCREENSHOTS=docs/screenshots pytest tests/web``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.routing import after, on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid import admin
from chargegrid.config import Settings
from chargegrid.store import users as user_store
from support import RecordingChargePoint, RunningServer, charge_point, running_server

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("CHARGEGRID_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery"
SCREENSHOTS = os.environ.get("CHARGEGRID_SCREENSHOTS")

try:
    from playwright.async_api import Browser, Page, WebSocket, async_playwright, expect
except ImportError:  # pragma: no cover - depends on the machine
    if IN_CI:
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)

if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():  # pragma: no cover
    if IN_CI:
        raise RuntimeError(f"the browser tests need Chromium at {CHROMIUM}")
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)


def iso(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SimulatedChargePoint(RecordingChargePoint):
    """Answers remote start and stop as a charge point does: accept, then start or stop the
    transaction itself (StartTransaction / StopTransaction and the status changes)."""

    meter = 1000
    transaction_id: int | None = None

    async def send(self, payload: Any) -> Any:
        return await self.call(payload, suppress=False)

    @on(Action.remote_start_transaction)
    async def on_remote_start(self, id_tag: str, **_: Any) -> Any:
        return call_result.RemoteStartTransaction(status="Accepted")

    @after(Action.remote_start_transaction)
    async def start_after_remote_start(self, id_tag: str, connector_id: int = 1, **_: Any) -> None:
        await self.send(
            call.StatusNotification(
                connector_id=connector_id, error_code="NoError", status="Preparing"
            )
        )
        result = await self.send(
            call.StartTransaction(
                connector_id=connector_id, id_tag=id_tag, meter_start=self.meter, timestamp=iso()
            )
        )
        self.transaction_id = result.transaction_id
        await self.send(
            call.StatusNotification(
                connector_id=connector_id, error_code="NoError", status="Charging"
            )
        )

    @on(Action.remote_stop_transaction)
    async def on_remote_stop(self, transaction_id: int, **_: Any) -> Any:
        status = "Accepted" if transaction_id == self.transaction_id else "Rejected"
        return call_result.RemoteStopTransaction(status=status)

    @after(Action.remote_stop_transaction)
    async def stop_after_remote_stop(self, transaction_id: int, **_: Any) -> None:
        if transaction_id != self.transaction_id:
            return
        self.meter += 7_500
        await self.send(
            call.StopTransaction(
                transaction_id=transaction_id,
                meter_stop=self.meter,
                timestamp=iso(),
                reason="Remote",
            )
        )
        self.transaction_id = None
        await self.send(
            call.StatusNotification(connector_id=1, error_code="NoError", status="Finishing")
        )


async def boot(cp: SimulatedChargePoint, vendor: str = "Vend", model: str = "Mod") -> None:
    result = await cp.send(
        call.BootNotification(
            charge_point_vendor=vendor, charge_point_model=model, firmware_version="1.2.3"
        )
    )
    assert result.status == "Accepted"
    for connector in (0, 1):
        await status(cp, connector, "Available")


async def status(cp: SimulatedChargePoint, connector: int, state: str, **kwargs: Any) -> None:
    await cp.send(
        call.StatusNotification(
            connector_id=connector,
            error_code=kwargs.pop("error_code", "NoError"),
            status=state,
            **kwargs,
        )
    )


async def meter(cp: SimulatedChargePoint, at: datetime, samples: list[dict[str, Any]]) -> None:
    await cp.send(
        call.MeterValues(
            connector_id=1,
            transaction_id=cp.transaction_id,
            meter_value=[{"timestamp": iso(at), "sampled_value": samples}],
        )
    )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """The real server on SQLite, with one user per role (passwords: the dashboard logs in)."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'dashboard.db'}",
        call_timeout=3.0,
        liveness_flush_seconds=0.1,
        sqlite_synchronous="NORMAL",
        live_stats_interval=0.2,  # fleet figures follow quickly enough to watch them change
    )
    async with running_server(settings) as running:
        now = datetime.now(UTC)

        async def setup(connection: AsyncConnection) -> None:
            for username, role in (("ada", "admin"), ("otto", "operator"), ("vic", "viewer")):
                await user_store.add_user(
                    connection, username, role=user_store.Role(role), now=now, password=PASSWORD
                )
            for identity in ("CP1", "CP2"):
                await admin.add_charge_point(connection, identity, now=now, hash_iterations=1000)
            await admin.add_id_tag(connection, "TAG1", now=now)

        await running.node.writer.run(setup)
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


class Session:
    """A logged-in browser page, collecting script errors (CSP violations included)."""

    def __init__(self, page: Page, server: RunningServer) -> None:
        self.page = page
        self.server = server
        # The server's answers ("subscribed", or an "error") to the subscribe messages on the
        # page's live socket, counted as the browser receives them (see live()).
        self._live_socket: WebSocket | None = None
        self.live_answers = 0
        page.on("websocket", self._watch)
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )

    async def open(self, path: str) -> Page:
        await self.page.goto(self.server.http_url + path)
        return self.page

    def _watch(self, socket: WebSocket) -> None:
        if "/api/v1/live" not in socket.url:
            return
        self._live_socket, self.live_answers = socket, 0  # a new page's live socket

        def received(payload: str | bytes) -> None:
            if socket is not self._live_socket:
                return
            with contextlib.suppress(ValueError):
                message = json.loads(payload)
                if isinstance(message, dict) and message.get("type") in ("subscribed", "error"):
                    self.live_answers += 1

        socket.on("framereceived", received)

    async def live(self) -> None:
        """Wait until the live socket is open and the server has answered every subscription
        the page sent (the client does not report "subscribed", but its socket receives it):
        from then on the server delivers the events the page subscribed to. A fixed pause
        was a race with a slow browser or server."""
        await expect(self.page.locator("#live-state")).to_have_attribute("data-state", "open")
        sent = await self.page.evaluate("window.chargegridDashboard.live._subscriptions.length")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while self.live_answers < sent:
            assert loop.time() < deadline, f"{self.live_answers} of {sent} subscriptions answered"
            await asyncio.sleep(0.02)

    async def snap(self, name: str) -> None:
        if SCREENSHOTS:
            directory = Path(SCREENSHOTS)
            await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
            await self.page.evaluate("window.scrollTo(0, 0)")
            await self.page.screenshot(path=str(directory / f"{name}.png"))


async def login(browser: Browser, server: RunningServer, username: str) -> Session:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    session = Session(page, server)
    await page.goto(server.http_url + "/")
    assert "/login" in page.url, "an unauthenticated page redirects to the login"
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(server.http_url + "/")
    return session


async def test_login_and_the_fleet_overview_changes_live(
    server: RunningServer, browser: Browser
) -> None:
    async with charge_point(server, "CP1", cls=SimulatedChargePoint) as cp:
        await boot(cp)
        session = await login(browser, server, "otto")
        page = session.page
        await expect(page.locator('[data-stat="total"]')).to_have_text("2")
        await expect(page.locator('[data-stat="connected"]')).to_have_text("1")
        card = page.locator('.cp-card[data-identity="CP1"]')
        await expect(card.locator('[data-role="status"]').first).to_have_text("Available")
        await expect(card.locator('[data-role="online"]')).to_have_text("Online")
        offline = page.locator('.cp-card[data-identity="CP2"] [data-role="online"]')
        await expect(offline).to_have_text("Offline")
        await session.live()

        await status(cp, 0, "Faulted", error_code="GroundFailure")
        await expect(card.locator(".cp-head [data-role='status']")).to_have_text("Faulted")
        await status(cp, 1, "Charging")
        await expect(card.locator('[data-connector="1"]')).to_have_text("Charging")
        await expect(page.locator('[data-stat="charging"]')).to_have_text("1")
        await status(cp, 0, "Available")
        await expect(card.locator(".cp-head [data-role='status']")).to_have_text("Available")
        await session.snap("fleet")

    # The charge point went away: the card says so without a reload.
    await expect(card.locator('[data-role="online"]')).to_have_text("Offline")
    await expect(page.locator('[data-stat="connected"]')).to_have_text("0")

    # Search narrows the list (server side).
    await page.get_by_label("Search").fill("cp2")
    await page.get_by_role("button", name="Apply").click()
    await expect(page.locator(".cp-card")).to_have_count(1)
    await expect(page.locator('.cp-card[data-identity="CP2"]')).to_be_visible()

    # Logging out ends the session: pages need a new login.
    await page.get_by_role("button", name="Log out").click()
    await page.wait_for_url("**/login")
    await session.snap("login")
    await page.goto(server.http_url + "/sessions")
    assert "/login" in page.url
    assert session.errors == []


async def test_start_and_stop_buttons_drive_the_charge_point_and_the_charts_grow(
    server: RunningServer, browser: Browser
) -> None:
    async with charge_point(server, "CP1", cls=SimulatedChargePoint) as cp:
        await boot(cp)
        session = await login(browser, server, "otto")
        page = await session.open("/charge-points/CP1")
        await expect(page.locator("#session-none")).to_be_visible()
        await session.live()

        # Start: RemoteStartTransaction -> the charge point accepts and starts a transaction.
        await page.get_by_label("Id tag").fill("TAG1")
        await page.locator("#start-button").click()
        facts = page.locator("#session-facts")
        await expect(facts).to_be_visible()
        await expect(facts.locator('[data-field="state"]')).to_have_text("active")
        await expect(facts.locator('[data-field="id_tag"]')).to_have_text("TAG1")
        operation = page.locator("#operations tbody tr").filter(has_text="RemoteStartTransaction")
        await expect(operation.locator('[data-role="op-status"]')).to_have_text("accepted")
        await expect(
            page.locator('#connectors tr[data-connector="1"] [data-role="status"]')
        ).to_have_text("Charging")
        transaction_id = cp.transaction_id
        assert transaction_id is not None
        await expect(
            page.locator(f'#recent-sessions tr[data-session="{transaction_id}"]')
        ).to_contain_text("active")

        # Meter values arrive: the live power and energy charts grow, readings per phase show.
        chart = page.locator("#power-chart")
        start = datetime.now(UTC)
        for step in range(4):
            await meter(
                cp,
                start + timedelta(seconds=10 * step),
                [
                    {
                        "value": str(7000 + 100 * step),
                        "measurand": "Power.Active.Import",
                        "unit": "W",
                    },
                    {
                        "value": str(1000 + 500 * step),
                        "measurand": "Energy.Active.Import.Register",
                        "unit": "Wh",
                    },
                    {"value": "231.5", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
                    {"value": "16.2", "measurand": "Current.Import", "unit": "A", "phase": "L1"},
                    {"value": str(40 + step), "measurand": "SoC", "unit": "Percent"},
                ],
            )
            await expect(chart).to_have_attribute("data-points", str(step + 1))
        await expect(page.locator("#energy-chart")).to_have_attribute("data-points", "4")
        await expect(facts.locator('[data-field="power"]')).to_have_text("7.30 kW")
        await expect(facts.locator('[data-field="energy"]')).to_have_text("1.50 kWh")
        readings = page.locator("#readings")
        await expect(readings.locator("tr").filter(has_text="Voltage")).to_contain_text("L1-N")
        await expect(readings.locator("tr").filter(has_text="SoC")).to_contain_text("43")
        await session.snap("charge-point")

        # Stop: RemoteStopTransaction -> the charge point stops; the session completes.
        await page.locator("#stop-button").click()
        await expect(facts.locator('[data-field="state"]')).to_have_text("completed")
        row = page.locator(f'#recent-sessions tr[data-session="{transaction_id}"]')
        await expect(row.locator('[data-role="session-status"]')).to_have_text("completed")
        await expect(row.locator('[data-role="energy"]')).to_have_text("7.50 kWh")
        stopped = await server.scalar(
            "SELECT stop_reason FROM transactions WHERE id = :id", id=transaction_id
        )
        assert stopped == "Remote"

        # The sessions page lists it, and its CSV export carries it.
        page = await session.open("/sessions?status=completed")
        await expect(
            page.locator(f'#sessions-table tr[data-session="{transaction_id}"]')
        ).to_contain_text("TAG1")
        await session.snap("sessions")
        async with page.expect_download() as download_info:
            await page.locator("#export-csv").click()
        download = await download_info.value
        text = await asyncio.to_thread(Path(await download.path()).read_text)
        assert text.splitlines()[0].startswith("id,charge_point,connector_id,id_tag")
        assert f"{transaction_id},CP1,1,TAG1" in text
    assert session.errors == []


async def test_a_charge_points_strings_stay_inert(server: RunningServer, browser: Browser) -> None:
    vendor = "<script>X=1</script>"  # 20 characters: the most BootNotification allows
    model = "<svg onload=Y=1>"
    async with charge_point(server, "CP1", cls=SimulatedChargePoint) as cp:
        await boot(cp, vendor=vendor, model=model)
        session = await login(browser, server, "ada")
        page = session.page
        await expect(page.locator('.cp-card[data-identity="CP1"] .cp-vendor')).to_have_text(
            f"{vendor} {model}"
        )
        page = await session.open("/charge-points/CP1")
        await expect(page.locator("#cp-vendor")).to_have_text(vendor)
        await expect(page.locator("#cp-model")).to_have_text(model)
        await session.live()
        # Live data goes through textContent: an info string with markup stays text too.
        info = "<img src=x onerror=Z=1>"
        await status(cp, 1, "Faulted", error_code="OtherError", info=info)
        row = page.locator('#connectors tr[data-connector="1"]')
        await expect(row.locator('[data-role="info"]')).to_have_text(info)
        await expect(page.locator("#event-log")).to_contain_text("Connector 1: Faulted")
        await asyncio.sleep(0.2)
        flags = await page.evaluate("[typeof X, typeof Y, typeof Z]")
        assert flags == ["undefined", "undefined", "undefined"]
        assert await page.locator("#connectors img, #cp-facts script, #cp-facts svg").count() == 0


async def test_a_viewer_sees_no_command_buttons(server: RunningServer, browser: Browser) -> None:
    async with charge_point(server, "CP1", cls=SimulatedChargePoint) as cp:
        await boot(cp)
        session = await login(browser, server, "vic")
        page = await session.open("/charge-points/CP1")
        await expect(page.locator("#connectors")).to_be_visible()
        await expect(page.locator("#commands")).to_have_count(0)
        await expect(page.locator("form[data-command]")).to_have_count(0)
        await expect(page.get_by_role("button", name="Start")).to_have_count(0)
        await expect(page.get_by_role("button", name="Stop")).to_have_count(0)
        await expect(page.locator("#config-read")).to_have_count(0)
        # Users are for administrators: no link, and the page says no.
        await expect(page.get_by_role("link", name="Users")).to_have_count(0)
        assert session.errors == []
        page = await session.open("/users")  # its 403 is logged to the console: checked above
        await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()


async def test_configuration_and_history(server: RunningServer, browser: Browser) -> None:
    class Configurable(SimulatedChargePoint):
        values = {"HeartbeatInterval": "300", "MeterValueSampleInterval": "60"}

        @on(Action.get_configuration)
        async def on_get_configuration(self, **_: Any) -> Any:
            return call_result.GetConfiguration(
                configuration_key=[
                    {"key": key, "readonly": False, "value": value}
                    for key, value in self.values.items()
                ]
            )

        @on(Action.change_configuration)
        async def on_change_configuration(self, key: str, value: str) -> Any:
            self.values[key] = value
            return call_result.ChangeConfiguration(status="Accepted")

    async with charge_point(server, "CP1", cls=Configurable) as cp:
        await boot(cp)
        # Earlier values, outside any session: the history chart shows them, the live chart
        # does not. All three inside one clock hour (one hourly bucket) and within the last hour.
        now = datetime.now(UTC)
        hour = now.replace(minute=0, second=0, microsecond=0)
        if now - hour < timedelta(seconds=5):
            await asyncio.sleep(5)  # just past the hour: keep the values in the past
        earlier = max(hour, now - timedelta(minutes=50))
        for step in range(3):
            await meter(
                cp,
                earlier + timedelta(seconds=step),
                [{"value": str(3000 + step), "measurand": "Power.Active.Import", "unit": "W"}],
            )
        session = await login(browser, server, "otto")
        page = await session.open("/charge-points/CP1")
        # 24 hours come from the hourly rollups: the three values are one hour's average.
        await expect(page.locator("#history-power")).to_have_attribute("data-points", "1")
        await expect(page.locator("#history-message")).to_contain_text("hourly averages")
        # The last hour comes from the raw values.
        await page.locator("#history-range").select_option("3600")
        await page.locator("#history-form").get_by_role("button", name="Show").click()
        await expect(page.locator("#history-power")).to_have_attribute("data-points", "3")
        await expect(page.locator("#history-message")).to_contain_text("3 power readings")
        await page.get_by_role("button", name="Read from charge point").click()
        table = page.locator("#configuration")
        await expect(table.locator("tr").filter(has_text="HeartbeatInterval")).to_contain_text(
            "300"
        )
        await page.locator("#config-key").fill("HeartbeatInterval")
        await page.locator("#config-value").fill("120")
        await page.get_by_role("button", name="Change").click()
        await expect(page.locator("#config-message")).to_contain_text("Accepted")
        await expect(table.locator("tr").filter(has_text="HeartbeatInterval")).to_contain_text(
            "120"
        )
        await expect(
            page.locator("#operations tbody tr").filter(has_text="ChangeConfiguration")
        ).to_contain_text("accepted")
    assert session.errors == []


async def test_an_alert_appears_when_a_threshold_is_crossed(
    server: RunningServer, browser: Browser
) -> None:
    """The reference's default rule (power above 50 kW) raises an alert that appears live on
    the alerts page; an operator acknowledges it there."""
    async with charge_point(server, "CP1", cls=SimulatedChargePoint) as cp:
        await boot(cp)
        session = await login(browser, server, "otto")
        page = await session.open("/alerts")
        await session.live()
        await expect(page.locator("#alerts-message")).to_have_text("No open alerts.")
        await meter(
            cp,
            datetime.now(UTC),
            [{"value": "62000", "measurand": "Power.Active.Import", "unit": "W"}],
        )
        row = page.locator("#alerts-table tbody tr")
        await expect(row).to_have_count(1)
        await expect(row.first).to_contain_text("CP1")
        await expect(row.first).to_contain_text("62000")
        await row.first.get_by_role("button", name="Acknowledge").click()
        # Still over 50 kW: acknowledged, and still raised.
        await expect(row.first).to_contain_text("raised (acknowledged)")
        assert session.errors == []
