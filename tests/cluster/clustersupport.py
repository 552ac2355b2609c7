"""Cluster test support: real ``chargegrid serve`` processes, real nginx, real Redis.

Nothing is mocked. Nodes are subprocesses (so one can be SIGKILLed like a crashed box), sharing
one fresh PostgreSQL database and one Redis under a unique key prefix.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

REDIS_URL = os.environ.get("CHARGEGRID_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(what: str, found: bool) -> None:
    """Skip without ``what``; in CI fail instead, so a missing tool never passes as green."""
    if found:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} not available")


async def redis_reachable(url: str = REDIS_URL) -> bool:
    client = redis.from_url(url)
    try:
        await client.ping()
    except Exception:
        return False
    finally:
        await client.aclose()
    return True


def cli(database_url: str, *args: str) -> str:
    """Run the ``chargegrid`` command line against the shared database; its stdout."""
    result = subprocess.run(
        [str(BIN / "chargegrid"), *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"chargegrid {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


@dataclass
class Node:
    """One ``chargegrid serve`` process."""

    name: str
    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(BIN / "chargegrid"), "serve", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def ready(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
                try:
                    response = await http.get(f"{self.http_url}/readyz")
                    if response.status_code == 200:
                        body: dict[str, Any] = response.json()
                        return body
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a crashed box."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Cluster:
    database_url: str
    prefix: str
    tmp: Path
    nodes: list[Node] = field(default_factory=list)

    def node(self, name: str, **settings: Any) -> Node:
        env = {
            **os.environ,
            "CHARGEGRID_DATABASE_URL": self.database_url,
            "CHARGEGRID_BUS_URL": REDIS_URL,
            "CHARGEGRID_BUS_PREFIX": self.prefix,
            "CHARGEGRID_NODE_ID": name,
            "CHARGEGRID_LOG_LEVEL": "info",
        }
        env.pop("CHARGEGRID_CONFIG", None)
        for key, value in settings.items():
            env[f"CHARGEGRID_{key.upper()}"] = str(value)
        node = Node(name, free_port(), env, self.tmp / f"{name}.log")
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def new_prefix() -> str:
    return f"cgcluster:{uuid.uuid4().hex[:8]}:"


# Everything before the upstreams and servers, shared by every nginx the tests start. As root,
# nginx's workers would run as "nobody" and could not use tmp_path: hence {user}.
NGINX_PREAMBLE = """\
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;

    # WebSocket upgrade: pass Upgrade/Connection through (hop-by-hop headers are dropped
    # otherwise); plain requests get "Connection: close" as usual.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
"""

NGINX_CONF = (
    NGINX_PREAMBLE
    + """
    upstream chargegrid {{
{servers}
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://chargegrid;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # Charge points hold their socket for days; the server pings every 30 s, so an idle
            # timeout above that interval never cuts a healthy connection.
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_buffering off;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""
)


def nginx_user() -> str:
    return "user root;" if os.geteuid() == 0 else ""


def start_nginx(binary: str, tmp: Path, conf: Path) -> subprocess.Popen[bytes]:
    """nginx in the foreground with ``conf``, its prefix and logs in ``tmp``."""
    with (tmp / "nginx-stdout.log").open("ab") as out:
        return subprocess.Popen(
            [
                binary,
                "-e",
                str(tmp / "nginx-error.log"),
                "-c",
                str(conf),
                "-p",
                str(tmp),
                "-g",
                "daemon off;",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until something listens on ``port``; the log's text if ``process`` exits first."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited; see {log}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@dataclass
class Nginx:
    tmp: Path
    upstreams: list[int]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp/"

    async def start(self) -> None:
        binary = self.binary()
        assert binary is not None
        conf = self.tmp / "nginx.conf"
        servers = "\n".join(
            f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=30s;"
            for port in self.upstreams
        )
        conf.write_text(
            NGINX_CONF.format(user=nginx_user(), tmp=self.tmp, servers=servers, port=self.port)
        )
        self.process = start_nginx(binary, self.tmp, conf)
        await wait_for_port(self.port, self.process, self.tmp / "nginx-error.log")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class PrivateRedis:
    """A redis-server of our own, so that stopping it disturbs no other test."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not await redis_reachable(self.url):
            assert time.monotonic() < deadline, "redis-server did not start"
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
