"""Crash test: SIGKILL the server under load, restart it, replay, and count (DESIGN.md 1 and 2).

A real ``chargegrid serve`` process is killed with SIGKILL while 50 charge points (the ``ocpp``
package's ChargePoint over ``websockets``) send StartTransaction, MeterValues and StopTransaction.
Each charge point keeps a journal of every message it sent and whether a CALLRESULT came back.
After a restart on the same database:

* everything acknowledged before the kill is stored (guarantee 1);
* each charge point replays its whole journal, as a charger replays its offline queue: replayed
  StartTransactions get the transactionId they got before, and afterwards no transaction and no
  sampled value is stored twice, and everything in the journals is stored (guarantee 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from ocpp.v16 import ChargePoint, call
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from chargegrid.clock import parse_timestamp
from chargegrid.store.database import create_engine

pytestmark = pytest.mark.slow

CHARGEGRID = Path(sys.executable).with_name("chargegrid")
CHARGE_POINTS = 50
ID_TAG = "CRASHTAG"
# The kill comes after at least MIN_LOAD_SECONDS and once at least MIN_ACKED of each message type
# were acknowledged (a busy machine may need longer), but never later than MAX_LOAD_SECONDS.
MIN_LOAD_SECONDS = 1.5
MAX_LOAD_SECONDS = 20.0
MIN_ACKED = CHARGE_POINTS
COMMIT_INTERVAL_MS = "25"
# MeterValues messages per transaction: 1 to 4, depending on the charge point, so that the
# charge points drift apart and the kill finds them at different steps.
METER_VALUES_PER_TRANSACTION = (1, 2, 3, 4)
BASE_TIME = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


# --- the server as a process ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run_cli(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(CHARGEGRID),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CHARGEGRID_LOG_LEVEL": "warning"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"chargegrid {' '.join(args)}: {err.decode()}"
    return out.decode()


@dataclass
class ServerProcess:
    process: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp/"


# The journals' timestamps are from 2024: keep retention from purging them (issue 4).
NO_RETENTION = {
    "CHARGEGRID_RETENTION_RAW_DAYS": "36500",
    "CHARGEGRID_RETENTION_HOURLY_DAYS": "36500",
    "CHARGEGRID_RETENTION_DAILY_DAYS": "36500",
}


async def start_server(database_url: str, log: Path, **env: str) -> ServerProcess:
    env = {**NO_RETENTION, **env}
    port = free_port()
    with log.open("ab") as output:
        process = await asyncio.create_subprocess_exec(
            str(CHARGEGRID),
            "serve",
            "--port",
            str(port),
            "--database-url",
            database_url,
            stdout=output,
            stderr=output,
            env={**os.environ, "CHARGEGRID_LOG_LEVEL": "warning", **env},
        )
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while True:
            if process.returncode is not None:
                raise AssertionError(
                    f"server exited early: {await asyncio.to_thread(log.read_text)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                if response.status_code == 200:
                    return ServerProcess(process, port, log)
            if time.monotonic() > deadline:
                process.kill()
                await process.wait()
                output = await asyncio.to_thread(log.read_text)
                raise AssertionError(f"server did not answer /healthz: {output}")
            await asyncio.sleep(0.05)


async def stop_server(server: ServerProcess) -> None:
    if server.process.returncode is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(server.process.wait(), 15)
        except TimeoutError:
            server.process.kill()
            await server.process.wait()


# --- charge points with a journal -----------------------------------------------------------------


@dataclass
class Sent:
    """One message a charge point sent, and what came back."""

    action: str
    payload: Any
    acked: bool = False
    result: Any = None


@dataclass
class Journal:
    identity: str
    sent: list[Sent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # CallErrors and the like before the kill

    def acked(self, action: str) -> list[Sent]:
        return [s for s in self.sent if s.action == action and s.acked]


class Killed:
    """Set just before the SIGKILL so clients know which failures are expected."""

    def __init__(self) -> None:
        self.at: float | None = None


async def send(cp: ChargePoint, loop_task: asyncio.Task[Any], payload: Any) -> tuple[bool, Any]:
    """Send ``payload``; (True, result) on a CALLRESULT, (False, reason) otherwise."""
    call_task = asyncio.create_task(cp.call(payload, suppress=False))
    done, _ = await asyncio.wait({call_task, loop_task}, return_when=asyncio.FIRST_COMPLETED)
    if call_task not in done:
        call_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await call_task
        return False, "connection closed"
    try:
        return True, call_task.result()
    except Exception as error:
        return False, f"{type(error).__name__}: {error}"


@contextlib.asynccontextmanager
async def connect(url: str, identity: str) -> Any:
    async with websockets.connect(
        url + identity,
        subprotocols=[websockets.Subprotocol("ocpp1.6")],
        compression=None,
        open_timeout=10,
    ) as ws:
        cp = ChargePoint(identity, ws, response_timeout=15)
        loop_task = asyncio.create_task(cp.start())
        try:
            yield cp, loop_task
        finally:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loop_task


def stamp(seconds: int) -> str:
    return (BASE_TIME + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def sampled_values(energy_wh: int, n: int) -> list[dict[str, str]]:
    return [
        {"value": str(energy_wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": f"{7000 + n}", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": f"{16 + n % 5}.5", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
    ]


async def drive(url: str, journal: Journal, killed: Killed, number: int) -> None:
    """Charge in a loop until the connection breaks, journaling every message."""
    per_transaction = METER_VALUES_PER_TRANSACTION[number % len(METER_VALUES_PER_TRANSACTION)]
    clock = 0  # seconds after BASE_TIME: every message of this charge point has its own time
    energy = 0

    async def message(
        cp: ChargePoint, loop_task: asyncio.Task[Any], action: str, payload: Any
    ) -> Any:
        entry = Sent(action, payload)
        journal.sent.append(entry)
        ok, result = await send(cp, loop_task, payload)
        entry.acked, entry.result = ok, result if ok else None
        if not ok and killed.at is None:
            journal.errors.append(f"{action}: {result}")
        return result if ok else None

    try:
        async with connect(url, journal.identity) as (cp, loop_task):
            boot = await cp.call(
                call.BootNotification(charge_point_vendor="Crash", charge_point_model="Test")
            )
            assert boot.status == "Accepted"
            while True:
                clock += 1
                start = await message(
                    cp,
                    loop_task,
                    "StartTransaction",
                    call.StartTransaction(
                        connector_id=1, id_tag=ID_TAG, meter_start=energy, timestamp=stamp(clock)
                    ),
                )
                if start is None:
                    return
                for n in range(per_transaction):
                    clock += 1
                    energy += 137
                    values = await message(
                        cp,
                        loop_task,
                        "MeterValues",
                        call.MeterValues(
                            connector_id=1,
                            transaction_id=start.transaction_id,
                            meter_value=[
                                {
                                    "timestamp": stamp(clock),
                                    "sampledValue": sampled_values(energy, n),
                                }
                            ],
                        ),
                    )
                    if values is None:
                        return
                clock += 1
                energy += 11
                stop = await message(
                    cp,
                    loop_task,
                    "StopTransaction",
                    call.StopTransaction(
                        meter_stop=energy,
                        timestamp=stamp(clock),
                        transaction_id=start.transaction_id,
                        reason="EVDisconnected",
                    ),
                )
                if stop is None:
                    return
    except Exception as error:  # the kill breaks connections in every way there is
        if killed.at is None:
            journal.errors.append(f"{type(error).__name__}: {error}")


def acknowledged(journals: list[Journal]) -> dict[str, int]:
    return {
        action: sum(len(j.acked(action)) for j in journals)
        for action in ("StartTransaction", "MeterValues", "StopTransaction")
    }


async def wait_for_load(journals: list[Journal]) -> None:
    started = time.monotonic()
    await asyncio.sleep(MIN_LOAD_SECONDS)
    while time.monotonic() - started < MAX_LOAD_SECONDS:
        if min(acknowledged(journals).values()) >= MIN_ACKED:
            await asyncio.sleep(random.uniform(0, 0.5))  # not always at the same step
            return
        await asyncio.sleep(0.05)


async def replay(url: str, journal: Journal) -> list[tuple[Sent, bool, Any]]:
    """Send the whole journal again, in order: (original, acknowledged, result) per message."""
    outcomes: list[tuple[Sent, bool, Any]] = []
    async with connect(url, journal.identity) as (cp, loop_task):
        boot = await cp.call(
            call.BootNotification(charge_point_vendor="Crash", charge_point_model="Test")
        )
        assert boot.status == "Accepted"
        for entry in journal.sent:
            ok, result = await send(cp, loop_task, entry.payload)
            outcomes.append((entry, ok, result))
    return outcomes


# --- looking at the database ----------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    transactions: dict[int, dict[str, Any]]  # by id
    values: dict[tuple[Any, ...], list[dict[str, Any]]]  # by (identity, tx, ts raw, measurand, ph)
    transaction_rows: int
    distinct_transactions: int
    value_rows: int
    distinct_values: int


async def read_stored(engine: AsyncEngine) -> Stored:
    async with engine.connect() as connection:
        tx_rows = list(
            (
                await connection.execute(
                    text(
                        "SELECT t.*, cp.identity FROM transactions t "
                        "JOIN charge_points cp ON cp.id = t.charge_point_id"
                    )
                )
            ).mappings()
        )
        value_rows = list(
            (
                await connection.execute(
                    text(
                        "SELECT mv.*, cp.identity FROM meter_values mv "
                        "JOIN charge_points cp ON cp.id = mv.charge_point_id"
                    )
                )
            ).mappings()
        )
        distinct_transactions = await connection.scalar(
            text(
                "SELECT COUNT(*) FROM (SELECT DISTINCT charge_point_id, connector_id, started_at, "
                "meter_start, id_tag FROM transactions) AS d"
            )
        )
        distinct_values = await connection.scalar(
            text(
                "SELECT COUNT(*) FROM (SELECT DISTINCT charge_point_id, connector_id, "
                "transaction_id, timestamp, measurand, phase, location FROM meter_values) AS d"
            )
        )
    values: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in value_rows:
        key = (row["identity"], row["transaction_id"], row["timestamp_raw"], row["measurand"])
        values.setdefault((*key, row["phase"]), []).append(dict(row))
    return Stored(
        transactions={row["id"]: dict(row) for row in tx_rows},
        values=values,
        transaction_rows=len(tx_rows),
        distinct_transactions=distinct_transactions,
        value_rows=len(value_rows),
        distinct_values=distinct_values,
    )


def find_start(stored: Stored, identity: str, start: Any) -> dict[str, Any] | None:
    for row in stored.transactions.values():
        if (
            row["identity"] == identity
            and row["connector_id"] == start.connector_id
            and row["id_tag"] == start.id_tag
            and row["meter_start"] == start.meter_start
            and row["started_at_raw"] == start.timestamp
        ):
            return row
    return None


def check_start(stored: Stored, identity: str, entry: Sent, transaction_id: int) -> list[str]:
    row = stored.transactions.get(transaction_id)
    start = entry.payload
    if row is None:
        return [f"{identity}: acknowledged transaction {transaction_id} is missing"]
    expected = {
        "identity": identity,
        "connector_id": start.connector_id,
        "id_tag": start.id_tag,
        "meter_start": start.meter_start,
        "started_at_raw": start.timestamp,
        "started_at": parse_timestamp(start.timestamp),
    }
    actual = {key: row[key] for key in expected}
    if row["started_at"] is not None and not isinstance(row["started_at"], datetime):
        actual["started_at"] = parse_timestamp(str(row["started_at"]))
    elif isinstance(row["started_at"], datetime) and row["started_at"].tzinfo is None:
        actual["started_at"] = row["started_at"].replace(tzinfo=UTC)
    return [] if actual == expected else [f"{identity}: {transaction_id}: {actual} != {expected}"]


def check_stop(stored: Stored, identity: str, entry: Sent) -> list[str]:
    stop = entry.payload
    row = stored.transactions.get(stop.transaction_id)
    if row is None:
        return [f"{identity}: stopped transaction {stop.transaction_id} is missing"]
    if row["meter_stop"] != stop.meter_stop or row["stopped_at_raw"] != stop.timestamp:
        return [
            f"{identity}: transaction {stop.transaction_id} stop not stored: "
            f"meter_stop={row['meter_stop']} stopped_at_raw={row['stopped_at_raw']!r}, "
            f"expected {stop.meter_stop} at {stop.timestamp}"
        ]
    return []


def check_values(stored: Stored, identity: str, entry: Sent) -> list[str]:
    problems = []
    payload = entry.payload
    for meter_value in payload.meter_value:
        for sample in meter_value["sampledValue"]:
            key = (
                identity,
                payload.transaction_id,
                meter_value["timestamp"],
                sample["measurand"],
                sample.get("phase"),
            )
            rows = stored.values.get(key, [])
            if len(rows) != 1:
                problems.append(f"{key}: stored {len(rows)} times")
            elif rows[0]["raw_value"] != sample["value"]:
                problems.append(f"{key}: stored {rows[0]['raw_value']!r}, sent {sample['value']!r}")
    return problems


def check_acknowledged(stored: Stored, journals: list[Journal]) -> list[str]:
    problems: list[str] = []
    for journal in journals:
        for entry in journal.sent:
            if not entry.acked:
                continue
            if entry.action == "StartTransaction":
                problems += check_start(
                    stored, journal.identity, entry, entry.result.transaction_id
                )
            elif entry.action == "StopTransaction":
                problems += check_stop(stored, journal.identity, entry)
            else:
                problems += check_values(stored, journal.identity, entry)
    return problems


async def rollup_mismatches(engine: AsyncEngine) -> list[str]:
    """Stored rollups against a brute-force recompute from the raw values (issue 4): they are
    written in the raw insert's transaction, so a SIGKILL can never leave them apart."""
    from chargegrid.metering.rollups import recompute
    from chargegrid.store import rollups as rollup_store

    async with engine.connect() as connection:
        raw = (await connection.execute(select(*rollup_store.RETURNED))).all()
        stored = await rollup_store.read_all(connection)
    expected = recompute(raw)
    problems = []
    seen = set()
    for row in stored:
        key = tuple(row[c] for c in rollup_store.PRIMARY_KEY)
        seen.add(key)
        agg = expected.get(key)  # type: ignore[call-overload]
        if agg is None:
            if row["count"] or row["energy"]:
                problems.append(f"{key}: stored, not in raw")
            continue
        got = (row["count"], row["min"], row["max"], row["first_value"], row["last_value"])
        want = (agg.count, agg.min, agg.max, agg.first_value, agg.last_value)
        if (
            got != want
            or abs(row["sum"] - agg.sum) > 1e-6
            or (agg.energy is not None and abs((row["energy"] or 0.0) - agg.energy) > 1e-6)
        ):
            problems.append(f"{key}: stored {got} {row['energy']}, recomputed {want} {agg.energy}")
    problems += [f"{key}: missing" for key in expected if key not in seen]
    return problems


# --- the test -----------------------------------------------------------------------------------


async def test_sigkill_under_load_loses_nothing_acknowledged_and_replay_stores_once(
    database_url: str, tmp_path: Path
) -> None:
    identities = [f"CRASH{i:03d}" for i in range(CHARGE_POINTS)]
    csv_file = tmp_path / "charge_points.csv"
    csv_file.write_text("identity\n" + "\n".join(identities) + "\n")
    await run_cli("charge-points", "import", str(csv_file), "--database-url", database_url)
    await run_cli("id-tags", "add", ID_TAG, "--database-url", database_url)

    # 1. Load, then SIGKILL.
    # A longer group-commit interval than the default widens the window in which a server that
    # answered before committing would hold acknowledged but uncommitted writes at the kill.
    server = await start_server(
        database_url, tmp_path / "server-1.log", CHARGEGRID_COMMIT_INTERVAL_MS=COMMIT_INTERVAL_MS
    )
    killed = Killed()
    journals = [Journal(identity) for identity in identities]
    try:
        clients = [
            asyncio.create_task(drive(server.ws_url, j, killed, n)) for n, j in enumerate(journals)
        ]
        await wait_for_load(journals)
        killed.at = time.monotonic()
        os.kill(server.process.pid, signal.SIGKILL)
        await server.process.wait()
        await asyncio.wait_for(asyncio.gather(*clients), 30)
    finally:
        if server.process.returncode is None:
            server.process.kill()
            await server.process.wait()

    errors = [f"{j.identity}: {e}" for j in journals for e in j.errors]
    assert not errors, f"errors before the kill: {errors[:10]}"
    acked = acknowledged(journals)
    sent = sum(len(j.sent) for j in journals)
    print(f"\n[{database_url.split(':')[0]}] before the kill: sent {sent}, acknowledged {acked}")
    assert min(acked.values()) >= MIN_ACKED, f"too little acknowledged to prove much: {acked}"

    # 2. Restart on the same database: everything acknowledged is there.
    server = await start_server(database_url, tmp_path / "server-2.log")
    engine = create_engine(database_url)
    try:
        stored = await read_stored(engine)
        print(
            f"after restart: {stored.transaction_rows} transactions, "
            f"{stored.value_rows} sampled values"
        )
        problems = check_acknowledged(stored, journals)
        assert not problems, f"{len(problems)} acknowledged writes lost: {problems[:10]}"
        mismatches = await rollup_mismatches(engine)
        assert not mismatches, f"rollups after the kill: {mismatches[:10]}"
        # Starts that were stored but never acknowledged: the replay must find them.
        stored_before_replay = {
            (j.identity, id(entry)): row["id"]
            for j in journals
            for entry in j.sent
            if entry.action == "StartTransaction"
            and (row := find_start(stored, j.identity, entry.payload)) is not None
        }

        # 3. Every charge point replays its whole journal.
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(replay(server.ws_url, j) for j in journals)), 60
        )
        failures = [
            f"{entry.action}: {result}"
            for outcome in outcomes
            for entry, ok, result in outcome
            if not ok
        ]
        assert not failures, f"replayed messages not acknowledged: {failures[:10]}"
        mismatched = []
        for journal, outcome in zip(journals, outcomes, strict=True):
            for entry, _ok, result in outcome:
                if entry.action != "StartTransaction":
                    continue
                expected = (
                    entry.result.transaction_id
                    if entry.acked
                    else stored_before_replay.get((journal.identity, id(entry)))
                )
                if expected is not None and result.transaction_id != expected:
                    mismatched.append(
                        f"{journal.identity} {entry.payload.timestamp}: replay got "
                        f"{result.transaction_id}, first answer {expected}"
                    )
        assert not mismatched, f"replayed StartTransaction got a new id: {mismatched[:10]}"

        # 4. Everything in the journals is stored, and nothing twice.
        after = await read_stored(engine)
        starts = sum(1 for j in journals for s in j.sent if s.action == "StartTransaction")
        samples = sum(
            len(mv["sampledValue"])
            for j in journals
            for s in j.sent
            if s.action == "MeterValues"
            for mv in s.payload.meter_value
        )
        print(
            f"after replay: {after.transaction_rows} transactions "
            f"({after.distinct_transactions} distinct, {starts} StartTransactions journaled), "
            f"{after.value_rows} sampled values ({after.distinct_values} distinct, "
            f"{samples} journaled)"
        )
        assert after.transaction_rows == after.distinct_transactions == starts
        assert after.value_rows == after.distinct_values == samples
        for outcome in outcomes:
            for entry, _ok, result in outcome:
                entry.acked = True
                if entry.action == "StartTransaction":
                    entry.result = result
        problems = check_acknowledged(after, journals)
        assert not problems, f"{len(problems)} replayed writes missing: {problems[:10]}"
        # A clean stop merges what SQLite's deferred rollups still hold (docs/metering.md).
        await stop_server(server)
        mismatches = await rollup_mismatches(engine)
        assert not mismatches, f"rollups after the replay: {mismatches[:10]}"
    finally:
        await engine.dispose()
        await stop_server(server)
