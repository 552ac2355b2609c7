"""Time the meter-value sink alone: one group-commit batch of MeterValues from many charge points.

Each batch holds one MeterValues (3 sampled values, as the throughput scenario sends) from every
charge point, with a new timestamp per batch, written through ``RollupMaintainer`` exactly as
the group-commit writer does (insert, rollups, the end-of-batch merge) on a fresh SQLite file.
Prints the median wall time per batch and per value. Used to measure docs/benchmarks.md's
"Where the time goes"; compare ``--merge-interval-ms 0`` (rollups merged in every batch) with
the default (SQLite's deferred merging).

    .venv/bin/python benchmarks/meter_batch.py --charge-points 280 --batches 30
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chargegrid import admin
from chargegrid.metering.normalise import sampled_value_rows
from chargegrid.metering.rollups import RollupMaintainer
from chargegrid.simulator.loadgen import samples
from chargegrid.store.database import create_engine, writing
from chargegrid.store.migrate import upgrade


async def run(charge_points: int, batches: int, merge_interval_ms: float) -> None:
    database = Path(tempfile.mkdtemp(prefix="meter-batch-")) / "bench.db"
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    start = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    try:
        await upgrade(engine)
        async with writing(engine).begin() as connection:
            ids = [
                await admin.add_charge_point(
                    connection, f"MB{n:05d}", now=start, hash_iterations=1000
                )
                for n in range(charge_points)
            ]
        sink = RollupMaintainer("sqlite", merge_interval=merge_interval_ms / 1000.0)
        seconds: list[float] = []
        for batch in range(batches):
            stamp = (start + timedelta(seconds=batch)).isoformat().replace("+00:00", "Z")
            rows = [
                row
                for cp in ids
                for row in sampled_value_rows(
                    cp, 1, None, [{"timestamp": stamp, "sampledValue": samples(3)}]
                )
            ]
            began = time.perf_counter()
            async with writing(engine).begin() as connection:
                await sink.write(connection, rows)
                await sink.finish(connection, final=batch == batches - 1)
            sink.committed()
            seconds.append(time.perf_counter() - began)
        steady = seconds[2:]  # the first batches read every register back (cold cache)
        median = statistics.median(steady)
        values = charge_points * 3
        print(
            f"{charge_points} charge points x 3 values, merge interval {merge_interval_ms:g} ms: "
            f"median {median * 1000:.1f} ms per batch, {median / values * 1e6:.1f} us per value "
            f"({len(steady)} batches; rollup rows merged: {sink.stats.rollup_rows})"
        )
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charge-points", type=int, default=280)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--merge-interval-ms", type=float, default=1000.0)
    options = parser.parse_args()
    asyncio.run(run(options.charge_points, options.batches, options.merge_interval_ms))


if __name__ == "__main__":
    main()
