"""CPU per meter value of SQLite's insert under different index layouts (raw ``sqlite3``).

``python benchmarks/sqlite_index.py [layout ...] [--prefill 400] [--cache-kib 65536]
[--transactions] [--sliced] [--wal-frames]``

The experiment behind migrations 0007-0009 (docs/benchmarks.md, "Where the time goes"): the
``meter_values`` table (ids; the transaction and timestamp indexes where the layout has them), 500
charge points sending 3 values per message, group commits of 650 messages (as the N=500 closed loop
makes them), ``--prefill`` commits first (400: ~780,000 rows), then 60 measured commits. Prints
the process's CPU (user, system) and wall time per value. Layouts of the unique sample index:

- ``cp-measurand-ts``: migration 0006's order (a tail page per series);
- ``cp-ts``: migration 0007's, still PostgreSQL's (a tail page per charge point);
- ``ts``: led by time (one tail for all), no index by charge point;
- ``ts+side``: led by time, plus a side table (charge point, measurand, timestamp, id) filled
  in bulk every 10 commits (the "bulk-maintained index" lever);
- ``ts+keys``: migration 0008's, the shipped SQLite layout: led by time, no separate time
  index (the sample index serves retention), and ``meter_value_keys`` (charge point,
  timestamp, id) WITHOUT ROWID filled in bulk, sorted, every 10 commits (about once a second
  at this load, as the rollup watermark advances);
- ``ts+keys+tx``: migration 0009's: as ``ts+keys``, and the transaction index replaced the same
  way by ``meter_value_transaction_keys`` (transaction, timestamp, id) filled with the keys;
- ``ts+runs+tx``: as ``ts+keys+tx``, each key a run of a message's consecutive ids
  (charge point, timestamp, first id) with its last id, in both tables (the experiment of session
  11: a third of the keys);
- ``ts+keys+spans``: as ``ts+keys+tx``, the transaction keys replaced by one span per
  (transaction, charge point): its first and last timestamp, moved by an upsert;
- ``ts+runs+spans``: both;
- ``ts+nofill``: the tables of ``ts+keys+tx`` never filled (what any key layout can save);
- ``ts+rounds+tx``: the tables of ``ts+keys+tx``, filled late: every 10 commits one row per
  charge point (charge point, round, its ids as a JSON array) in a table ``recent``, and each
  commit one charge point's rows of the last 50 rounds moved into both key tables at once
  (``--sliced`` does not apply; reads would take a third arm, through ``recent``);
- ``none``: no unique index at all (the floor).

``--sliced`` fills as the server does (store/value_keys.fill_step): a round of 10 commits'
values in 10 slices of charge points (id modulo 10), one per commit, instead of all at once every
10 commits. ``--wal-frames`` turns SQLite's automatic checkpoint off for the measured commits and
reports the WAL frames (pages) each commit wrote.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REST = "connector_id, coalesce(transaction_id, 0), coalesce(phase, ''), location, format, context"
SPANS_TABLE = (
    "CREATE TABLE spans (transaction_id INTEGER, charge_point_id INTEGER, first_at TEXT,"
    " last_at TEXT, PRIMARY KEY (transaction_id, charge_point_id)) WITHOUT ROWID"
)
LAYOUTS = {
    "cp-measurand-ts": [
        f"CREATE UNIQUE INDEX uq ON meter_values (charge_point_id, measurand, timestamp, {REST})"
    ],
    "cp-ts": [
        f"CREATE UNIQUE INDEX uq ON meter_values (charge_point_id, timestamp, measurand, {REST})"
    ],
    "ts": [
        f"CREATE UNIQUE INDEX uq ON meter_values (timestamp, charge_point_id, measurand, {REST})"
    ],
    "ts+side": [
        f"CREATE UNIQUE INDEX uq ON meter_values (timestamp, charge_point_id, measurand, {REST})",
        "CREATE TABLE side (charge_point_id INTEGER, measurand TEXT, timestamp TEXT, id INTEGER,"
        " PRIMARY KEY (charge_point_id, measurand, timestamp, id)) WITHOUT ROWID",
    ],
    "ts+keys": [
        f"CREATE UNIQUE INDEX uq ON meter_values (timestamp, charge_point_id, measurand, {REST})",
        "CREATE TABLE keys (charge_point_id INTEGER, timestamp TEXT, id INTEGER,"
        " PRIMARY KEY (charge_point_id, timestamp, id)) WITHOUT ROWID",
    ],
    "ts+keys+tx": [
        f"CREATE UNIQUE INDEX uq ON meter_values (timestamp, charge_point_id, measurand, {REST})",
        "CREATE TABLE keys (charge_point_id INTEGER, timestamp TEXT, id INTEGER,"
        " PRIMARY KEY (charge_point_id, timestamp, id)) WITHOUT ROWID",
        "CREATE TABLE transaction_keys (transaction_id INTEGER, timestamp TEXT, id INTEGER,"
        " charge_point_id INTEGER, PRIMARY KEY (transaction_id, timestamp, id)) WITHOUT ROWID",
    ],
    "ts+runs+tx": [
        f"CREATE UNIQUE INDEX uq ON meter_values (timestamp, charge_point_id, measurand, {REST})",
        "CREATE TABLE keys (charge_point_id INTEGER, timestamp TEXT, id INTEGER, last_id INTEGER,"
        " PRIMARY KEY (charge_point_id, timestamp, id)) WITHOUT ROWID",
        "CREATE TABLE transaction_keys (transaction_id INTEGER, timestamp TEXT, id INTEGER,"
        " last_id INTEGER, charge_point_id INTEGER, PRIMARY KEY (transaction_id, timestamp, id))"
        " WITHOUT ROWID",
    ],
    "ts+keys+spans": [
        f"CREATE UNIQUE INDEX uq ON meter_values (timestamp, charge_point_id, measurand, {REST})",
        "CREATE TABLE keys (charge_point_id INTEGER, timestamp TEXT, id INTEGER,"
        " PRIMARY KEY (charge_point_id, timestamp, id)) WITHOUT ROWID",
        SPANS_TABLE,
    ],
    "ts+runs+spans": [
        f"CREATE UNIQUE INDEX uq ON meter_values (timestamp, charge_point_id, measurand, {REST})",
        "CREATE TABLE keys (charge_point_id INTEGER, timestamp TEXT, id INTEGER, last_id INTEGER,"
        " PRIMARY KEY (charge_point_id, timestamp, id)) WITHOUT ROWID",
        SPANS_TABLE,
    ],
    "none": [],
}
LAYOUTS["ts+nofill"] = LAYOUTS["ts+keys+tx"]
LAYOUTS["ts+rounds+tx"] = [
    *LAYOUTS["ts+keys+tx"],
    "CREATE TABLE recent (charge_point_id INTEGER, round INTEGER, ids TEXT,"
    " PRIMARY KEY (charge_point_id, round)) WITHOUT ROWID",
]
COMPACT_ROUNDS = 50  # ts+rounds+tx: a charge point's keys are moved every 50 rounds (500 commits)
# The layouts without the transaction index (the keys or spans take its place), and those
# without the separate time index (the sample index leads with time and serves retention).
NO_TRANSACTION_INDEX = {
    "ts+keys+tx",
    "ts+runs+tx",
    "ts+keys+spans",
    "ts+runs+spans",
    "ts+nofill",
    "ts+rounds+tx",
}
NO_TIME_INDEX = NO_TRANSACTION_INDEX | {"ts+keys"}
# The layouts with a table filled in bulk, sorted, every 10 commits: the statement filling it
# with the values whose ids are in (?, ?].
# ``{slice}`` is empty, or (``--sliced``) a condition on the charge point id modulo 10.
KEYS_FILL = (
    "INSERT INTO keys SELECT charge_point_id, timestamp, id"
    " FROM meter_values WHERE id > ? AND id <= ?{slice} ORDER BY 1, 2, 3"
)
TRANSACTION_KEYS_FILL = (
    "INSERT INTO transaction_keys SELECT transaction_id, timestamp, id, charge_point_id"
    " FROM meter_values WHERE id > ? AND id <= ?{slice} AND transaction_id IS NOT NULL"
    " ORDER BY 1, 2, 3"
)
# A run per (charge point, timestamp): in this load a message's values share a timestamp that
# no other message of the charge point has, so each group is one run of consecutive ids (the
# server would have to split groups that are not).
RUNS_FILL = (
    "INSERT INTO keys SELECT charge_point_id, timestamp, min(id), max(id)"
    " FROM meter_values WHERE id > ? AND id <= ?{slice} GROUP BY 1, 2 ORDER BY 1, 2"
)
TRANSACTION_RUNS_FILL = (
    "INSERT INTO transaction_keys SELECT transaction_id, timestamp, min(id), max(id),"
    " min(charge_point_id) FROM meter_values WHERE id > ? AND id <= ?{slice}"
    " AND transaction_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"
)
SPANS_FILL = (
    "INSERT INTO spans SELECT transaction_id, charge_point_id, min(timestamp), max(timestamp)"
    " FROM meter_values WHERE id > ? AND id <= ?{slice} AND transaction_id IS NOT NULL"
    " GROUP BY 1, 2 ORDER BY 1, 2 ON CONFLICT DO UPDATE SET"
    " first_at = min(first_at, excluded.first_at), last_at = max(last_at, excluded.last_at)"
)
BULK_FILLS = {
    "ts+keys": [KEYS_FILL],
    "ts+keys+tx": [KEYS_FILL, TRANSACTION_KEYS_FILL],
    "ts+runs+tx": [RUNS_FILL, TRANSACTION_RUNS_FILL],
    "ts+keys+spans": [KEYS_FILL, SPANS_FILL],
    "ts+runs+spans": [RUNS_FILL, SPANS_FILL],
    "ts+side": [
        "INSERT INTO side SELECT charge_point_id, measurand, timestamp, id"
        " FROM meter_values WHERE id > ? AND id <= ?{slice} ORDER BY 1, 2, 3, 4"
    ],
}
SLICES = 10  # with --sliced: a round of SLICES commits' values, a slice per commit
COLUMNS = (
    "charge_point_id, connector_id, transaction_id, timestamp, timestamp_raw, measurand, phase,"
    " location, context, unit, value, raw_value, raw_unit, format"
)
MEASURANDS = [
    ("Energy.Active.Import.Register", "Wh"),
    ("Power.Active.Import", "W"),
    ("Current.Import", "A"),
]
MESSAGES_PER_COMMIT = 650
CHARGE_POINTS = 500


def run(
    layout: str,
    prefill: int,
    cache_kib: int,
    directory: Path,
    transactions: bool,
    sliced: bool = False,
    wal_frames: bool = False,
) -> str:
    path = directory / f"{layout}.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA cache_size=-{cache_kib}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA wal_autocheckpoint=10000")
    db.execute(
        "CREATE TABLE meter_values (id INTEGER PRIMARY KEY, charge_point_id INTEGER NOT NULL,"
        " connector_id INTEGER NOT NULL, transaction_id INTEGER, timestamp DATETIME NOT NULL,"
        " timestamp_raw VARCHAR(64) NOT NULL, measurand VARCHAR(40) NOT NULL, phase VARCHAR(8),"
        " location VARCHAR(8) NOT NULL, context VARCHAR(24) NOT NULL, unit VARCHAR(12) NOT NULL,"
        " value FLOAT, raw_value TEXT NOT NULL, raw_unit VARCHAR(12) NOT NULL,"
        " format VARCHAR(12) NOT NULL)"
    )
    if layout not in NO_TRANSACTION_INDEX:  # 0009 dropped it on SQLite: transaction_keys
        db.execute("CREATE INDEX ix_tx ON meter_values (transaction_id, timestamp)")
    if layout not in NO_TIME_INDEX:  # 0008 dropped it: the sample index leads with time
        db.execute("CREATE INDEX ix_ts ON meter_values (timestamp)")
    for statement in LAYOUTS[layout]:
        db.execute(statement)
    state = {"at": datetime(2026, 1, 1), "next_cp": 0, "commits": 0, "indexed": 0, "target": 0}
    fills = [
        fill.format(slice=" AND charge_point_id % ? = ?" if sliced else "")
        for fill in BULK_FILLS.get(layout, [])
    ]

    def rounds(state: dict[str, Any]) -> None:
        """``ts+rounds+tx``: every 10 commits one row per charge point with the ids it stored
        (appended under its own key, a small row), and each commit one charge point's rows of
        the last COMPACT_ROUNDS rounds moved into both key tables at once."""
        commit = state["commits"]
        if commit % 10 == 0:
            top = db.execute("SELECT max(id) FROM meter_values").fetchone()[0]
            db.execute(
                "INSERT INTO recent SELECT charge_point_id, ?, json_group_array(id)"
                " FROM meter_values WHERE id > ? AND id <= ? GROUP BY 1 ORDER BY 1",
                (commit, state["indexed"], top),
            )
            state["indexed"] = top
        period = COMPACT_ROUNDS * 10  # commits
        charge_point = [1 + commit % period * CHARGE_POINTS // period]
        ids = "SELECT j.value FROM recent AS r, json_each(r.ids) AS j WHERE r.charge_point_id = ?"
        db.execute(
            "INSERT INTO keys SELECT charge_point_id, timestamp, id FROM meter_values"
            f" WHERE id IN ({ids}) ORDER BY 1, 2, 3",
            charge_point,
        )
        db.execute(
            "INSERT INTO transaction_keys SELECT transaction_id, timestamp, id, charge_point_id"
            f" FROM meter_values WHERE id IN ({ids}) AND transaction_id IS NOT NULL"
            " ORDER BY 1, 2, 3",
            charge_point,
        )
        db.execute("DELETE FROM recent WHERE charge_point_id = ?", charge_point)

    def commits(count: int) -> None:
        for _ in range(count):
            rows = []
            for i in range(MESSAGES_PER_COMMIT):
                cp = 1 + (state["next_cp"] + i) % CHARGE_POINTS
                text = (state["at"] + timedelta(microseconds=i)).isoformat(" ", "microseconds")
                for measurand, unit in MEASURANDS:
                    rows.append(
                        (
                            cp,
                            1,
                            cp if transactions else None,  # one open session per charge point
                            text,
                            text + "Z",
                            measurand,
                            None,
                            "Outlet",
                            "Sample.Periodic",
                            unit,
                            1.0,
                            "1.0",
                            unit,
                            "Raw",
                        )
                    )
            state["next_cp"] += MESSAGES_PER_COMMIT
            state["at"] += timedelta(seconds=1)
            db.execute("BEGIN IMMEDIATE")
            for start in range(0, len(rows), 1000):
                chunk = rows[start : start + 1000]
                values = ", ".join(["(" + ", ".join("?" * 14) + ")"] * len(chunk))
                db.execute(
                    f"INSERT INTO meter_values ({COLUMNS}) VALUES {values} ON CONFLICT DO NOTHING",
                    [value for row in chunk for value in row],
                )
            state["commits"] += 1
            if layout == "ts+rounds+tx":
                rounds(state)
            elif fills and sliced:
                part = state["commits"] % SLICES
                if part == 0:  # a new round: the values up to now, keyed over the next commits
                    state["indexed"] = state["target"]
                    state["target"] = db.execute("SELECT max(id) FROM meter_values").fetchone()[0]
                for fill in fills:
                    db.execute(fill, (state["indexed"], state["target"], SLICES, part))
            elif fills and state["commits"] % 10 == 0:
                top = db.execute("SELECT max(id) FROM meter_values").fetchone()[0]
                for fill in fills:
                    db.execute(fill, (state["indexed"], top))
                state["indexed"] = top
            db.execute("COMMIT")

    commits(prefill)
    if wal_frames:  # from an empty WAL that only grows: its size counts the frames written
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before, wall = os.times(), time.perf_counter()
    commits(60)
    after, wall = os.times(), time.perf_counter() - wall
    values = 60 * MESSAGES_PER_COMMIT * len(MEASURANDS)
    user = 1e6 * (after.user - before.user) / values
    system = 1e6 * (after.system - before.system) / values
    frames = ""
    if wal_frames:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        written = (os.path.getsize(f"{path}-wal") - 32) / (page_size + 24)  # header, frame headers
        frames = f", WAL {written / 60:5.0f} pages/commit"
    db.close()
    return (
        f"{layout:16} CPU {user + system:5.1f} us/value (user {user:4.1f}, system {system:4.1f}),"
        f" wall {1e6 * wall / values:5.1f} us/value{frames}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layouts", nargs="*", help=f"of {', '.join(LAYOUTS)} (default: all)")
    parser.add_argument("--prefill", type=int, default=400, help="commits before measuring")
    parser.add_argument("--cache-kib", type=int, default=65536, help="SQLite page cache")
    parser.add_argument(
        "--transactions",
        action="store_true",
        help="values carry a transaction id (one open session per charge point), as in a real "
        "fleet; by default none, as in the throughput benchmark",
    )
    parser.add_argument(
        "--sliced",
        action="store_true",
        help="fill the keys a slice of charge points per commit, as the server does",
    )
    parser.add_argument(
        "--wal-frames",
        action="store_true",
        help="report the WAL pages each measured commit wrote (no automatic checkpoint then)",
    )
    args = parser.parse_args()
    unknown = set(args.layouts) - set(LAYOUTS)
    if unknown:
        parser.error(f"unknown layout(s) {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory() as directory:
        for layout in args.layouts or list(LAYOUTS):
            figure = run(
                layout,
                args.prefill,
                args.cache_kib,
                Path(directory),
                args.transactions,
                args.sliced,
                args.wal_frames,
            )
            print(figure, flush=True)


if __name__ == "__main__":
    main()
