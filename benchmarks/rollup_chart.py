"""Chart benchmark: a 30-day power chart for one charge point, served from rollups, with many
raw rows in the database (issue 4: < 50 ms with 10 million raw rows).

Generates ``--rows`` raw meter values over 30 days for ``--charge-points`` charge points (power,
energy register, voltage) with fast bulk inserts (sqlite3 ``executemany`` / PostgreSQL ``COPY``),
builds the hourly and daily rollups from them with one ``INSERT .. SELECT .. GROUP BY`` per
resolution (the synthetic series have no resets, so the energy of a bucket is max - min there;
the rollups are otherwise what ingest would have kept), then serves the real application with
``chargegrid serve`` and times ``GET /api/v1/charge-points/{id}/history?measurand=power`` over
30 days through HTTP: median and p95 of ``--repeat`` requests, and the resolution used.

    python benchmarks/rollup_chart.py --help
    python benchmarks/rollup_chart.py --rows 10000000
    python benchmarks/rollup_chart.py --rows 2000000 --postgres postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sqlite3
import statistics
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

BIN = Path(sys.executable).with_name("chargegrid")
MEASURANDS = (
    ("Power.Active.Import", "W"),
    ("Energy.Active.Import.Register", "Wh"),
    ("Voltage", "V"),
)
DAYS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [str(BIN), *args], env=env, check=True, capture_output=True, text=True
    ).stdout


def rows_for(cp: int, count: int, end: datetime) -> Any:
    """``count`` values for charge point ``cp`` spread evenly over the 30 days before ``end``."""
    per_measurand = max(1, count // len(MEASURANDS))
    step = DAYS * 86400 / per_measurand
    start = end - timedelta(days=DAYS)
    for i in range(per_measurand):
        at = start + timedelta(seconds=i * step)
        for m, (measurand, unit) in enumerate(MEASURANDS):
            value = (7000.0 + (i % 97) * 10) if m == 0 else (i * 5.0 if m == 1 else 230.0 + i % 7)
            yield (cp, 1, None, at, at.isoformat(), measurand, None, "Outlet", "Sample.Periodic",
                   unit, value, str(value), unit, "Raw")  # fmt: skip


COLUMNS = (
    "charge_point_id, connector_id, transaction_id, timestamp, timestamp_raw, measurand, phase, "
    "location, context, unit, value, raw_value, raw_unit, format"
)

ROLLUP_SQL = """
INSERT INTO meter_rollups (charge_point_id, measurand, resolution, bucket, connector_id, phase,
    location, unit, count, sum, min, max, first_at, first_value, last_at, last_value, energy)
SELECT charge_point_id, measurand, '{resolution}', {bucket} AS b, connector_id,
    coalesce(phase, ''), location, min(unit), count(*), sum(value), min(value), max(value),
    min(timestamp), min(value), max(timestamp), max(value),
    CASE WHEN measurand LIKE '%.Register' THEN max(value) - min(value) END
FROM meter_values GROUP BY charge_point_id, measurand, b, connector_id, coalesce(phase, ''),
    location
"""


def fill_sqlite(path: Path, args: argparse.Namespace, end: datetime) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    ids = [r[0] for r in db.execute("SELECT id FROM charge_points ORDER BY id")]
    per_cp = args.rows // len(ids)
    for n, cp in enumerate(ids):
        batch = [
            (*r[:3], r[3].strftime("%Y-%m-%d %H:%M:%S.%f"), *r[4:])
            for r in rows_for(cp, per_cp, end)
        ]
        db.executemany(f"INSERT INTO meter_values ({COLUMNS}) VALUES ({','.join('?' * 14)})", batch)
        db.commit()
        print(f"  charge point {n + 1}/{len(ids)}: {per_cp} rows", file=sys.stderr)
    hour = "strftime('%Y-%m-%d %H:00:00.000000', timestamp)"
    day = "strftime('%Y-%m-%d 00:00:00.000000', timestamp)"
    db.execute(ROLLUP_SQL.format(resolution="hour", bucket=hour))
    db.execute(ROLLUP_SQL.format(resolution="day", bucket=day))
    db.commit()
    db.execute("ANALYZE")
    db.close()


async def fill_postgres(url: str, args: argparse.Namespace, end: datetime) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        ids = [r[0] for r in await connection.fetch("SELECT id FROM charge_points ORDER BY id")]
        per_cp = args.rows // len(ids)
        for n, cp in enumerate(ids):
            await connection.copy_records_to_table(
                "meter_values",
                records=list(rows_for(cp, per_cp, end)),
                columns=[c.strip() for c in COLUMNS.split(",")],
            )
            print(f"  charge point {n + 1}/{len(ids)}: {per_cp} rows", file=sys.stderr)
        await connection.execute(
            ROLLUP_SQL.format(resolution="hour", bucket="date_trunc('hour', timestamp)")
        )
        await connection.execute(
            ROLLUP_SQL.format(resolution="day", bucket="date_trunc('day', timestamp)")
        )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="cg-chart-"))
    created: str | None = None
    if args.postgres:
        import asyncpg

        created = f"cg_chart_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(args.postgres)
        await admin.execute(f'CREATE DATABASE "{created}"')
        await admin.close()
        plain = f"{args.postgres.rsplit('/', 1)[0]}/{created}"
        database_url = plain.replace("postgresql://", "postgresql+asyncpg://")
    else:
        database_url = f"sqlite+aiosqlite:///{workdir / 'chart.db'}"
    env = {**os.environ, "CHARGEGRID_LOG_LEVEL": "warning", "CHARGEGRID_DATABASE_URL": database_url}
    identities = [f"CHART{i:04d}" for i in range(args.charge_points)]
    (workdir / "cps.csv").write_text("identity\n" + "\n".join(identities) + "\n")
    cli(env, "charge-points", "import", str(workdir / "cps.csv"))
    cli(env, "users", "add", "bench", "--role", "viewer", "--password", "bench-password-1")
    token = cli(env, "users", "token", "bench").strip().split()[-1]
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    started = time.monotonic()
    if args.postgres:
        await fill_postgres(plain, args, end)
    else:
        fill_sqlite(workdir / "chart.db", args, end)
    generated = time.monotonic() - started
    port = free_port()
    server = subprocess.Popen([str(BIN), "serve", "--port", str(port)], env=env)  # noqa: ASYNC220
    timings: list[float] = []
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        ) as http:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            params = {
                "measurand": "power",
                "since": (end - timedelta(days=DAYS)).isoformat().replace("+00:00", "Z"),
                "until": end.isoformat().replace("+00:00", "Z"),
            }
            path = f"/api/v1/charge-points/{identities[0]}/history"
            body: Any = None
            for i in range(args.repeat + 3):
                t0 = time.perf_counter()
                response = await http.get(path, params=params)
                elapsed = time.perf_counter() - t0
                response.raise_for_status()
                body = response.json()
                if i >= 3:  # warm-up requests excluded
                    timings.append(elapsed * 1000)
            raw_rows = None
    finally:
        server.terminate()
        server.wait(30)
    if created:
        import asyncpg

        admin = await asyncpg.connect(args.postgres)
        await admin.execute(f'DROP DATABASE IF EXISTS "{created}" WITH (FORCE)')
        await admin.close()
    timings.sort()
    return {
        "database": database_url.split(":", 1)[0],
        "raw_rows": args.rows if raw_rows is None else raw_rows,
        "charge_points": args.charge_points,
        "generate_seconds": round(generated, 1),
        "resolution": body["resolution"],
        "points": sum(len(s["points"]) for s in body["series"]),
        "median_ms": round(statistics.median(timings), 2),
        "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 2),
        "max_ms": round(timings[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="raw rows to generate")
    parser.add_argument("--charge-points", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=50, help="timed requests")
    parser.add_argument("--postgres", default=None, help="admin URL: run on a fresh database")
    args = parser.parse_args()
    print(orjson.dumps(asyncio.run(main_async(args)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
