"""Load generator scenarios for ``chargegrid bench``: the same OCPP-J frames to every server.

Every scenario talks to ``ws://HOST:PORT/ocpp/{identity}`` with subprotocol ``ocpp1.6`` and boots
each charge point first (a CSMS may refuse other CALLs before an accepted BootNotification), so
chargegrid and the peers see exactly the same traffic. Each result carries the load generator's
own CPU use, so a reader can check it was not the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import resource
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from chargegrid.simulator.transport import (
    CallErrorReceived,
    ConnectionLost,
    HandshakeRejected,
    OcppSocket,
    connect,
)

__all__ = [
    "command_latency",
    "connect_fleet",
    "fanout_latency",
    "idle_connections",
    "open_fds",
    "percentiles",
    "process_cpu_seconds",
    "process_rss_bytes",
    "sockets_per_process",
    "storm",
    "throughput",
]

T = TypeVar("T")

BOOT = {"chargePointVendor": "chargegrid-bench", "chargePointModel": "loadgen"}


def _sv(value: str, measurand: str, unit: str, phase: str | None = None) -> dict[str, Any]:
    sample = {"value": value, "context": "Sample.Periodic", "measurand": measurand, "unit": unit}
    if phase:
        sample["phase"] = phase
    return sample


SAMPLES_3 = [
    _sv("1234567", "Energy.Active.Import.Register", "Wh"),
    _sv("11040.0", "Power.Active.Import", "W"),
    _sv("16.0", "Current.Import", "A", "L1"),
]
SAMPLES_10 = [
    *SAMPLES_3,
    _sv("16.0", "Current.Import", "A", "L2"),
    _sv("16.0", "Current.Import", "A", "L3"),
    _sv("230.1", "Voltage", "V", "L1-N"),
    _sv("229.8", "Voltage", "V", "L2-N"),
    _sv("231.0", "Voltage", "V", "L3-N"),
    {**_sv("57", "SoC", "Percent"), "location": "EV"},
    {**_sv("31.5", "Temperature", "Celsius"), "location": "Body"},
]


def samples(count: int) -> list[dict[str, Any]]:
    """The sampled values of one benchmark MeterValues (3 or 10)."""
    return SAMPLES_3 if count <= 3 else SAMPLES_10[:count]


# measuring ----------------------------------------------------------------------


def process_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of ``pid`` (or this process)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds."""
    if not samples_s:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(samples_s)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": at(1.0)}


class CpuWindow:
    """CPU used by this process and by the server over a wall-clock window."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.wall = time.perf_counter()
        self.own = process_cpu_seconds()
        self.server = process_cpu_seconds(server_pid) if server_pid else 0.0

    def result(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        own = process_cpu_seconds() - self.own
        result = {"wall_s": round(wall, 3), "loadgen_cpu": round(own / wall, 3)}
        if self.server_pid:
            server = process_cpu_seconds(self.server_pid) - self.server
            result["server_cpu"] = round(server / wall, 3)
        return result


# connecting ----------------------------------------------------------------------


async def _boot(sock: OcppSocket, timeout: float = 60.0) -> None:
    result = await sock.call("BootNotification", BOOT, timeout=timeout)
    if result.get("status") != "Accepted":
        raise HandshakeRejected(0, f"BootNotification {result.get('status')}")


async def connect_fleet(
    url: str,
    identities: Sequence[str],
    *,
    concurrency: int = 200,
    local_addresses: Sequence[str] = (),
    retries: int = 3,
) -> tuple[list[OcppSocket], dict[str, int]]:
    """Connect and boot every identity, ``concurrency`` handshakes at a time."""
    gate = asyncio.Semaphore(concurrency)
    failures: dict[str, int] = {}
    sockets: list[OcppSocket] = []

    async def one(index: int, identity: str) -> None:
        local = local_addresses[index % len(local_addresses)] if local_addresses else None
        for attempt in range(retries):
            async with gate:
                try:
                    sock = await connect(url, identity, local_addr=local, timeout=60)
                    await _boot(sock)
                except (OSError, TimeoutError, HandshakeRejected, ConnectionLost) as error:
                    kind = type(error).__name__
                    failures[kind] = failures.get(kind, 0) + 1
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
            sockets.append(sock)
            return

    await asyncio.gather(*(one(i, identity) for i, identity in enumerate(identities)))
    return sockets, failures


async def close_all(sockets: Sequence[OcppSocket]) -> None:
    for sock in sockets:
        sock.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await asyncio.gather(*(sock.closed for sock in sockets), return_exceptions=True)
    for sock in sockets:
        sock.abort()


# scenarios ----------------------------------------------------------------------


class _Timestamps:
    """Unique, increasing timestamps (ms) per charge point without formatting a datetime each
    time: a series' samples must never share a timestamp, or a CSMS that stores each sample once
    would be spared the write."""

    def __init__(self) -> None:
        self.base_ms = int(time.time() * 1000)
        self._cached_second = -1
        self._prefix = ""

    def at(self, offset_ms: int) -> str:
        ms = self.base_ms + offset_ms
        second = ms // 1000
        if second != self._cached_second:
            self._cached_second = second
            self._prefix = f"{datetime.fromtimestamp(second, UTC):%Y-%m-%dT%H:%M:%S}"
        return f"{self._prefix}.{ms % 1000:03d}Z"


async def throughput(
    url: str,
    identities: Sequence[str],
    *,
    sampled: int = 3,
    warmup: float = 2.0,
    duration: float = 10.0,
    server_pid: int | None = None,
    local_addresses: Sequence[str] = (),
    rate: float | None = None,
    in_sessions: bool = False,
) -> dict[str, Any]:
    """Closed loop: every charge point keeps exactly one MeterValues outstanding.

    With ``in_sessions``, each charge point's values carry a transaction id of its own, as a
    charging fleet's do (the server stores them by session too).

    With ``rate``, the fleet is paced to that many MeterValues per second in total (each charge
    point sends on its own schedule, still never more than one outstanding): the latency a server
    gives at a given load rather than at saturation. Round trips/s and latency are taken over
    ``duration`` seconds after ``warmup``.
    """
    sockets, failures = await connect_fleet(url, identities, local_addresses=local_addresses)
    values = samples(sampled)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    state = {"measuring": False, "running": True, "count": 0}
    clock = time.perf_counter

    interval = len(sockets) / rate if rate else 0.0

    async def loop(index: int, sock: OcppSocket) -> None:
        stamps = _Timestamps()
        n = 0
        meter_value = {"timestamp": "", "sampledValue": values}
        payload: dict[str, Any] = {"connectorId": 1, "meterValue": [meter_value]}
        if in_sessions:
            payload["transactionId"] = index + 1
        next_at = time.perf_counter() + interval * index / max(len(sockets), 1)
        while state["running"]:
            if interval:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval
            n += 1
            meter_value["timestamp"] = stamps.at(n)
            started = clock()
            try:
                await sock.call_future("MeterValues", payload)
            except CallErrorReceived as error:
                errors[error.code] = errors.get(error.code, 0) + 1
            except ConnectionLost:
                errors["ConnectionLost"] = errors.get("ConnectionLost", 0) + 1
                return
            if state["measuring"]:
                latencies.append(clock() - started)
                state["count"] += 1

    tasks = [asyncio.create_task(loop(i, sock)) for i, sock in enumerate(sockets)]
    await asyncio.sleep(warmup)
    state["measuring"] = True
    window = CpuWindow(server_pid)
    await asyncio.sleep(duration)
    state["measuring"] = False
    cpu = window.result()
    state["running"] = False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks, return_exceptions=True)
    await close_all(sockets)
    return {
        "charge_points": len(identities),
        "connected": len(sockets),
        "sampled_values": sampled,
        "paced_rate": rate,
        "in_sessions": in_sessions,
        "round_trips": state["count"],
        "round_trips_per_s": round(state["count"] / cpu["wall_s"], 1),
        **percentiles(latencies),
        **cpu,
        "errors": errors,
        "connect_failures": failures,
    }


FD_MARGIN = 100  # descriptors a process keeps for itself beside its sockets


def sockets_per_process() -> int:
    """How many sockets this process (and a load-generator worker it spawns) may open."""
    return max(1, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FD_MARGIN)


def open_fds(pid: int) -> int | None:
    """Descriptors ``pid`` holds (``None`` if /proc does not say)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


async def _connect_idle(
    url: str,
    identities: Sequence[str],
    *,
    concurrency: int,
    local_addresses: Sequence[str],
) -> tuple[list[OcppSocket], dict[str, int]]:
    """Connect, boot and send one Heartbeat each (what an idle charge point has done)."""
    sockets, failures = await connect_fleet(
        url, identities, concurrency=concurrency, local_addresses=local_addresses
    )
    answers = await asyncio.gather(
        *(sock.call("Heartbeat", {}, timeout=60) for sock in sockets), return_exceptions=True
    )
    for answer in answers:
        if isinstance(answer, BaseException):
            kind = f"Heartbeat {type(answer).__name__}"
            failures[kind] = failures.get(kind, 0) + 1
    return sockets, failures


def _idle_worker(pipe: Any, url: str, local_addresses: Sequence[str], concurrency: int) -> None:
    """A load-generator process holding its share of the idle fleet (one process may open only
    as many sockets as its fd limit allows). Commands over ``pipe``: ``("connect", ids)``,
    ``("held", None)``, ``("close", None)``."""

    async def serve() -> None:
        sockets: list[OcppSocket] = []
        while True:
            command, argument = await asyncio.to_thread(pipe.recv)
            if command == "connect":
                cpu = process_cpu_seconds()
                new, failures = await _connect_idle(
                    url, argument, concurrency=concurrency, local_addresses=local_addresses
                )
                sockets += new
                pipe.send(
                    {
                        "connected": len(new),
                        "failures": failures,
                        "cpu_s": process_cpu_seconds() - cpu,
                    }
                )
            elif command == "held":
                pipe.send(sum(1 for sock in sockets if sock.is_open))
            else:
                await close_all(sockets)
                pipe.send(None)
                return

    asyncio.run(serve())


class _IdleWorkers:
    """Load-generator processes, each holding up to ``capacity`` idle sockets."""

    def __init__(
        self, url: str, count: int, local_addresses: Sequence[str], concurrency: int
    ) -> None:
        import multiprocessing

        # spawn, not fork: the parent runs an event loop.
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.processes = []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(
                target=_idle_worker,
                args=(child, url, tuple(local_addresses), concurrency),
                daemon=True,
            )
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    async def ask(self, commands: list[tuple[str, Any]]) -> list[Any]:
        """Send one command to each worker at once and wait for every answer."""
        try:
            for pipe, command in zip(self.pipes, commands, strict=True):
                pipe.send(command)
            return await asyncio.gather(*(asyncio.to_thread(pipe.recv) for pipe in self.pipes))
        except (EOFError, BrokenPipeError) as error:
            raise RuntimeError(f"a load generator process died: {error!r}") from error

    def stop(self) -> None:
        for process in self.processes:
            process.join(15)
            if process.is_alive():
                process.kill()


async def idle_connections(
    url: str,
    identities: Sequence[str],
    *,
    server_pid: int,
    settle: float = 3.0,
    local_addresses: Sequence[str] = (),
    per_process: int | None = None,
    concurrency: int = 500,
) -> dict[str, Any]:
    """Connect, boot and heartbeat everyone, then hold the sockets: how many stay up, and the
    server's RSS growth per connection.

    The fleet connects in two halves, the server's RSS read after each has settled: the figure
    is (RSS with N held - RSS with none) / N, and the marginal cost of the second half is given
    beside it (without the one-off costs the first connections pay). The sockets are spread over
    load-generator processes of ``per_process`` sockets each (default: what the fd limit allows),
    so the load generator's fd limit never caps the figure; the server's still does.
    """
    capacity = per_process or sockets_per_process()
    count = max(1, -(-len(identities) // capacity))
    shares = [list(identities[i * capacity : (i + 1) * capacity]) for i in range(count)]
    half = len(identities) // 2
    halves = (identities[:half], identities[half:])
    workers = _IdleWorkers(url, count, local_addresses, max(1, concurrency // count))
    failures: dict[str, int] = {}
    loadgen_cpu = 0.0
    try:
        await asyncio.sleep(settle)
        rss = [process_rss_bytes(server_pid)]
        held_after: list[int] = []
        started = time.perf_counter()
        for part in halves:
            wanted = set(part)
            answers = await workers.ask(
                [("connect", [i for i in share if i in wanted]) for share in shares]
            )
            for answer in answers:
                loadgen_cpu += answer["cpu_s"]
                for kind, n in answer["failures"].items():
                    failures[kind] = failures.get(kind, 0) + n
            await asyncio.sleep(settle)
            rss.append(process_rss_bytes(server_pid))
            held_after.append(sum(await workers.ask([("held", None)] * count)))
        connect_s = time.perf_counter() - started - 2 * settle
        server_fds = open_fds(server_pid)
        held = held_after[-1]
        await workers.ask([("close", None)] * count)
    finally:
        workers.stop()
    before, middle, after = rss
    second_half = held_after[1] - held_after[0]
    return {
        "requested": len(identities),
        "held": held,
        "held_half": held_after[0],
        "server_fds": server_fds,
        "loadgen_processes": count,
        "connect_s": round(connect_s, 2),
        "loadgen_cpu_s": round(loadgen_cpu, 2),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_half_mib": round(middle / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "kib_per_connection": round((after - before) / max(held, 1) / 1024, 2),
        "kib_per_connection_marginal": round((after - middle) / max(second_half, 1) / 1024, 2),
        "connect_failures": failures,
    }


async def storm(
    url: str,
    identities: Sequence[str],
    *,
    timeout: float = 120.0,
    local_addresses: Sequence[str] = (),
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Everyone connects at the same moment: time until the last BootNotification is Accepted.

    A refused or failed attempt (HTTP status, timeout, reset) is counted by kind and retried
    after 0.5 s until ``timeout``; a figure with retries is not a clean storm.
    """
    accepted: list[float] = []
    failures: dict[str, int] = {}
    sockets: list[OcppSocket] = []
    window = CpuWindow(server_pid)
    started = time.perf_counter()
    deadline = started + timeout

    async def one(index: int, identity: str) -> None:
        local = local_addresses[index % len(local_addresses)] if local_addresses else None
        while time.perf_counter() < deadline:
            try:
                sock = await connect(url, identity, local_addr=local, timeout=timeout)
                await _boot(sock, timeout)
            except (OSError, TimeoutError, HandshakeRejected, ConnectionLost) as error:
                kind = type(error).__name__
                if isinstance(error, HandshakeRejected):
                    kind += f" {error.status}"
                failures[kind] = failures.get(kind, 0) + 1
                await asyncio.sleep(0.5)
                continue
            accepted.append(time.perf_counter() - started)
            sockets.append(sock)
            return

    await asyncio.gather(*(one(i, identity) for i, identity in enumerate(identities)))
    cpu = window.result()
    await close_all(sockets)
    accepted.sort()
    return {
        "charge_points": len(identities),
        "accepted": len(accepted),
        "all_accepted_s": round(accepted[-1], 3) if len(accepted) == len(identities) else None,
        "p50_accepted_s": round(accepted[len(accepted) // 2], 3) if accepted else None,
        "p99_accepted_s": round(accepted[int(len(accepted) * 0.99)], 3) if accepted else None,
        "accepted_per_s": round(len(accepted) / accepted[-1], 1) if accepted else None,
        "retries": failures,
        **cpu,
    }


async def _in_thread(work: Callable[[], T]) -> T:
    return await asyncio.to_thread(work)


class _Http:
    """A keep-alive HTTP/1.1 client for the REST calls (stdlib, used from one thread)."""

    def __init__(self, http_url: str, token: str) -> None:
        host_port = http_url.split("://", 1)[1].rstrip("/")
        host, _, port = host_port.partition(":")
        self.connection = http.client.HTTPConnection(host, int(port or 80), timeout=60)
        self.token = token

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.connection.request(
            "POST",
            path,
            body=orjson.dumps(body),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        response = self.connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}


async def command_latency(
    ws_url: str, http_url: str, identity: str, token: str, *, count: int = 100
) -> dict[str, Any]:
    """REST → charge point → answer: ``POST …/commands/reset?wait=true``, the CP says Accepted."""
    received = 0

    def handler(action: str, _payload: dict[str, Any]) -> dict[str, Any]:
        nonlocal received
        received += 1
        return {"status": "Accepted"}

    sock = await connect(ws_url, identity, handler=handler)
    await _boot(sock)
    client = _Http(http_url, token)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    window = CpuWindow(None)
    path = f"/api/v1/charge-points/{identity}/commands/reset?wait=true"
    try:
        for _ in range(count):
            started = time.perf_counter()
            status, body = await _in_thread(lambda: client.post(path, {"type": "Soft"}))
            latencies.append(time.perf_counter() - started)
            key = f"{status} {body.get('status', '')}".strip()
            statuses[key] = statuses.get(key, 0) + 1
    finally:
        client.connection.close()
        await close_all([sock])
    return {
        "commands": count,
        "answered_by_cp": received,
        "statuses": statuses,
        **percentiles(latencies),
        **window.result(),
    }


async def fanout_latency(
    ws_url: str, http_url: str, identity: str, token: str, *, count: int = 100
) -> dict[str, Any]:
    """A CP's StatusNotification → the event on a ``/api/v1/live`` subscriber."""
    import websockets

    live_url = http_url.replace("http://", "ws://").rstrip("/") + f"/api/v1/live?token={token}"
    sock = await connect(ws_url, identity)
    await _boot(sock)
    latencies: list[float] = []
    missed = 0
    async with websockets.connect(live_url, compression=None) as live:
        await live.send(
            json.dumps({"type": "subscribe", "charge_point": identity, "topics": ["status"]})
        )
        while json.loads(await live.recv()).get("type") != "subscribed":
            pass
        stamps = _Timestamps()
        for n in range(count):
            status = "Available" if n % 2 else "Unavailable"
            timestamp = stamps.at(n * 1000)
            payload = {
                "connectorId": 1,
                "errorCode": "NoError",
                "status": status,
                "timestamp": timestamp,
            }
            started = time.perf_counter()
            answer = sock.call_future("StatusNotification", payload)
            try:
                async with asyncio.timeout(10):
                    while True:
                        message = json.loads(await live.recv())
                        data = message.get("data") or {}
                        if message.get("type") == "event" and data.get("status") == status:
                            latencies.append(time.perf_counter() - started)
                            break
            except TimeoutError:
                missed += 1
            await answer
    await close_all([sock])
    return {"events": count, "missed": missed, **percentiles(latencies)}


async def timed(work: Awaitable[T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = await work
    return result, time.perf_counter() - started
