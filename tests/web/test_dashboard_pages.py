"""The dashboard's pages over plain HTTP: login and its cookie, redirects, roles, escaping,
security headers and the sessions CSV export (the browser tests cover the live behaviour)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from ocpp.v16 import call
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid import admin
from chargegrid.config import Settings
from chargegrid.store import users as user_store
from support import RunningServer, charge_point, running_server

PASSWORD = "correct horse battery"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'pages.db'}",
        liveness_flush_seconds=0.1,
        sqlite_synchronous="NORMAL",
    )
    async with running_server(settings) as running:
        now = datetime.now(UTC)

        async def setup(connection: AsyncConnection) -> None:
            for username, role in (("ada", "admin"), ("vic", "viewer")):
                await user_store.add_user(
                    connection, username, role=user_store.Role(role), now=now, password=PASSWORD
                )
            await admin.add_charge_point(connection, "CP1", now=now, hash_iterations=1000)

        await running.node.writer.run(setup)
        yield running


def browser_client(server: RunningServer) -> httpx.AsyncClient:
    """A client that behaves like a same-origin form post (the Origin check passes)."""
    return httpx.AsyncClient(
        base_url=server.http_url, headers={"Origin": server.http_url}, timeout=20
    )


async def log_in(http: httpx.AsyncClient, username: str, next_path: str = "/") -> httpx.Response:
    return await http.post(
        "/login", data={"username": username, "password": PASSWORD, "next": next_path}
    )


async def test_pages_redirect_to_login_and_the_cookie_is_strict(server: RunningServer) -> None:
    async with browser_client(server) as http:
        for path in ("/", "/charge-points/CP1", "/sessions", "/alerts", "/id-tags", "/users"):
            response = await http.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/login?next=%2F"), path

        wrong = await http.post("/login", data={"username": "ada", "password": "nope"})
        assert wrong.status_code == 401
        assert "Wrong username or password." in wrong.text
        assert "chargegrid_token" not in wrong.headers.get("set-cookie", "")

        response = await log_in(http, "ada", "/sessions")
        assert response.status_code == 303
        assert response.headers["location"] == "/sessions"
        cookie = response.headers["set-cookie"].lower()
        assert "chargegrid_token=" in cookie
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "path=/" in cookie

        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        # The API takes the same cookie (the page's scripts rely on it).
        me = await http.get("/api/v1/auth/me")
        assert me.json()["username"] == "ada"

        token = http.cookies["chargegrid_token"]
        out = await http.post("/logout")
        assert out.status_code == 303
        assert "chargegrid_token" not in http.cookies
        # The token is revoked, not only forgotten by the browser.
        again = await http.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert again.status_code == 401


async def test_login_refuses_other_sites_and_open_redirects(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=20) as http:
        cross = await http.post(
            "/login",
            data={"username": "ada", "password": PASSWORD},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
    async with browser_client(server) as http:
        for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            response = await log_in(http, "ada", target)
            assert response.headers["location"] == "/", target


async def test_charge_point_strings_are_escaped_and_viewers_get_no_commands(
    server: RunningServer,
) -> None:
    async with server.node.engine.begin() as connection:
        await connection.exec_driver_sql(
            "UPDATE charge_points SET vendor = '<script>X=1</script>', "
            "model = '\"><img src=x onerror=Y=1>' WHERE identity = 'CP1'"
        )
    async with browser_client(server) as http:
        await log_in(http, "vic")
        for path in ("/", "/charge-points/CP1"):
            html = (await http.get(path)).text
            assert "&lt;script&gt;X=1&lt;/script&gt;" in html, path
            assert "<script>X=1" not in html, path
            assert "<img src=x" not in html, path
        detail = (await http.get("/charge-points/CP1")).text
        assert 'data-command="start"' not in detail
        assert 'id="commands"' not in detail
        forbidden = await http.get("/users")
        assert forbidden.status_code == 403
        missing = await http.get("/charge-points/NOPE")
        assert missing.status_code == 404


async def test_sessions_csv_guards_against_formulas(server: RunningServer) -> None:
    # The id tag is the charge point's word: a spreadsheet must not run it as a formula.
    async with charge_point(server, "CP1") as cp:
        result = await cp.call(
            call.BootNotification(charge_point_vendor="V", charge_point_model="M")
        )
        assert result.status == "Accepted"
        started = await cp.call(
            call.StartTransaction(
                connector_id=1,
                id_tag="=HYPERLINK(1)",
                meter_start=0,
                timestamp=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            )
        )
    session_id = started.transaction_id
    async with browser_client(server) as http:
        await log_in(http, "ada")
        page = await http.get("/sessions", params={"status": "active"})
        assert "=HYPERLINK(1)" in page.text
        assert 'href="/sessions.csv?status=active"' in page.text
        export = await http.get("/sessions.csv", params={"status": "active"})
        assert export.status_code == 200
        assert export.headers["content-type"].startswith("text/csv")
        lines = export.text.splitlines()
        assert lines[0].startswith("id,charge_point,connector_id,id_tag,started_at")
        assert lines[1].startswith(f"{session_id},CP1,1,'=HYPERLINK(1),")
        bad = await http.get("/sessions.csv", params={"since": "yesterday"})
        assert bad.status_code == 422


async def test_id_tags_users_and_alerts_pages(server: RunningServer) -> None:
    await server.add_id_tag("TAG-<b>1</b>")
    async with browser_client(server) as http:
        await log_in(http, "ada")
        tags = await http.get("/id-tags", params={"q": "tag"})
        assert "TAG-&lt;b&gt;1&lt;/b&gt;" in tags.text
        users = await http.get("/users")
        assert users.status_code == 200
        assert "vic" in users.text and "viewer" in users.text
        alerts = await http.get("/alerts")
        assert alerts.status_code == 200
        assert 'id="alerts-table"' in alerts.text
