"""Scale-out figures (issue 8): command latency local vs cross-node; throughput, two nodes vs one.

Needs PostgreSQL (``--postgres``, default postgres@127.0.0.1:5432) and Redis (``--redis``). Every
run uses a fresh database (dropped afterwards) and a fresh Redis key prefix.

**Latency.** Two ``chargegrid serve`` nodes; one charge point (a bare WebSocket answering every
CALL at once) is connected to node A. ``--commands`` Reset commands are sent one after another
through A's API (local socket) and through B's API (routed over Redis to A and back), with
``?wait=true``. Both paths record the operation the same way (pending, sent, final: three
database writes), so the difference is the routing: two Redis lookups and two PUBLISH hops.

**Throughput.** ``--charge-points`` charge points each send MeterValues (3 sampled values, each
committed before its CALLRESULT) back to back for ``--duration`` seconds, all through one node,
then half through each of two nodes. On a 2-core box the two nodes, PostgreSQL, Redis and this
load generator all compete for the same two cores: the ratio shows the cost of the cluster
machinery more than the gain of a second box. Run nodes on separate machines to see scaling.

    .venv/bin/python benchmarks/cluster.py --commands 300 --charge-points 100 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import websockets

CLI = str(Path(sys.executable).with_name("chargegrid"))


def _run(env: dict[str, str], *args: str) -> str:
    return subprocess.run([CLI, *args], env=env, check=True, capture_output=True, text=True).stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nodes:
    """``chargegrid serve`` processes sharing one database and one Redis prefix."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []

    async def start(self, count: int) -> None:
        for index in range(count):
            port = _free_port()
            env = {**self.env, "CHARGEGRID_NODE_ID": f"bench-{index}"}
            with (self.log_dir / f"node-{index}-{port}.log").open("ab") as out:
                self.processes.append(
                    subprocess.Popen(  # noqa: ASYNC220 - returns at once
                        [CLI, "serve", "--port", str(port)], env=env, stdout=out, stderr=out
                    )
                )
            self.ports.append(port)
        async with httpx.AsyncClient() as client:
            for port in self.ports:
                for _ in range(600):
                    try:
                        if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"node on {port} did not start")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(20)
        self.processes.clear()
        self.ports.clear()


async def _answering_charge_point(port: int, identity: str, ready: asyncio.Event) -> None:
    """A charge point that boots, then accepts every CALL at once."""
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/ocpp/{identity}",
        subprotocols=[websockets.Subprotocol("ocpp1.6")],
        compression=None,
    ) as ws:
        await ws.send(
            json.dumps(
                [2, "boot", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]
            )
        )
        async for raw in ws:
            frame = json.loads(raw)
            if frame[0] == 3 and frame[1] == "boot":
                ready.set()
            elif frame[0] == 2:
                await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))


async def _command_latencies(port: int, token: str, count: int) -> list[float]:
    timings: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        for _ in range(count):
            started = time.perf_counter()
            response = await http.post(
                "/api/v1/charge-points/LAT1/commands/reset",
                params={"wait": "true"},
                json={"type": "Soft"},
                headers=headers,
            )
            timings.append(time.perf_counter() - started)
            if response.status_code != 200 or response.json()["status"] != "accepted":
                raise RuntimeError(f"command failed: {response.status_code} {response.text}")
    return timings


def _summary(timings: list[float]) -> dict[str, float]:
    ordered = sorted(timings)
    return {
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    }


async def _meter_loop(port: int, identity: str, stop_at: float, counts: list[int]) -> None:
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/ocpp/{identity}",
        subprotocols=[websockets.Subprotocol("ocpp1.6")],
        compression=None,
    ) as ws:
        await ws.send(
            json.dumps(
                [2, "b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]
            )
        )
        await ws.recv()
        sequence = 0
        while time.monotonic() < stop_at:
            sequence += 1
            stamp = f"2026-01-01T00:{sequence // 3600 % 60:02d}:{sequence % 60:02d}.{sequence:06d}Z"
            sampled = [
                {"value": str(sequence), "measurand": "Energy.Active.Import.Register"},
                {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"},
                {"value": "230", "measurand": "Voltage", "unit": "V"},
            ]
            await ws.send(
                json.dumps(
                    [
                        2,
                        str(sequence),
                        "MeterValues",
                        {
                            "connectorId": 1,
                            "meterValue": [{"timestamp": stamp, "sampledValue": sampled}],
                        },
                    ]
                )
            )
            answer = json.loads(await ws.recv())
            if answer[0] != 3:
                raise RuntimeError(f"{identity}: {answer}")
            counts[0] += 1


async def _throughput(ports: list[int], charge_points: int, duration: float, tag: str) -> float:
    counts = [0]
    stop_at = time.monotonic() + duration
    started = time.monotonic()
    await asyncio.gather(
        *(
            _meter_loop(ports[i % len(ports)], f"{tag}-{i}", stop_at, counts)
            for i in range(charge_points)
        )
    )
    return counts[0] / (time.monotonic() - started)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"cg_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.postgres)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    env = {
        **os.environ,
        "CHARGEGRID_DATABASE_URL": f"{base}/{name}",
        "CHARGEGRID_BUS_URL": args.redis,
        "CHARGEGRID_BUS_PREFIX": f"cgbench:{uuid.uuid4().hex[:8]}:",
        "CHARGEGRID_UNKNOWN_CHARGE_POINTS": "accept",
        "CHARGEGRID_LOG_LEVEL": "warning",
    }
    env.pop("CHARGEGRID_CONFIG", None)
    result: dict[str, Any] = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        nodes = Nodes(env, Path(tmp))
        try:
            _run(env, "migrate")
            _run(env, "users", "add", "bench", "--role", "operator", "--password", "")
            token = _run(env, "users", "token", "bench").strip()
            await nodes.start(2)
            ready = asyncio.Event()
            cp = asyncio.create_task(_answering_charge_point(nodes.ports[0], "LAT1", ready))
            await asyncio.wait_for(ready.wait(), 30)
            await _command_latencies(nodes.ports[0], token, 20)  # warm up both paths
            await _command_latencies(nodes.ports[1], token, 20)
            # Interleaved in rounds of 10, so that drifting load on a busy box hits both alike.
            local: list[float] = []
            cross: list[float] = []
            for _ in range(max(1, args.commands // 10)):
                local += await _command_latencies(nodes.ports[0], token, 10)
                cross += await _command_latencies(nodes.ports[1], token, 10)
            result["latency_local"] = _summary(local)
            result["latency_cross_node"] = _summary(cross)
            cp.cancel()
            nodes.stop()

            await nodes.start(1)
            one = await _throughput(nodes.ports, args.charge_points, args.duration, "one")
            nodes.stop()
            await nodes.start(2)
            two = await _throughput(nodes.ports, args.charge_points, args.duration, "two")
            result["throughput_one_node_per_s"] = round(one)
            result["throughput_two_nodes_per_s"] = round(two)
            result["two_vs_one"] = round(two / one, 2) if one else None
        finally:
            nodes.stop()
            admin = await asyncpg.connect(args.postgres)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["cpus"] = os.cpu_count()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--charge-points", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
