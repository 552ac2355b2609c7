"""Who may do what through the API: 401 without a valid token, 403 below the route's role, 404 for
a charge point outside the user's groups (issue 3, "Users")."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from cmdsupport import ScriptedChargePoint, api, make_user, put_in_group

from support import RunningServer, charge_point

COMMAND_ROUTES = [
    ("/api/v1/charge-points/CP1/commands/reset", {"type": "Soft"}),
    ("/api/v1/charge-points/CP1/start", {"connector_id": 1, "id_tag": "TAG1"}),
    ("/api/v1/charge-points/CP1/stop", None),
    ("/api/v1/charge-points/CP1/reset", None),
    ("/api/v1/charge-points/CP1/unlock", {"connector_id": 1}),
    ("/api/v1/charge-points/CP1/availability", {"type": "Operative"}),
]


async def test_no_garbage_or_expired_token_is_401(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    expired = await make_user(
        server, "old", "admin", expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    routes = [
        ("GET", "/api/v1/auth/me"),
        ("GET", "/api/v1/users"),
        ("GET", "/api/v1/operations/1"),
        ("GET", "/api/v1/charge-points/CP1/operations"),
        ("POST", "/api/v1/charge-points/CP1/commands/reset"),
        ("POST", "/api/v1/charge-points/CP1/start"),
    ]
    for token in (None, "garbage", "cg_" + "A" * 43, expired):
        async with api(server, token) as client:
            for method, path in routes:
                response = await client.request(method, path, json={"type": "Soft"})
                assert response.status_code == 401, (token, method, path, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
    assert await server.scalar("SELECT count(*) FROM operations") == 0


async def test_viewer_reads_but_cannot_command(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    viewer = await make_user(server, "view", "viewer")
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, viewer) as client,
    ):
        for path, body in COMMAND_ROUTES:
            response = await client.post(path, json=body)
            assert response.status_code == 403, (path, response.text)
            assert "operator" in response.json()["detail"]
        assert (await client.get("/api/v1/charge-points/CP1/operations")).status_code == 200
        assert (await client.get("/api/v1/users")).status_code == 403
        assert cp.calls == []


async def test_operator_commands_but_does_not_manage_users(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    operator = await make_user(server, "ops", "operator")
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, operator) as client,
    ):
        done = await client.post(
            "/api/v1/charge-points/CP1/commands/reset?wait=true", json={"type": "Soft"}
        )
        assert done.status_code == 200
        assert cp.calls == [("Reset", {"type": "Soft"})]
        for method, path in (
            ("GET", "/api/v1/users"),
            ("POST", "/api/v1/users"),
            ("GET", "/api/v1/groups"),
            ("POST", "/api/v1/users/ops/tokens"),
            ("DELETE", "/api/v1/users/ops"),
            ("PUT", "/api/v1/groups/g/charge-points/CP1"),
        ):
            response = await client.request(
                method, path, json={"username": "x", "role": "admin", "name": "g"}
            )
            assert response.status_code == 403, (method, path)
    admin = await make_user(server, "root", "admin")
    async with api(server, admin) as client:
        assert (await client.get("/api/v1/users")).status_code == 200
        assert (await client.get("/api/v1/groups")).status_code == 200


async def test_login(server: RunningServer) -> None:
    await make_user(server, "alice", "viewer", password="alice-password")
    await make_user(server, "robot", "operator")  # token-only
    async with api(server) as client:
        ok = await client.post(
            "/api/v1/auth/token", json={"username": "alice", "password": "alice-password"}
        )
        assert ok.status_code == 200
        for username, password in (
            ("alice", "wrong-password"),
            ("nobody", "alice-password"),
            ("robot", "anything-at-all"),
            ("robot", ""),
        ):
            response = await client.post(
                "/api/v1/auth/token", json={"username": username, "password": password}
            )
            assert response.status_code in (401, 422), (username, password)
            if password:
                assert response.status_code == 401
            assert "token" not in response.json()


def _fill(path: str, identity: str) -> str:
    """``path`` with ``{identity}`` set and every other parameter a plausible value."""
    path = path.replace("{identity}", identity)
    return re.sub(r"\{[^}]+\}", "1", path)


async def test_group_limited_user_sees_only_its_group(server: RunningServer) -> None:
    await server.add_charge_point("CP_IN")
    await server.add_charge_point("CP_OUT")
    await put_in_group(server, "G", "CP_IN")
    limited = await make_user(server, "limited", "operator", groups=("G",))
    admin = await make_user(server, "root", "admin")
    # An operation on the hidden charge point.
    async with (
        charge_point(server, "CP_OUT", cls=ScriptedChargePoint),
        api(server, admin) as client,
    ):
        done = await client.post(
            "/api/v1/charge-points/CP_OUT/commands/reset?wait=true", json={"type": "Soft"}
        )
        hidden_operation = done.json()["id"]
        spec: dict[str, Any] = (await client.get("/openapi.json")).json()
    get_paths = [
        path
        for path, item in spec["paths"].items()
        if "{identity}" in path and "get" in item and path.startswith("/api/")
    ]
    assert "/api/v1/charge-points/{identity}/operations" in get_paths
    async with api(server, limited) as client:
        for path in get_paths:
            outside = await client.get(_fill(path, "CP_OUT"))
            assert outside.status_code == 404, (path, outside.text)
            assert "CP_OUT" not in outside.text.replace("'CP_OUT'", "")  # nothing but "no such"
            inside = await client.get(_fill(path, "CP_IN"))
            assert inside.status_code not in (401, 403), (path, inside.text)
            if path.count("{") == 1:
                assert inside.status_code == 200, (path, inside.text)
        assert (await client.get(f"/api/v1/operations/{hidden_operation}")).status_code == 404
        command = await client.post(
            "/api/v1/charge-points/CP_OUT/commands/reset", json={"type": "Soft"}
        )
        assert command.status_code == 404
        for path, body in COMMAND_ROUTES:
            response = await client.post(path.replace("CP1", "CP_OUT"), json=body)
            assert response.status_code == 404, path
        # Lists show only the group's charge points.
        if "/api/v1/charge-points" in spec["paths"]:
            listed = await client.get("/api/v1/charge-points")
            assert listed.status_code == 200
            assert "CP_IN" in listed.text
            assert "CP_OUT" not in listed.text
    # The admin still sees both.
    async with api(server, admin) as client:
        for identity in ("CP_IN", "CP_OUT"):
            response = await client.get(f"/api/v1/charge-points/{identity}/operations")
            assert response.status_code == 200
