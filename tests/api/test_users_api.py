"""User management through the REST API (admin only): users, tokens, groups."""

from __future__ import annotations

import httpx
from cmdsupport import api, make_user

from support import RunningServer


async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/token", json={"username": username, "password": password}
    )


async def test_create_list_get_user_never_shows_password(server: RunningServer) -> None:
    token = await make_user(server, "root", "admin")
    async with api(server, token) as client:
        created = await client.post(
            "/api/v1/users",
            json={"username": "alice", "role": "operator", "password": "correct horse"},
        )
        assert created.status_code == 201, created.text
        assert created.json() == {
            "username": "alice",
            "role": "operator",
            "all_charge_points": True,
            "disabled": False,
            "has_password": True,
            "groups": [],
        }
        assert "correct horse" not in created.text
        listed = await client.get("/api/v1/users")
        assert [u["username"] for u in listed.json()] == ["alice", "root"]
        assert "password" not in listed.text.replace("has_password", "")
        one = await client.get("/api/v1/users/alice")
        assert one.json() == created.json()
        assert (await client.get("/api/v1/users/bob")).status_code == 404
        again = await client.post(
            "/api/v1/users", json={"username": "alice", "role": "viewer", "password": "x" * 8}
        )
        assert again.status_code == 409
        # Stored hashed (argon2), never in clear.
        stored = await server.scalar("SELECT password_hash FROM users WHERE username = 'alice'")
        assert stored.startswith("$argon2")
        # The password works for logging in; the token it gives carries the role.
        async with api(server) as anonymous:
            issued = await login(anonymous, "alice", "correct horse")
            assert issued.status_code == 200, issued.text
            assert issued.json()["role"] == "operator"
        async with api(server, issued.json()["token"]) as alice:
            me = await alice.get("/api/v1/auth/me")
            assert me.json()["username"] == "alice"


async def test_create_user_validation(server: RunningServer) -> None:
    token = await make_user(server, "root", "admin")
    async with api(server, token) as client:
        for body in (
            {"username": "short", "role": "viewer", "password": "1234567"},  # < 8 characters
            {"username": "x", "role": "superuser", "password": "long enough"},
            {"username": "", "role": "viewer"},
            {"username": "a/b", "role": "viewer"},
            {"username": "u" * 65, "role": "viewer"},
            {"role": "viewer"},
            {"username": "g", "role": "viewer", "groups": ["no-such-group"]},
        ):
            response = await client.post("/api/v1/users", json=body)
            expected = 404 if "groups" in body else 422
            assert response.status_code == expected, (body, response.text)
        assert [u["username"] for u in (await client.get("/api/v1/users")).json()] == ["root"]
        seven = await client.post(
            "/api/v1/users", json={"username": "s", "role": "viewer", "password": "1234567"}
        )
        assert "8" in seven.text  # the message says how long it has to be


async def test_patch_role_password_disabled(server: RunningServer) -> None:
    token = await make_user(server, "root", "admin")
    async with api(server, token) as client, api(server) as anonymous:
        await client.post(
            "/api/v1/users", json={"username": "bob", "role": "viewer", "password": "first-pass"}
        )
        role = await client.patch("/api/v1/users/bob", json={"role": "operator"})
        assert role.json()["role"] == "operator"
        assert (await client.patch("/api/v1/users/bob", json={"role": "king"})).status_code == 422
        short = await client.patch("/api/v1/users/bob", json={"password": "short"})
        assert short.status_code == 422
        assert (await login(anonymous, "bob", "first-pass")).status_code == 200
        changed = await client.patch("/api/v1/users/bob", json={"password": "second-pass"})
        assert changed.status_code == 200
        assert "second-pass" not in changed.text
        assert (await login(anonymous, "bob", "first-pass")).status_code == 401
        issued = await login(anonymous, "bob", "second-pass")
        assert issued.status_code == 200
        bob_token = issued.json()["token"]
        async with api(server, bob_token) as bob:
            assert (await bob.get("/api/v1/auth/me")).status_code == 200
            disabled = await client.patch("/api/v1/users/bob", json={"disabled": True})
            assert disabled.json()["disabled"] is True
            assert (await bob.get("/api/v1/auth/me")).status_code == 401
            assert (await login(anonymous, "bob", "second-pass")).status_code == 401
            await client.patch("/api/v1/users/bob", json={"disabled": False})
            assert (await bob.get("/api/v1/auth/me")).status_code == 200
        # null password: token-only from now on.
        token_only = await client.patch("/api/v1/users/bob", json={"password": None})
        assert token_only.json()["has_password"] is False
        assert (await login(anonymous, "bob", "second-pass")).status_code == 401
        assert (await client.patch("/api/v1/users/nobody", json={})).status_code == 404


async def test_admin_cannot_lock_itself_out(server: RunningServer) -> None:
    token = await make_user(server, "root", "admin")
    async with api(server, token) as client:
        assert (await client.delete("/api/v1/users/root")).status_code == 409
        demote = await client.patch("/api/v1/users/root", json={"role": "viewer"})
        assert demote.status_code == 409
        assert (
            await client.patch("/api/v1/users/root", json={"disabled": True})
        ).status_code == 409
        assert (await client.get("/api/v1/users/root")).json()["role"] == "admin"


async def test_tokens_issue_once_and_revoke_all(server: RunningServer) -> None:
    token = await make_user(server, "root", "admin")
    async with api(server, token) as client:
        await client.post("/api/v1/users", json={"username": "app", "role": "viewer"})
        first = await client.post("/api/v1/users/app/tokens", json={"name": "grafana"})
        assert first.status_code == 201, first.text
        assert first.json()["token"].startswith("cg_")
        assert first.json()["expires_at"] is None
        second = await client.post("/api/v1/users/app/tokens", json={"expires_in_days": 7})
        assert second.json()["expires_at"] is not None
        # Only hashes are stored.
        hashes = await server.rows("SELECT token_hash FROM api_tokens")
        assert first.json()["token"] not in repr(hashes)
        for issued in (first, second):
            async with api(server, issued.json()["token"]) as app:
                assert (await app.get("/api/v1/auth/me")).json()["username"] == "app"
        revoked = await client.delete("/api/v1/users/app/tokens")
        assert revoked.json() == {"revoked": 2}
        for issued in (first, second):
            async with api(server, issued.json()["token"]) as app:
                assert (await app.get("/api/v1/auth/me")).status_code == 401
        assert (await client.get("/api/v1/auth/me")).status_code == 200  # others' tokens stay
        assert (await client.post("/api/v1/users/nobody/tokens")).status_code == 404
        bad = await client.post("/api/v1/users/app/tokens", json={"expires_in_days": 0})
        assert bad.status_code == 422


async def test_delete_user_removes_its_tokens(server: RunningServer) -> None:
    token = await make_user(server, "root", "admin")
    victim = await make_user(server, "gone", "operator")
    async with api(server, token) as client:
        assert (await client.delete("/api/v1/users/gone")).status_code == 204
        assert (await client.get("/api/v1/users/gone")).status_code == 404
        assert (await client.delete("/api/v1/users/gone")).status_code == 404
    async with api(server, victim) as gone:
        assert (await gone.get("/api/v1/auth/me")).status_code == 401
    assert await server.scalar("SELECT count(*) FROM api_tokens") == 1


async def test_groups_membership_and_visibility(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    await server.add_charge_point("CP2")
    token = await make_user(server, "root", "admin")
    async with api(server, token) as client:
        assert (await client.post("/api/v1/groups", json={"name": "north"})).status_code == 201
        assert (await client.post("/api/v1/groups", json={"name": "north"})).status_code == 409
        assert (await client.post("/api/v1/groups", json={"name": ""})).status_code == 422
        created = await client.post(
            "/api/v1/users",
            json={
                "username": "limited",
                "role": "viewer",
                "all_charge_points": False,
                "groups": ["north"],
            },
        )
        assert created.json()["groups"] == ["north"]
        issued = await client.post("/api/v1/users/limited/tokens")
        put = await client.put("/api/v1/groups/north/charge-points/CP1")
        assert put.status_code == 204
        assert (await client.put("/api/v1/groups/north/charge-points/CP1")).status_code == 204
        assert (await client.put("/api/v1/groups/north/charge-points/NOPE")).status_code == 404
        assert (await client.put("/api/v1/groups/south/charge-points/CP1")).status_code == 404
        groups = await client.get("/api/v1/groups")
        assert groups.json() == [{"name": "north", "charge_points": ["CP1"], "users": ["limited"]}]
        async with api(server, issued.json()["token"]) as limited:
            assert (await limited.get("/api/v1/charge-points/CP1/operations")).status_code == 200
            assert (await limited.get("/api/v1/charge-points/CP2/operations")).status_code == 404
            await client.put("/api/v1/groups/north/charge-points/CP2")
            assert (await limited.get("/api/v1/charge-points/CP2/operations")).status_code == 200
            removed = await client.delete("/api/v1/groups/north/charge-points/CP2")
            assert removed.status_code == 204
            assert (await limited.get("/api/v1/charge-points/CP2/operations")).status_code == 404
            revoked = await client.delete("/api/v1/groups/north/users/limited")
            assert revoked.status_code == 204
            assert (await limited.get("/api/v1/charge-points/CP1/operations")).status_code == 404
            assert (await client.put("/api/v1/groups/north/users/limited")).status_code == 204
            assert (await limited.get("/api/v1/charge-points/CP1/operations")).status_code == 200
            assert (await client.put("/api/v1/groups/north/users/nobody")).status_code == 404
            # Seeing everything again.
            await client.patch("/api/v1/users/limited", json={"all_charge_points": True})
            assert (await limited.get("/api/v1/charge-points/CP2/operations")).status_code == 200
        assert (await client.delete("/api/v1/groups/north")).status_code == 204
        assert (await client.get("/api/v1/groups")).json() == []
        assert (await client.get("/api/v1/users/limited")).json()["groups"] == []
