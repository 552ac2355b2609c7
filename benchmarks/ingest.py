"""Ingest benchmark: sampled values per second stored through the full OCPP path, and database
transactions per stored value (issue 4).

A real ``chargegrid serve`` process (optionally pinned to CPU 0) receives MeterValues (3 sampled
values each by default: energy register, power, voltage) from N charge points over WebSockets;
each charge point sends its next message when the CALLRESULT of the last arrives, and a CALLRESULT
is only sent after the values are committed (with their rollups, in the same transaction). The
numbers: acknowledged round trips/s, values/s, values counted in the database, and group-commit
transactions per value from the server's ``/metrics``.

    python benchmarks/ingest.py --help
    python benchmarks/ingest.py --charge-points 200 --duration 10
    python benchmarks/ingest.py --postgres postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

BIN = Path(sys.executable).with_name("chargegrid")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def charge_point(
    url: str, identity: str, sampled: int, stop_at: float, counts: list[int], start: datetime
) -> None:
    async with websockets.connect(
        url + identity, subprotocols=[websockets.Subprotocol("ocpp1.6")], compression=None
    ) as ws:
        await ws.send(
            orjson.dumps(
                [2, "b", "BootNotification", {"chargePointVendor": "B", "chargePointModel": "M"}]
            )
        )
        await ws.recv()
        n = 0
        measurands = ["Energy.Active.Import.Register", "Power.Active.Import", "Voltage"]
        units = ["Wh", "W", "V"]
        while time.monotonic() < stop_at:
            n += 1
            stamp = (start + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ")
            values = [
                {
                    "value": str(n * 10 + i),
                    "measurand": measurands[i % 3],
                    "unit": units[i % 3],
                    **({"phase": f"L{i // 3 + 1}"} if i >= 3 else {}),
                }
                for i in range(sampled)
            ]
            await ws.send(
                orjson.dumps(
                    [
                        2,
                        str(n),
                        "MeterValues",
                        {
                            "connectorId": 1,
                            "meterValue": [{"timestamp": stamp, "sampledValue": values}],
                        },
                    ]
                )
            )
            reply = orjson.loads(await ws.recv())
            if reply[0] != 3:
                raise RuntimeError(f"{identity}: {reply}")
            counts[0] += 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="cg-bench-"))
    database_url = args.database_url
    created_pg: str | None = None
    if args.postgres:
        import asyncpg

        created_pg = f"cg_bench_{uuid.uuid4().hex[:8]}"
        connection = await asyncpg.connect(args.postgres)
        await connection.execute(f'CREATE DATABASE "{created_pg}"')
        await connection.close()
        base = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        database_url = f"{base}/{created_pg}"
    if database_url is None:
        database_url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    env = {**os.environ, "CHARGEGRID_LOG_LEVEL": "warning", "CHARGEGRID_DATABASE_URL": database_url}
    identities = [f"BENCH{i:05d}" for i in range(args.charge_points)]
    (workdir / "cps.csv").write_text("identity\n" + "\n".join(identities) + "\n")
    subprocess.run(  # noqa: ASYNC221 - setup, before anything is timed
        [BIN, "charge-points", "import", str(workdir / "cps.csv")], env=env, check=True
    )
    port = free_port()
    command = [str(BIN), "serve", "--port", str(port)]
    if args.pin and shutil.which("taskset"):
        command = ["taskset", "-c", "0", *command]
    server = subprocess.Popen(command, env=env)  # noqa: ASYNC220 - setup
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            url = f"ws://127.0.0.1:{port}/ocpp/"
            counts = [0]
            start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
            warm_until = time.monotonic() + args.warmup
            stop_at = warm_until + args.duration
            tasks = [
                asyncio.create_task(charge_point(url, i, args.sampled, stop_at, counts, start))
                for i in identities
            ]
            await asyncio.sleep(max(0.0, warm_until - time.monotonic()))
            before = (await http.get("/metrics")).text
            counted_before, t0 = counts[0], time.monotonic()
            await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
            after = (await http.get("/metrics")).text
            counted, elapsed = counts[0] - counted_before, time.monotonic() - t0
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        server.terminate()
        server.wait(30)
    from sqlalchemy import text

    from chargegrid.store.database import create_engine

    engine = create_engine(database_url)
    async with engine.connect() as connection:
        stored = await connection.scalar(text("SELECT COUNT(*) FROM meter_values"))
        rollup_rows = await connection.scalar(text("SELECT COUNT(*) FROM meter_rollups"))
    await engine.dispose()
    if created_pg:
        import asyncpg

        connection = await asyncpg.connect(args.postgres)
        await connection.execute(f'DROP DATABASE IF EXISTS "{created_pg}" WITH (FORCE)')
        await connection.close()
    shutil.rmtree(workdir, ignore_errors=True)
    batches = metric(after, "chargegrid_group_commit_batch_items_count") - metric(
        before, "chargegrid_group_commit_batch_items_count"
    )
    values = counted * args.sampled
    return {
        "database": database_url.split(":", 1)[0],
        "charge_points": args.charge_points,
        "sampled_per_message": args.sampled,
        "seconds": round(elapsed, 2),
        "round_trips_per_s": round(counted / elapsed),
        "values_per_s": round(values / elapsed),
        "transactions": int(batches),
        "values_in_window": values,
        "transactions_per_value": round(batches / values, 5) if values else None,
        "fewer_transactions_than_values_pct": round(100 * (1 - batches / values), 2)
        if values
        else None,
        "values_stored_total": stored,
        "rollup_rows_total": rollup_rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--charge-points", type=int, default=200)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--sampled", type=int, default=3, help="sampled values per MeterValues")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument(
        "--postgres", default=None, help="admin URL: benchmark on a fresh PostgreSQL database"
    )
    parser.add_argument("--pin", action="store_true", help="pin the server to CPU 0 (taskset)")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
