"""REST: id tags CRUD and the all-or-nothing CSV import, on SQLite and PostgreSQL; a created tag
is then used by a real charge point to authorize."""

from __future__ import annotations

from typing import Any

from apisupport import boot, clients, provision, send
from ocpp.v16 import call

from support import RunningServer, charge_point


async def test_crud(server: RunningServer) -> None:
    async with clients(server) as (admin, viewer, anonymous):
        assert (await anonymous.get("/id-tags")).status_code == 401
        assert (await anonymous.post("/id-tags", json={"id_tag": "X"})).status_code == 401
        forbidden = await viewer.post("/id-tags", json={"id_tag": "X"})
        assert forbidden.status_code == 403
        assert forbidden.json() == {"detail": "this needs the admin role or higher"}

        response = await admin.post(
            "/id-tags",
            json={"id_tag": "TAG1", "expiry": "2030-01-01T00:00:00+01:00", "parent": "FLEET"},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert {k: body[k] for k in ("id_tag", "status", "expiry_date", "parent_id_tag")} == {
            "id_tag": "TAG1",
            "status": "Accepted",
            "expiry_date": "2029-12-31T23:00:00.000Z",
            "parent_id_tag": "FLEET",
        }
        assert body["created_at"].endswith("Z")
        assert (await viewer.get("/id-tags/TAG1")).json() == body

        duplicate = await admin.post("/id-tags", json={"id_tag": "TAG1"})
        assert duplicate.status_code == 409
        assert duplicate.json() == {"detail": "id tag 'TAG1' already exists"}
        for payload, message in [
            ({"id_tag": "X" * 21}, "an id tag is 1 to 20 characters"),
            ({"id_tag": ""}, "an id tag is 1 to 20 characters"),
            ({"id_tag": "T2", "status": "Fine"}, "id tag status must be one of"),
            ({"id_tag": "T2", "expiry": "next week"}, "expiry must be an ISO 8601 date-time"),
            ({"id_tag": "T2", "parent": "P" * 21}, "a parent id tag is 1 to 20 characters"),
        ]:
            response = await admin.post("/id-tags", json=payload)
            assert response.status_code == 422, payload
            assert message in response.json()["detail"]
        assert (await admin.post("/id-tags", json={})).status_code == 422

        await admin.post("/id-tags", json={"id_tag": "blocked-1", "status": "Blocked"})
        await admin.post("/id-tags", json={"id_tag": "TAG2"})

        async def tags(**params: Any) -> tuple[list[str], int]:
            response = await viewer.get("/id-tags", params=params)
            assert response.status_code == 200, response.text
            return [t["id_tag"] for t in response.json()["items"]], response.json()["total"]

        assert await tags() == (["TAG1", "TAG2", "blocked-1"], 3)
        assert await tags(q="tag") == (["TAG1", "TAG2"], 2)
        assert await tags(q="_") == ([], 0)  # literal, not a LIKE wildcard
        assert await tags(status="Blocked") == (["blocked-1"], 1)
        assert await tags(limit=1, offset=1) == (["TAG2"], 3)
        bad_status = await viewer.get("/id-tags", params={"status": "Nope"})
        assert bad_status.status_code == 422
        assert "status must be one of Accepted, Blocked, Expired, Invalid" in bad_status.text

        # PATCH: only given fields change; null clears
        patched = await admin.patch("/id-tags/TAG1", json={"status": "Blocked"})
        assert patched.status_code == 200
        assert patched.json()["status"] == "Blocked"
        assert patched.json()["expiry_date"] == "2029-12-31T23:00:00.000Z"
        assert patched.json()["parent_id_tag"] == "FLEET"
        patched = await admin.patch("/id-tags/TAG1", json={"expiry": None, "parent": None})
        assert patched.json()["expiry_date"] is None
        assert patched.json()["parent_id_tag"] is None
        assert patched.json()["status"] == "Blocked"
        for payload in ({"status": "Nope"}, {"expiry": "never"}, {"parent": ""}):
            assert (await admin.patch("/id-tags/TAG1", json=payload)).status_code == 422, payload
        assert (await viewer.patch("/id-tags/TAG1", json={"status": "Accepted"})).status_code == 403
        missing = await admin.patch("/id-tags/NOPE", json={"status": "Accepted"})
        assert missing.status_code == 404
        assert missing.json() == {"detail": "no id tag 'NOPE'"}

        assert (await viewer.delete("/id-tags/TAG2")).status_code == 403
        assert (await admin.delete("/id-tags/TAG2")).status_code == 204
        assert (await admin.delete("/id-tags/TAG2")).status_code == 404
        gone = await viewer.get("/id-tags/TAG2")
        assert gone.status_code == 404
        assert gone.json() == {"detail": "no id tag 'TAG2'"}


async def test_a_tag_created_through_the_api_authorizes(server: RunningServer) -> None:
    await provision(server, "CP1")
    async with clients(server) as (admin, _, _anonymous):
        assert (await admin.post("/id-tags", json={"id_tag": "API-TAG"})).status_code == 201
        async with charge_point(server, "CP1") as cp:
            await boot(cp)
            result = await send(cp, call.Authorize(id_tag="API-TAG"))
            assert result.id_tag_info["status"] == "Accepted"
            await admin.patch("/id-tags/API-TAG", json={"status": "Blocked"})
            result = await send(cp, call.Authorize(id_tag="API-TAG"))
            assert result.id_tag_info["status"] == "Blocked"


CSV_OK = "id_tag,status,expiry,parent\nA1,Accepted,,\nA2,Blocked,2030-01-01T00:00:00Z,A1\nA3,,,\n"


async def test_import_text_csv_and_multipart(server: RunningServer) -> None:
    async with clients(server) as (admin, viewer, anonymous):
        headers = {"Content-Type": "text/csv"}
        assert (
            await anonymous.post("/id-tags/import", content=CSV_OK, headers=headers)
        ).status_code == 401
        assert (
            await viewer.post("/id-tags/import", content=CSV_OK, headers=headers)
        ).status_code == 403

        response = await admin.post("/id-tags/import", content=CSV_OK, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"added": 3, "skipped": []}
        items = (await viewer.get("/id-tags")).json()["items"]
        assert [
            (t["id_tag"], t["status"], t["expiry_date"], t["parent_id_tag"]) for t in items
        ] == [
            ("A1", "Accepted", None, None),
            ("A2", "Blocked", "2030-01-01T00:00:00.000Z", "A1"),
            ("A3", "Accepted", None, None),
        ]

        again = await admin.post("/id-tags/import", content=CSV_OK, headers=headers)
        assert again.status_code == 422
        assert again.json() == {
            "detail": "line 2: id tag 'A1' already exists; nothing was imported"
        }
        skipping = await admin.post(
            "/id-tags/import",
            content=CSV_OK + "A4,Expired,,\n",
            headers=headers,
            params={"skip_existing": "true"},
        )
        assert skipping.json() == {"added": 1, "skipped": ["A1", "A2", "A3"]}

        multipart = await admin.post(
            "/id-tags/import",
            files={
                "file": (
                    "tags.csv",
                    b"\xef\xbb\xbfid_tag,status\nM1,Invalid\nM2,Accepted\n",
                    "text/csv",
                )
            },
        )
        assert multipart.status_code == 200, multipart.text
        assert multipart.json() == {"added": 2, "skipped": []}
        assert (await viewer.get("/id-tags/M1")).json()["status"] == "Invalid"
        assert (await viewer.get("/id-tags")).json()["total"] == 6


async def test_import_is_all_or_nothing_and_names_the_line(server: RunningServer) -> None:
    async with clients(server) as (admin, viewer, _anonymous):
        headers = {"Content-Type": "text/csv"}
        cases = [
            ("id_tag,status\nB1,Accepted\nB2,Sometimes\n", "line 3: id tag status must be one of"),
            (
                "id_tag,status\nB1,Accepted\nB1,Blocked\n",
                "line 3: duplicate id tag 'B1' in the file",
            ),
            ("id_tag,expiry\nB1,\nB2,tomorrow\n", "line 3: expiry must be an ISO 8601 date-time"),
            ("id_tag\nB1\n" + "X" * 21 + "\n", "line 3: an id tag is 1 to 20 characters"),
            ("id_tag,status\nB1,Accepted,extra\n", "line 2: more fields than the header names"),
            (
                "tag,status\nB1,Accepted\n",
                "the CSV needs a header row: id_tag,status,expiry,parent",
            ),
            ("id_tag,colour\nB1,red\n", "unknown CSV columns: colour"),
            ("", "the CSV needs a header row"),
        ]
        for text, message in cases:
            response = await admin.post("/id-tags/import", content=text, headers=headers)
            assert response.status_code == 422, text
            assert message in response.json()["detail"], (text, response.json())
        assert (await viewer.get("/id-tags")).json() == {"items": [], "total": 0}

        not_utf8 = await admin.post(
            "/id-tags/import", content=b"id_tag\n\xff\xfe\n", headers=headers
        )
        assert not_utf8.status_code == 422
        assert not_utf8.json() == {"detail": "the CSV must be UTF-8 text"}
        wrong_type = await admin.post("/id-tags/import", json={"id_tag": "B1"})
        assert wrong_type.status_code == 415
        no_file = await admin.post("/id-tags/import", files={"note": (None, b"id_tag\nB1\n")})
        assert no_file.status_code == 422
        assert no_file.json() == {"detail": "no file part in the multipart body (name it 'file')"}
        assert (await viewer.get("/id-tags")).json()["total"] == 0
