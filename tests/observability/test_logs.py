"""Structured logs: JSON lines that parse, carry the charge point, and never a secret.

One test runs the real ``chargegrid serve`` process with ``CHARGEGRID_LOG_FORMAT=json``; the
others configure logging in-process around a real server and real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from obssupport import token_for

from chargegrid.config import LogFormat
from chargegrid.observability.logs import configure_logging
from support import RunningServer, raw_socket

KEY = "s3cret-auth-key-0001"
NEW_KEY = "n3w-secret-auth-key-02"
CHARGEGRID = Path(sys.executable).with_name("chargegrid")


def basic(identity: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{identity}:{key}".encode()).decode()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Root logging as ``chargegrid serve --log-format json`` sets it up, into a buffer."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("info", LogFormat.JSON, stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def parse(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    assert lines
    return [json.loads(line) for line in lines]


async def test_json_lines_carry_the_charge_point_and_no_secret(
    server: RunningServer, captured: io.StringIO
) -> None:
    await server.add_charge_point("CP1", auth_key=KEY, security_profile=1)
    with pytest.raises(websockets.InvalidStatus):  # a wrong key: refused and logged
        async with raw_socket(
            server, "CP1", additional_headers={"Authorization": basic("CP1", "x" * 20)}
        ):
            pass
    token = await token_for(server, "ops", "operator")
    async with raw_socket(
        server, "CP1", additional_headers={"Authorization": basic("CP1", KEY)}
    ) as ws:
        await ws.send('[2,"b","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]')
        await asyncio.wait_for(ws.recv(), 5)
        await ws.send('[2,"u1","NoSuchAction",{}]')  # logged by the connection, with its id
        await asyncio.wait_for(ws.recv(), 5)
        # rotate the key (CONFORMANCE H8): the new key travels in a CALL and must not be logged
        operation = asyncio.create_task(
            server.node.commands.perform_now(
                "CP1", "ChangeConfiguration", {"key": "AuthorizationKey", "value": NEW_KEY}
            )
        )
        change = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.send(orjson.dumps([3, change[1], {"status": "Accepted"}]).decode())
        assert (await operation).status == "accepted"
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            response = await http.get(
                "/api/v1/charge-points/CP1/trace", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 200
    logging.getLogger("chargegrid.test").warning(
        "a careless line: Authorization: %s token=%s", basic("CP1", KEY), token
    )

    records = parse(captured)
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        assert record["time"].endswith("Z")
    by_connection = [r for r in records if r.get("charge_point") == "CP1"]
    assert any("NotImplemented" in r["message"] for r in by_connection), records
    assert all(r["logger"] == "chargegrid.gateway.connection" for r in by_connection)
    assert any(r["message"].startswith("refused 'CP1': 401") for r in records), records
    careless = [r for r in records if r["logger"] == "chargegrid.test"]
    assert careless[0]["message"] == "a careless line: Authorization: Basic ******** token=********"
    text = captured.getvalue()
    for secret in (KEY, NEW_KEY, token, basic("CP1", KEY).split()[1]):
        assert secret not in text


def test_text_format_masks_secrets_too() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        configure_logging("debug", LogFormat.TEXT, stream)
        log = logging.LoggerAdapter(logging.getLogger("chargegrid.x"), {"charge_point": "CP9"})
        log.info('sent {"key": "AuthorizationKey", "value": "%s"} with password=%s', KEY, "pw12345")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    line = stream.getvalue()
    assert " INFO chargegrid.x: sent " in line
    assert KEY not in line and "pw12345" not in line
    assert '"value": "********"' in line and "password=********" in line


def test_exceptions_are_one_json_line() -> None:
    from chargegrid.observability.logs import JsonFormatter

    try:
        raise ValueError(f"bad key {KEY!r} Bearer abcdefgh123")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "ERROR" and parsed["message"] == "failed"
    assert "ValueError" in parsed["exception"] and "Bearer ********" in parsed["exception"]
    assert "charge_point" not in parsed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_writes_json_lines(tmp_path: Path) -> None:
    """The real ``chargegrid serve`` with CHARGEGRID_LOG_FORMAT=json: uvicorn's lines too."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEGRID_")}
    env.update(
        CHARGEGRID_LOG_FORMAT="json",
        CHARGEGRID_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}",
        CHARGEGRID_PORT=str(port),
    )
    log_file = tmp_path / "stderr.log"
    with log_file.open("w") as stderr:
        process = subprocess.Popen(
            [str(CHARGEGRID), "serve"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 30
            while "Uvicorn running" not in log_file.read_text():
                assert process.poll() is None, log_file.read_text()
                assert time.monotonic() < deadline, log_file.read_text()
                time.sleep(0.1)
            secret_token = "tok-abcdef-123456"
            response = httpx.get(
                f"http://127.0.0.1:{port}/healthz?token={secret_token}",
                headers={"Authorization": f"Bearer {secret_token}"},
            )
            assert response.status_code == 200
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(30)
    text = log_file.read_text()
    # click reports the SIGINT that uvicorn re-raises after its shutdown: not a log record
    lines = [line for line in text.splitlines() if line.strip() and line != "Aborted!"]
    records = [json.loads(line) for line in lines]
    loggers = {r["logger"] for r in records}
    assert {"chargegrid.app", "uvicorn.error", "uvicorn.access"} <= loggers, records
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any("/healthz?token=********" in r["message"] for r in access), access
    assert secret_token not in text
