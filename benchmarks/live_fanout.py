"""Live fan-out latency: from a charge point's message to the subscribers' event (issue 5).

Starts ``chargegrid serve`` (SQLite, shipped settings) pinned to one core, then, from a load
generator pinned to the other: ``--charge-points`` charge points send MeterValues (one Power value
whose number is the send time) at ``--rate`` messages/s in total, and ``--subscribers`` WebSocket
clients of ``/api/v1/live`` each subscribe to one charge point (``--each-all`` to subscribe to all
of them). Latency = receive time - send time, so it includes the group commit (the event is
published after the value is stored), the bus and the WebSocket hop.

    .venv/bin/python benchmarks/live_fanout.py --rate 1000 --subscribers 100 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("chargegrid"))


def _run(env: dict[str, str], *args: str) -> str:
    return subprocess.run([CLI, *args], env=env, check=True, capture_output=True, text=True).stdout


async def _wait_ready(base: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(base + "/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("server did not start")


async def _charge_point(
    url: str, identity: str, interval: float, stop: float, sent: list[int]
) -> None:
    async with websockets.connect(
        url + identity, subprotocols=[websockets.Subprotocol("ocpp1.6")], compression=None
    ) as ws:
        await ws.send(
            json.dumps(
                [2, "boot", "BootNotification", {"chargePointVendor": "B", "chargePointModel": "B"}]
            )
        )
        await ws.recv()
        n = 0
        next_at = time.perf_counter()
        while time.perf_counter() < stop:
            n += 1
            now = time.time()
            frame = [
                2,
                f"m{n}",
                "MeterValues",
                {
                    "connectorId": 1,
                    "meterValue": [
                        {
                            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                            + f".{n % 1000:03d}Z",
                            "sampledValue": [
                                {
                                    "value": repr(now),
                                    "measurand": "Power.Active.Import",
                                    "unit": "W",
                                }
                            ],
                        }
                    ],
                },
            ]
            await ws.send(json.dumps(frame))
            await ws.recv()
            sent[0] += 1
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)


async def _subscriber(
    url: str,
    identities: list[str],
    latencies: list[float],
    ready: asyncio.Event,
    counter: list[int],
    total: int,
) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        for identity in identities:
            await ws.send(
                json.dumps(
                    {"type": "subscribe", "charge_point": identity, "topics": ["meter_values"]}
                )
            )
            await ws.recv()
        counter[0] += 1
        if counter[0] == total:
            ready.set()
        async for raw in ws:
            received = time.time()
            message = json.loads(raw)
            if message.get("type") == "event":
                latencies.append(received - float(message["data"]["value"]))


async def _load(base: str, token: str, args: argparse.Namespace) -> dict[str, object]:
    identities = [f"BENCH{i:03d}" for i in range(args.charge_points)]
    latencies: list[float] = []
    ready = asyncio.Event()
    counter = [0]
    live_url = base.replace("http", "ws") + f"/api/v1/live?token={token}"
    subscribers = [
        asyncio.create_task(
            _subscriber(
                live_url,
                identities if args.each_all else [identities[i % len(identities)]],
                latencies,
                ready,
                counter,
                args.subscribers,
            )
        )
        for i in range(args.subscribers)
    ]
    await asyncio.wait_for(ready.wait(), 30)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    sent = [0]
    stop = time.perf_counter() + args.duration
    interval = args.charge_points / args.rate
    await asyncio.gather(
        *[
            _charge_point(base.replace("http", "ws") + "/ocpp/", i, interval, stop, sent)
            for i in identities
        ]
    )
    await asyncio.sleep(1.0)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    for task in subscribers:
        task.cancel()
    await asyncio.gather(*subscribers, return_exceptions=True)
    latencies.sort()
    load_cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (
        cpu_before.ru_utime + cpu_before.ru_stime
    )

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {
        "messages": sent[0],
        "messages_per_s": round(sent[0] / args.duration, 1),
        "deliveries": len(latencies),
        "expected_deliveries": sent[0]
        * (args.subscribers if args.each_all else args.subscribers // args.charge_points),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
        "load_generator_cpu_percent": round(100 * load_cpu / (args.duration + 1.0), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="messages/s from all charge points"
    )
    parser.add_argument("--charge-points", type=int, default=50)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument(
        "--each-all", action="store_true", help="every subscriber watches every charge point"
    )
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=8191)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cg-fanout-"))
    env = {
        **os.environ,
        "CHARGEGRID_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'bench.db'}",
        "CHARGEGRID_LOG_LEVEL": "warning",
    }
    (workdir / "fleet.csv").write_text(
        "identity\n" + "".join(f"BENCH{i:03d}\n" for i in range(args.charge_points))
    )
    _run(env, "charge-points", "import", str(workdir / "fleet.csv"))
    _run(env, "users", "add", "bench", "--role", "viewer", "--password", "benchmark-password")
    token = _run(env, "users", "token", "bench").strip()
    taskset = (
        ["taskset", "-c", "0"]
        if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1
        else []
    )
    server = subprocess.Popen(
        [*taskset, CLI, "serve", "--port", str(args.port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if taskset:
        os.sched_setaffinity(0, {1})
    try:
        base = f"http://127.0.0.1:{args.port}"
        asyncio.run(_wait_ready(base))
        result = asyncio.run(_load(base, token, args))
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    result |= {
        "rate_target": args.rate,
        "charge_points": args.charge_points,
        "subscribers": args.subscribers,
        "each_all": args.each_all,
        "loadavg": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
