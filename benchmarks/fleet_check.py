"""Realistic fleet check (issue 7): the simulator's own accounting against what the server shows.

One command starts a fresh ``chargegrid serve`` on an SQLite file in a temporary directory,
provisions the fleet through the CLI (charge points, a user and its token) and the REST API (one
id tag per connector, as drivers have their own cards), opens the dashboard in headless Chromium
and logs in, then runs a realistic simulated fleet against the server in a separate process:

    .venv/bin/python benchmarks/fleet_check.py --charge-points 1000 --duration 600

While the fleet runs it samples the simulator's figures, ``GET /api/v1/stats`` and the dashboard,
and sends REST commands (remote stop and start, trigger message, get and change configuration)
that the simulated charge points must answer. At the end of ``--duration`` the charge points hold
still (offline ones come back, queues are delivered, nothing new happens) so that the comparison
has no moving target: the simulator's figures, every session and meter reading it had
acknowledged, against the REST API, the database and the dashboard (its fleet figures and each
card of its first page, live-updated since the start and freshly loaded). Then the fleet closes,
and the server's message counts (``/metrics``) and log are checked. Any mismatch, any error on
either side, any ERROR in the server log: the table says which, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("CHARGEGRID_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USER = "fleetcheck"
PASSWORD = "fleet-check-password"
PREFIX = "SIM"
REMOTE_TAGS = tuple(f"REMOTE{n:04d}" for n in range(1, 11))
# Command answers that say the charge point answered (OCPP result, whatever it was).
ANSWERED = ("accepted", "rejected")
OCPP_ACTION = {
    "stop": "RemoteStopTransaction",
    "start": "RemoteStartTransaction",
    "trigger-message": "TriggerMessage",
    "get-configuration": "GetConfiguration",
    "change-configuration": "ChangeConfiguration",
}
LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b")
LOG_WARNING = re.compile(r"\bWARNING\b")


@dataclass
class CheckOptions:
    charge_points: int = 50
    duration: float = 60.0
    seed: int = 1
    # SimConfig fields beyond the defaults (speed, meter_interval, idle_mean, fault_rate, ...).
    sim: dict[str, Any] = field(default_factory=dict)
    ramp: float | None = None  # default: N/100 seconds, at most 30
    port: int = 0  # 0: a free one
    workdir: Path | None = None  # default: a temporary directory, removed unless keep
    keep: bool = False
    browser: bool = True  # the dashboard in headless Chromium (a problem if there is none)
    commands: bool = True
    samples: int = 6  # comparisons while the fleet runs (informational)
    settle_timeout: float = 180.0
    server_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Row:
    """One line of the result table."""

    check: str
    simulator: Any
    api: Any = ""
    dashboard: Any = ""
    database: Any = ""
    ok: bool = True
    note: str = ""


@dataclass
class Result:
    options: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    runtime_s: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and all(row.ok for row in self.rows)

    def add(self, check: str, simulator: Any, *, ok: bool | None = None, **others: Any) -> Row:
        """A row; ``ok`` defaults to "every given value equals the simulator's"."""
        if ok is None:
            ok = all(
                value == simulator
                for key, value in others.items()
                if key in ("api", "dashboard", "database") and value != ""
            )
        row = Row(check, simulator, ok=ok, **others)
        self.rows.append(row)
        return row


# processes ---------------------------------------------------------------------------------------


def _have_chromium() -> bool:
    return os.path.exists(CHROMIUM) or shutil.which(CHROMIUM) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEGRID_")}
    env.update(extra)
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "chargegrid"), *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"chargegrid {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


class ProcessMeter:
    """CPU time and resident memory of one process, from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.started = time.monotonic()
        self.cpu_start = self._cpu()
        self.peak_rss = 0
        self.last_cpu = self.cpu_start
        self.last_time = self.started
        self.peak_cpu = 0.0

    def _cpu(self) -> float:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return self.last_cpu if hasattr(self, "last_cpu") else 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    def rss(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sample(self) -> None:
        now, cpu = time.monotonic(), self._cpu()
        if now - self.last_time >= 1.0:
            self.peak_cpu = max(self.peak_cpu, (cpu - self.last_cpu) / (now - self.last_time))
            self.last_cpu, self.last_time = cpu, now
        self.peak_rss = max(self.peak_rss, self.rss())

    def report(self) -> dict[str, Any]:
        self.sample()
        wall = time.monotonic() - self.started
        cpu = self.last_cpu - self.cpu_start
        return {
            "cpu_seconds": round(cpu, 1),
            "cpu_avg_percent": round(100 * cpu / wall, 1) if wall else 0.0,
            "cpu_peak_percent": round(100 * self.peak_cpu, 1),
            "rss_peak_mib": round(self.peak_rss / 2**20, 1),
            "rss_end_mib": round(self.rss() / 2**20, 1),
        }


async def _meter_loop(meters: list[ProcessMeter]) -> None:
    while True:
        for meter in meters:
            meter.sample()
        await asyncio.sleep(1.0)


class Worker:
    """The simulator in its own process (this file with ``--worker``), spoken to by JSON lines:
    we send ``figures`` / ``finish``; it sends ``figures``, ``settled`` and ``summary``."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.messages: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    def _queue(self, kind: str) -> asyncio.Queue[dict[str, Any]]:
        return self.messages.setdefault(kind, asyncio.Queue())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            await self._queue(message.pop("type")).put(message)

    async def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()

    async def receive(self, kind: str, timeout: float) -> dict[str, Any]:
        get = asyncio.create_task(self._queue(kind).get())
        done, _ = await asyncio.wait(
            {get, self.reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if get in done:
            return get.result()
        get.cancel()
        if self.reader in done:
            raise RuntimeError(f"the simulator exited (status {await self.process.wait()})")
        raise TimeoutError(f"no {kind!r} from the simulator in {timeout:.0f} s")

    async def figures(self) -> dict[str, Any]:
        await self.send("figures")
        return await self.receive("figures", 60)


# the dashboard --------------------------------------------------------------------------------

READ_FLEET_PAGE = """() => {
  const text = (node) => node ? node.textContent.trim() : null;
  const stats = {};
  document.querySelectorAll('[data-stat]').forEach((n) => { stats[n.dataset.stat] = text(n); });
  const cards = {};
  document.querySelectorAll('.cp-card').forEach((card) => {
    const connectors = {};
    card.querySelectorAll('[data-connector]').forEach((n) => {
      connectors[n.dataset.connector] = text(n);
    });
    cards[card.dataset.identity] = {
      online: text(card.querySelector('[data-role="online"]')),
      status: text(card.querySelector('.cp-head [data-role="status"]')),
      connectors: connectors,
      session: card.getAttribute('data-session'),
      meter_start: card.getAttribute('data-meter-start'),
      session_text: text(card.querySelector('[data-role="session"]')),
      energy: text(card.querySelector('[data-role="energy"]')),
      power: text(card.querySelector('[data-role="power"]')),
    };
  });
  const live = document.querySelector('#live-state');
  return {stats: stats, cards: cards, live: live ? live.dataset.state : null};
}"""


class Dashboard:
    """The operator's view: a logged-in headless Chromium on the fleet overview."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.errors: list[str] = []
        self._playwright: Any = None
        self._browser: Any = None
        self.page: Any = None

    async def open(self) -> None:
        from playwright.async_api import async_playwright

        self._playwright = await async_playwright().start()
        self._browser = await self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        self.page = await self.new_page("/")

    async def new_page(self, path: str) -> Any:
        context = await self._browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        page.on("pageerror", lambda error: self.errors.append(f"{path}: {error}"))
        page.on(
            "console",
            lambda m: self.errors.append(f"{path}: {m.text}") if m.type == "error" else None,
        )
        await page.goto(self.base + "/")
        if "/login" in page.url:
            await page.get_by_label("Username").fill(USER)
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Log in").click()
            await page.wait_for_url(self.base + "/")
        if path != "/":
            await page.goto(self.base + path)
        return page

    async def read(self, page: Any = None) -> dict[str, Any]:
        result: dict[str, Any] = await (page or self.page).evaluate(READ_FLEET_PAGE)
        return result

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._browser is not None:
                await self._browser.close()
        with contextlib.suppress(Exception):
            if self._playwright is not None:
                await self._playwright.stop()


def _dashboard_figures(read: dict[str, Any]) -> dict[str, Any]:
    stats = read["stats"]
    out: dict[str, Any] = {}
    for key, value in stats.items():
        try:
            out[key] = float(value) if key == "energy_today_kwh" else int(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def _number(text: str | None) -> float | None:
    """``"7.30 kW"`` -> 7.3; ``"last session 1.20 kWh"`` -> 1.2; ``"—"`` -> None."""
    if not text:
        return None
    match = re.search(r"-?\d+(?:\.\d+)?", text)
    return float(match.group()) if match else None


# the comparison -------------------------------------------------------------------------------


def sim_energy_today_kwh(snapshot: dict[str, Any], today: str) -> float:
    """What the dashboard's "kWh today" should say: sessions the CSMS knows as stopped that
    started (by the charge point's clock, UTC) today."""
    return (
        sum(
            record["energy_wh"]
            for record in snapshot["sessions"]["stopped_list"]
            if record["started_at"][:10] == today
        )
        / 1000.0
    )


def _db(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    connection.row_factory = sqlite3.Row
    return connection


def database_view(path: Path) -> dict[str, Any]:
    """Everything the comparison needs from the database, in one read transaction."""
    with contextlib.closing(_db(path)) as db:
        db.execute("BEGIN")
        q = db.execute
        transactions = {
            int(r["id"]): dict(r)
            for r in q(
                "SELECT t.*, c.identity FROM transactions t"
                " JOIN charge_points c ON c.id = t.charge_point_id"
            )
        }
        registers = {
            int(r["transaction_id"]): r["register"]
            for r in q(
                "SELECT transaction_id, max(value) AS register FROM meter_values"
                " WHERE measurand = 'Energy.Active.Import.Register' AND phase IS NULL"
                " AND location = 'Outlet' AND transaction_id IS NOT NULL GROUP BY transaction_id"
            )
        }
        charge_points = {
            r["identity"]: dict(r)
            for r in q("SELECT id, identity, connected, status FROM charge_points")
        }
        connectors = {
            (r["identity"], int(r["connector_id"])): r["status"]
            for r in q(
                "SELECT c.identity, k.connector_id, k.status FROM connectors k"
                " JOIN charge_points c ON c.id = k.charge_point_id"
            )
        }
        meter_values = q("SELECT count(*) FROM meter_values").fetchone()[0]
        db.execute("COMMIT")
    return {
        "transactions": transactions,
        "registers": registers,
        "charge_points": charge_points,
        "connectors": connectors,
        "meter_values": int(meter_values),
    }


def compare_settled(
    result: Result,
    snapshot: dict[str, Any],
    api_stats: dict[str, Any],
    api_sessions: dict[str, int],
    db: dict[str, Any],
    dashboard: dict[str, Any] | None,
    fresh: dict[str, Any] | None,
    today: str,
) -> None:
    """The fleet holds still: every figure must agree exactly (energy to the dashboard's two
    decimals)."""
    figures = snapshot["figures"]
    board = _dashboard_figures(dashboard) if dashboard else {}
    fresh_board = _dashboard_figures(fresh) if fresh else {}
    tx = db["transactions"]
    db_figures = {
        "total": len(db["charge_points"]),
        "connected": sum(bool(cp["connected"]) for cp in db["charge_points"].values()),
        "available": sum(
            bool(cp["connected"]) and cp["status"] == "Available"
            for cp in db["charge_points"].values()
        ),
        "charging": len(
            {
                identity
                for (identity, _c), status in db["connectors"].items()
                if status == "Charging"
            }
        ),
        "active_sessions": sum(t["stopped_at"] is None for t in tx.values()),
    }
    labels = {
        "total": "charge points",
        "connected": "connected",
        "available": "available",
        "charging": "charging (a connector Charging)",
        "active_sessions": "active sessions",
    }
    for key, label in labels.items():
        result.add(
            f"dashboard figure: {label}",
            figures[key],
            api=api_stats[key],
            dashboard=board.get(key, "") if dashboard else "",
            database=db_figures[key],
        )
        if fresh:
            result.add(
                f"dashboard figure after reload: {label}",
                figures[key],
                dashboard=fresh_board.get(key),
            )
    # kWh today: sessions stopped, started today; the dashboard shows two decimals.
    energy_today = sim_energy_today_kwh(snapshot, today)
    db_today = (
        sum(
            t["energy_wh"] or 0.0
            for t in tx.values()
            if t["stopped_at"] is not None and str(t["started_at"])[:10] == today
        )
        / 1000.0
    )
    shown = board.get("energy_today_kwh") if dashboard else None
    result.add(
        "kWh today (stopped sessions started today)",
        round(energy_today, 3),
        api=round(api_stats["energy_today_kwh"], 3),
        dashboard=f"{shown:.2f}" if shown is not None else "",
        database=round(db_today, 3),
        ok=abs(api_stats["energy_today_kwh"] - energy_today) < 1e-6
        and abs(db_today - energy_today) < 1e-6
        and (shown is None or abs(shown - energy_today) <= 0.0051),
    )

    sessions = snapshot["sessions"]
    result.add(
        "sessions started (acknowledged)",
        sessions["started"],
        api=api_sessions["active"] + api_sessions["completed"],
        database=len(tx),
    )
    result.add(
        "sessions stopped (acknowledged)",
        sessions["stopped"],
        api=api_sessions["completed"],
        database=sum(t["stopped_at"] is not None for t in tx.values()),
    )

    # Every stopped session, field by field.
    bad: list[str] = []
    for record in sessions["stopped_list"]:
        row = tx.get(record["transaction_id"])
        if row is None:
            bad.append(f"{record['transaction_id']}: missing")
            continue
        expected = {
            "identity": record["charge_point"],
            "connector_id": record["connector_id"],
            "id_tag": record["id_tag"],
            "meter_start": record["meter_start"],
            "meter_stop": record["meter_stop"],
            "stop_reason": record["stop_reason"],
            "started_at_raw": record["started_at"],
            "stopped_at_raw": record["stopped_at"],
        }
        for key, value in expected.items():
            if row[key] != value:
                bad.append(f"{record['transaction_id']}.{key}: sim {value!r} db {row[key]!r}")
        if row["energy_wh"] is None or abs(row["energy_wh"] - record["energy_wh"]) > 1e-6:
            bad.append(f"{record['transaction_id']}.energy_wh: {record['energy_wh']} vs {row}")
    result.add(
        "stopped sessions identical (cp, connector, tag, meters, reason, times, energy)",
        sessions["stopped"],
        database=sessions["stopped"] - len({b.split(":")[0].split(".")[0] for b in bad}),
        note="; ".join(bad[:5]),
    )

    # Every active session: open in the database, and its last energy register reading.
    active = [
        (identity, s)
        for identity, state in snapshot["charge_point_state"].items()
        for s in state["sessions"]
    ]
    bad = []
    for identity, s in active:
        row = tx.get(s["transaction_id"])
        if row is None or row["stopped_at"] is not None or row["identity"] != identity:
            bad.append(f"{s['transaction_id']}: {'missing' if row is None else 'not open'}")
            continue
        if row["meter_start"] != s["meter_start"] or row["id_tag"] != s["id_tag"]:
            bad.append(f"{s['transaction_id']}: start differs")
        register = db["registers"].get(s["transaction_id"])
        if s["last_register"] is not None and register != s["last_register"]:
            bad.append(f"{s['transaction_id']}: register sim {s['last_register']} db {register}")
    db_open = {i for i, t in tx.items() if t["stopped_at"] is None}
    extra = db_open - {s["transaction_id"] for _i, s in active}
    if extra:
        bad.append(f"open in the database only: {sorted(extra)[:5]}")
    result.add(
        "active sessions identical (open, meter start, last register)",
        len(active),
        database=len(db_open),
        ok=not bad and len(active) == len(db_open),
        note="; ".join(bad[:5]),
    )

    # Energy: the simulator's meters moved by exactly what the sessions account for.
    sim_energy = sum(state["energy_wh"] for state in snapshot["charge_point_state"].values())
    db_energy = 0.0
    for t in tx.values():
        if t["stopped_at"] is not None:
            db_energy += t["energy_wh"] or 0.0
        else:
            register = db["registers"].get(int(t["id"]))
            db_energy += (register - t["meter_start"]) if register is not None else 0.0
    result.add(
        "energy delivered, Wh (sim meters; db: register difference per transaction)",
        sim_energy,
        database=round(db_energy, 3),
        ok=abs(sim_energy - db_energy) < 1e-6,
    )
    result.add(
        "meter values stored (sampled values acknowledged)",
        snapshot["sampled_values_stored"],
        database=db["meter_values"],
    )

    # Per charge point: connected, connector statuses.
    bad = []
    for identity, state in snapshot["charge_point_state"].items():
        cp = db["charge_points"].get(identity)
        if cp is None:
            bad.append(f"{identity}: missing")
            continue
        if bool(cp["connected"]) != state["online"]:
            bad.append(f"{identity}: connected db {bool(cp['connected'])}")
        for cid, connector in state["connectors"].items():
            status = db["connectors"].get((identity, int(cid)))
            if status != connector["status"]:
                bad.append(f"{identity}/{cid}: sim {connector['status']} db {status}")
    result.add(
        "charge points identical (connected, every connector's status)",
        len(snapshot["charge_point_state"]),
        database=len(snapshot["charge_point_state"]) - len({b.split(":")[0] for b in bad}),
        note="; ".join(bad[:5]),
    )

    if dashboard:
        _compare_cards(result, snapshot, dashboard, "live since the start")
    if fresh:
        _compare_cards(result, snapshot, fresh, "freshly loaded", power=False)


def _compare_cards(
    result: Result, snapshot: dict[str, Any], read: dict[str, Any], how: str, power: bool = True
) -> None:
    """Each card of the dashboard's first page against that charge point's state."""
    states = snapshot["charge_point_state"]
    bad: list[str] = []
    for identity, card in read["cards"].items():
        state = states.get(identity)
        if state is None:
            bad.append(f"{identity}: not simulated")
            continue
        if card["online"] != ("Online" if state["online"] else "Offline"):
            bad.append(f"{identity}: {card['online']}")
        if card["status"] != "Available":
            bad.append(f"{identity}: status {card['status']}")
        for cid, text in card["connectors"].items():
            expected = state["connectors"].get(cid, {}).get("status")
            if text != expected:
                bad.append(f"{identity}/{cid}: {text} (sim {expected})")
        sessions = {str(s["transaction_id"]): s for s in state["sessions"]}
        if not sessions:
            if card["session"] is not None:
                bad.append(f"{identity}: shows session {card['session']}, sim has none")
            continue
        latest = max(sessions.values(), key=lambda s: (s["started_at"], s["transaction_id"]))
        if card["session"] != str(latest["transaction_id"]):
            bad.append(
                f"{identity}: shows session {card['session']}, latest {latest['transaction_id']}"
            )
            continue
        shown = sessions[card["session"]]
        energy = _number(card["energy"])
        if shown["last_register"] is None:
            expected_energy: float | None = None
        else:
            expected_energy = (shown["last_register"] - shown["meter_start"]) / 1000.0
        if expected_energy is None:
            if energy not in (None, 0.0):
                bad.append(f"{identity}: energy {card['energy']}, no reading yet")
        elif energy is None or abs(energy - expected_energy) > 0.0051:
            bad.append(f"{identity}: energy {card['energy']} (sim {expected_energy:.3f} kWh)")
        if power:
            powers = [s["last_power"] for s in sessions.values() if s["last_power"] is not None]
            shown_power = _number(card["power"])
            if not powers:
                if shown_power not in (None, 0.0):
                    bad.append(f"{identity}: power {card['power']}, no reading yet")
            else:
                expected_kw = sum(powers) / 1000.0
                if shown_power is None or abs(shown_power - expected_kw) > 0.0051:
                    bad.append(f"{identity}: power {card['power']} (sim {expected_kw:.3f} kW)")
    cards = len(read["cards"])
    result.add(
        f"dashboard cards ({how}): status, connectors, session, energy"
        + (", power" if power else ""),
        cards,
        dashboard=cards - len({b.split(":")[0].split("/")[0] for b in bad}),
        note="; ".join(bad[:5]),
    )


def parse_metrics(text: str) -> dict[str, Counter[str]]:
    """``chargegrid_ocpp_messages_received_total`` by result, then action."""
    out: dict[str, Counter[str]] = {}
    pattern = re.compile(
        r'^chargegrid_ocpp_messages_received_total\{action="([^"]+)",result="([^"]+)"\} (\S+)$'
    )
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            action, outcome, value = match.groups()
            out.setdefault(outcome, Counter())[action] += int(float(value))
    return out


def compare_messages(result: Result, summary: dict[str, Any], metrics: str) -> None:
    """Every CALL the simulator sent and got answered was answered OK by the server once
    (a CALL whose answer was lost may have been handled too: it is replayed, so the server may
    count it twice)."""
    counts = parse_metrics(metrics)
    ok = counts.pop("ok", Counter())
    messages = summary["messages"]
    lost = summary.get("lost_ack_actions", {})
    bad = []
    for action in sorted(set(messages["sent"]) | set(ok)):
        answered = messages["answered"].get(action, 0)
        most = messages["sent"].get(action, 0) + lost.get(action, 0)
        if not answered <= ok.get(action, 0) <= most:
            bad.append(
                f"{action}: server {ok.get(action, 0)}, sim answered {answered}, sent {most}"
            )
    failed = sum(sum(c.values()) for c in counts.values())
    result.add(
        "CALLs answered (server CALLRESULTs by action within sim answered..sent+lost)",
        sum(messages["answered"].values()),
        api=sum(ok.values()),
        ok=not bad,
        note="; ".join(bad[:5]) + ("; metrics: /metrics" if bad else ""),
    )
    result.add(
        "CALLERRORs sent by the server",
        sum(summary["errors"]["call_errors"].values()),
        api=failed,
        ok=failed == 0,
        note=", ".join(f"{k}: {dict(v)}" for k, v in counts.items())[:300],
    )


# live events ------------------------------------------------------------------------------------


class LiveListener:
    """An application on ``/api/v1/live`` subscribed to the fleet's session events: each
    session must be announced once when it starts and once when it stops, naming its charge
    point."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.started: Counter[int] = Counter()
        self.stopped: Counter[int] = Counter()
        self.anonymous = 0  # envelopes without charge_point
        self.subscribed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        import websockets

        async with websockets.connect(self.url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "fleet": True, "topics": ["sessions"]}))
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") == "subscribed":
                    self.subscribed.set()
                if message.get("type") != "event" or message.get("topic") != "sessions":
                    continue
                data = message["data"]
                if not message.get("charge_point"):
                    self.anonymous += 1
                session_id = int(data["session"]["id"])
                (self.started if data["event"] == "started" else self.stopped)[session_id] += 1

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


def compare_live(result: Result, snapshot: dict[str, Any], live: LiveListener) -> None:
    sessions = snapshot["sessions"]
    twice = [k for k, v in (live.started + live.stopped).items() if v > 2] + [
        k for k, v in live.started.items() if v > 1
    ]
    result.add(
        "live events: sessions started (fleet stream, each once)",
        sessions["started"],
        api=sum(live.started.values()),
        ok=sum(live.started.values()) == sessions["started"] and not twice,
        note=f"repeated: {sorted(set(twice))[:5]}" if twice else "",
    )
    result.add(
        "live events: sessions stopped (fleet stream, each once)",
        sessions["stopped"],
        api=sum(live.stopped.values()),
        ok=sum(live.stopped.values()) == sessions["stopped"]
        and all(v == 1 for v in live.stopped.values()),
    )
    result.add(
        "live events: session events naming their charge point",
        sum(live.started.values()) + sum(live.stopped.values()),
        api=sum(live.started.values()) + sum(live.stopped.values()) - live.anonymous,
        note="the fleet envelope's charge_point is null" if live.anonymous else "",
    )


# REST commands ----------------------------------------------------------------------------------


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120.0
        )

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params)
        response.raise_for_status()
        return response.json()

    async def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = await self.get("/api/v1/stats")
        return data

    async def sessions_total(self, status: str) -> int:
        return int((await self.get("/api/v1/sessions", status=status, limit=1))["total"])

    async def command(self, identity: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        response = await self.client.post(
            f"/api/v1/charge-points/{identity}/{path}", params={"wait": "true"}, json=body
        )
        entry: dict[str, Any] = {
            "charge_point": identity,
            "command": path.removeprefix("commands/"),
            "request": body,
            "http": response.status_code,
            "seconds": round(time.monotonic() - started, 3),
        }
        try:
            data = response.json()
        except ValueError:
            data = {"detail": response.text[:200]}
        entry["status"] = data.get("status") if response.is_success else None
        entry["response"] = data.get("response") if response.is_success else data.get("detail")
        return entry

    async def close(self) -> None:
        await self.client.aclose()


async def send_commands(api: Api, round_: int) -> list[dict[str, Any]]:
    """Remote stop and start, trigger messages, get and change configuration, on charge points
    picked from what the API shows now."""
    done: list[dict[str, Any]] = []
    active = (await api.get("/api/v1/sessions", status="active", limit=50))["items"]
    charging = [s for s in active if s["charge_point"]]
    if charging:
        session = charging[(round_ * 7) % len(charging)]
        entry = await api.command(session["charge_point"], "stop", {"session_id": session["id"]})
        entry["session"] = session["id"]
        done.append(entry)
    # A remote start on an Available connector of a connected charge point.
    page = (await api.get("/api/v1/charge-points", available=True, limit=50))["items"]
    for cp in page[round_ * 3 :] + page[: round_ * 3]:
        detail = await api.get(f"/api/v1/charge-points/{cp['identity']}")
        free = [
            c["connector_id"]
            for c in detail["connectors"]
            if c["connector_id"] > 0 and c["status"] == "Available"
        ]
        if free:
            entry = await api.command(
                cp["identity"],
                "start",
                {"connector_id": free[0], "id_tag": REMOTE_TAGS[round_ % len(REMOTE_TAGS)]},
            )
            done.append(entry)
            break
    connected = (await api.get("/api/v1/charge-points", connected=True, limit=50))["items"]
    if connected:
        pick = [connected[(round_ * 5 + n) % len(connected)]["identity"] for n in range(4)]
        if charging:
            session = charging[(round_ * 7 + 3) % len(charging)]
            done.append(
                await api.command(
                    session["charge_point"],
                    "commands/trigger-message",
                    {"requestedMessage": "MeterValues", "connectorId": session["connector_id"]},
                )
            )
        done.append(
            await api.command(
                pick[0], "commands/trigger-message", {"requestedMessage": "StatusNotification"}
            )
        )
        done.append(
            await api.command(
                pick[1], "commands/trigger-message", {"requestedMessage": "Heartbeat"}
            )
        )
        entry = await api.command(pick[2], "commands/get-configuration", {})
        if entry["status"] in ANSWERED:
            stored = await api.get(f"/api/v1/charge-points/{pick[2]}/configuration")
            entry["keys_stored"] = len(stored)
        done.append(entry)
        done.append(
            await api.command(
                pick[3],
                "commands/change-configuration",
                {"key": "HeartbeatInterval", "value": "300"},
            )
        )
    return done


# the run ------------------------------------------------------------------------------------------


def _id_tags(count: int) -> list[str]:
    """One tag per connector: the simulator gives connector c of charge point i the tag
    ``tags[(4 i + c) % len(tags)]``."""
    return [f"SIMT{n:06d}" for n in range(4 * count + 4)]


async def _wait_ready(base: str, process: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if process.returncode is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            try:
                if (await client.get(base + "/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not become ready in 60 s")


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def _server(
    env: dict[str, str], log: Path, port: int
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``chargegrid serve`` on ``port`` (0: a free one, another if it is taken meanwhile)."""
    for attempt in range(1, 6):
        chosen = port or _free_port()
        with log.open("ab") as output:
            process = await asyncio.create_subprocess_exec(
                str(BIN / "chargegrid"),
                "serve",
                env={**env, "CHARGEGRID_PORT": str(chosen)},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            await _wait_ready(f"http://127.0.0.1:{chosen}", process)
            break
        except RuntimeError:
            await _stop(process)
            text = await asyncio.to_thread(log.read_text, errors="replace")
            if port or attempt == 5 or "address already in use" not in text:
                raise
            await asyncio.to_thread(log.rename, log.with_name(f"server-taken-port-{attempt}.log"))
    try:
        yield process, chosen
    finally:
        await _stop(process)


def _scan_log(log: Path) -> tuple[list[str], list[str]]:
    problems, warnings = [], []
    for line in log.read_text(errors="replace").splitlines():
        if LOG_PROBLEM.search(line):
            problems.append(line.strip())
        elif LOG_WARNING.search(line):
            warnings.append(line.strip())
    return problems, warnings


async def run_check(options: CheckOptions, say: Callable[[str], None] = print) -> Result:
    result = Result(options={k: str(v) for k, v in asdict(options).items()})
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="fleet-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    try:
        await _run(options, result, workdir, say)
    finally:
        result.runtime_s = round(time.monotonic() - began, 1)
        if options.workdir is None and not options.keep and result.ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"files kept in {workdir}")
    return result


async def _run(
    options: CheckOptions, result: Result, workdir: Path, say: Callable[[str], None]
) -> None:
    count = options.charge_points
    database = workdir / "fleet-check.db"
    log = workdir / "server.log"
    env = _clean_env(
        {
            "CHARGEGRID_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "CHARGEGRID_HOST": "127.0.0.1",
            "CHARGEGRID_LOG_LEVEL": "info",
            **options.server_env,
        }
    )
    identities = [f"{PREFIX}{n:0{max(5, len(str(count)))}d}" for n in range(1, count + 1)]
    fleet_csv = workdir / "fleet.csv"
    fleet_csv.write_text(
        "identity,auth_key,security_profile\n" + "".join(f"{i},,0\n" for i in identities)
    )
    say(f"provisioning {count} charge points, a user and a token into {database}")
    _cli(env, "charge-points", "import", str(fleet_csv))
    _cli(env, "users", "add", USER, "--role", "admin", "--password", PASSWORD)
    token = _cli(env, "users", "token", USER).splitlines()[-1].strip()
    tags = _id_tags(count)

    async with _server(env, log, options.port) as (server, port):
        base, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ocpp"
        api = Api(base, token)
        dashboard: Dashboard | None = None
        listener: LiveListener | None = None
        worker_process: asyncio.subprocess.Process | None = None
        meters = [ProcessMeter(server.pid)]
        metering = asyncio.create_task(_meter_loop(meters))
        try:
            response = await api.client.post(
                "/api/v1/id-tags/import",
                content="id_tag,status\n"
                + "".join(f"{t},Accepted\n" for t in tags + list(REMOTE_TAGS)),
                headers={"Content-Type": "text/csv"},
            )
            response.raise_for_status()
            listener = LiveListener(f"ws://127.0.0.1:{port}/api/v1/live?token={token}")
            await asyncio.wait_for(listener.subscribed.wait(), 30)
            if options.browser:
                if _have_chromium():
                    dashboard = Dashboard(base)
                    await dashboard.open()
                    say("dashboard open in headless Chromium")
                else:
                    result.problems.append(f"no Chromium at {CHROMIUM} (use --no-browser)")
                    return
            config = {
                "count": count,
                "duration": options.duration,
                "ramp": options.ramp if options.ramp is not None else min(count / 100, 30.0),
                "settle_timeout": options.settle_timeout,
                "sim": {
                    "url": ws,
                    "id_prefix": PREFIX,
                    "id_tags": tags,
                    "seed": options.seed,
                    **options.sim,
                },
            }
            (workdir / "worker.json").write_text(json.dumps(config))
            with (workdir / "simulator.log").open("ab") as sim_log:
                worker_process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--worker",
                    str(workdir / "worker.json"),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=sim_log,
                    limit=256 * 2**20,
                )
            worker = Worker(worker_process)
            meters.append(ProcessMeter(worker_process.pid))
            await worker.receive("started", 60)
            started = time.monotonic()
            say(f"simulating {count} charge points for {options.duration:.0f} s against {ws}")
            await _during_run(options, result, worker, api, dashboard, meters, started, say)

            settled = await worker.receive(
                "settled", options.duration + options.settle_timeout + 120
            )
            say(
                f"fleet holding still (settled: {settled['settled']}) after "
                f"{time.monotonic() - started:.0f} s; comparing"
            )
            if not settled["settled"]:
                unsettled = [
                    identity
                    for identity, state in settled["charge_point_state"].items()
                    if not state["settled"]
                ]
                result.problems.append(
                    f"{len(unsettled)} charge points did not settle: {unsettled[:10]}"
                )
            await _compare_at_rest(result, settled, api, dashboard, database, say)
            compare_live(result, settled, listener)

            await worker.send("finish")
            summary = await worker.receive("summary", 120)
            await asyncio.wait_for(worker_process.wait(), 60)
            result.summary = {k: v for k, v in summary.items() if k != "energy_wh"}
            await _compare_after(result, summary, api, base, database, say)
        finally:
            metering.cancel()
            result.resources = {
                "server": meters[0].report(),
                **({"simulator": meters[1].report()} if len(meters) > 1 else {}),
            }
            if worker_process is not None and worker_process.returncode is None:
                worker_process.kill()
                await worker_process.wait()
            if listener is not None:
                await listener.close()
            if dashboard is not None:
                result.problems.extend(f"dashboard script error: {e}" for e in dashboard.errors)
                await dashboard.close()
            await api.close()
    problems, warnings = _scan_log(log)
    result.add(
        "server log: ERROR / CRITICAL / Traceback lines",
        0,
        api=len(problems),
        ok=not problems,
        note=" | ".join(problems[:3])[:400],
    )
    result.add(
        "server log: WARNING lines (not a failure)",
        "",
        api=len(warnings),
        ok=True,
        note=" | ".join(warnings[:2])[:300],
    )


async def _during_run(
    options: CheckOptions,
    result: Result,
    worker: Worker,
    api: Api,
    dashboard: Dashboard | None,
    meters: list[ProcessMeter],
    started: float,
    say: Callable[[str], None],
) -> None:
    """Samples (simulator, API, dashboard) and the REST command rounds while the fleet runs."""
    duration = options.duration
    sample_at = [duration * (n + 1) / (options.samples + 1) for n in range(options.samples)]
    command_at = [duration * 0.35, duration * 0.7] if options.commands else []
    events = sorted([(t, "sample") for t in sample_at] + [(t, "commands") for t in command_at])
    for round_, (at, kind) in enumerate(events):
        delay = started + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if kind == "commands":
            entries = await send_commands(api, round_)
            result.commands.extend(entries)
            say(
                "commands: "
                + ", ".join(
                    f"{e['command']} {e['charge_point']}: {e['status'] or e['http']}"
                    for e in entries
                )
            )
            continue
        t0 = time.monotonic()
        sim = await worker.figures()
        t1 = time.monotonic()
        stats = await api.stats()
        t2 = time.monotonic()
        board = _dashboard_figures(await dashboard.read()) if dashboard else {}
        took = f"{t1 - t0:.1f}/{t2 - t1:.1f}/{time.monotonic() - t2:.1f}"
        sample = {
            "t": round(time.monotonic() - started, 1),
            "simulator": sim["figures"],
            "api": stats,
            "dashboard": board,
            "messages": sim["messages"],
            "errors": sim["errors"],
            "rss_mib": [round(meter.rss() / 2**20, 1) for meter in meters],  # server, simulator
        }
        result.samples.append(sample)
        say(
            f"{sample['t']:6.0f}s  sim {_brief(sim['figures'])} | api {_brief(stats)} | "
            f"dashboard {_brief(board) if board else '-'} | {sim['messages']} messages, "
            f"{sim['errors']} errors, server RSS {sample['rss_mib'][0]:.0f} MiB (read in {took} s)"
        )


def _nonempty(data: dict[str, Any]) -> str:
    return json.dumps(data)[:300] if data else ""


def _brief(figures: dict[str, Any]) -> str:
    return "/".join(str(figures.get(k, "?")) for k in ("connected", "charging", "active_sessions"))


async def _compare_at_rest(
    result: Result,
    snapshot: dict[str, Any],
    api: Api,
    dashboard: Dashboard | None,
    database: Path,
    say: Callable[[str], None],
) -> None:
    figures = snapshot["figures"]
    # The server publishes the fleet figures every couple of seconds; wait until the API and the
    # dashboard have caught up with the fleet (or give up after a minute and report).
    deadline = time.monotonic() + 60
    while True:
        stats = await api.stats()
        board = _dashboard_figures(await dashboard.read()) if dashboard else None
        caught_up = all(stats[k] == figures[k] for k in figures) and (
            board is None or all(board.get(k) == stats[k] for k in figures)
        )
        if caught_up or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    await asyncio.sleep(3.0)  # the last live meter values and card updates
    live = await dashboard.read() if dashboard else None
    fresh = None
    if dashboard is not None:
        page = await dashboard.new_page("/")
        fresh = await dashboard.read(page)
        await page.context.close()
    stats = await api.stats()
    api_sessions = {
        "active": await api.sessions_total("active"),
        "completed": await api.sessions_total("completed"),
    }
    db = await asyncio.to_thread(database_view, database)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    compare_settled(result, snapshot, stats, api_sessions, db, live, fresh, today)
    errors = snapshot["errors"]
    result.add(
        "simulator errors (CALLERROR, timeout, refused connection, stray frame)",
        errors["total"],
        ok=errors["total"] == 0,
        note=_nonempty({k: v for k, v in errors.items() if v and k != "total"}),
    )
    if result.commands:
        _compare_commands(result, snapshot, db)


def _compare_commands(result: Result, snapshot: dict[str, Any], db: dict[str, Any]) -> None:
    sent: Counter[str] = Counter()
    bad = []
    for entry in result.commands:
        action = OCPP_ACTION[entry["command"]]
        if entry["status"] in ANSWERED:
            sent[action] += 1
        elif entry["http"] == 409:
            continue  # the charge point went offline (an outage) between the list and the command
        else:
            bad.append(
                f"{entry['command']} {entry['charge_point']}: {entry['http']} {entry['status']}"
            )
        if entry["command"] == "stop" and entry["status"] == "accepted":
            row = db["transactions"].get(entry["session"])
            if row is None or row["stop_reason"] != "Remote":
                bad.append(
                    f"session {entry['session']} not stopped Remote: {row and row['stop_reason']}"
                )
        if entry["command"] == "start" and entry["status"] == "accepted":
            tag = entry["request"]["id_tag"]
            if not any(
                t["id_tag"] == tag and t["identity"] == entry["charge_point"]
                for t in db["transactions"].values()
            ):
                bad.append(f"no session for remote start {entry['charge_point']} {tag}")
        if (
            entry["command"] == "get-configuration"
            and entry["status"] in ANSWERED
            and not entry.get("keys_stored")
        ):
            bad.append("GetConfiguration answered but nothing stored")
    received = snapshot["messages"]["received"]
    got = Counter({a: received.get(a, 0) for a in sent})
    result.add(
        "REST commands answered by the simulated charge points",
        sum(got.values()),
        api=sum(sent.values()),
        ok=not bad and got == sent,
        note="; ".join(bad[:4]) or ", ".join(f"{a} {n}" for a, n in sorted(sent.items())),
    )


async def _compare_after(
    result: Result,
    summary: dict[str, Any],
    api: Api,
    base: str,
    database: Path,
    say: Callable[[str], None],
) -> None:
    """After the fleet closed: the server saw every disconnect, counted every message."""
    deadline = time.monotonic() + 30
    while (stats := await api.stats())["connected"] and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    result.add("connected after the fleet closed", 0, api=stats["connected"])
    metrics = (await api.client.get(base + "/metrics")).text
    compare_messages(result, summary, metrics)
    result.add(
        "simulator errors over the whole run (exit status of the simulator)",
        summary["errors"]["total"],
        ok=summary["errors"]["total"] == 0,
        note=_nonempty({k: v for k, v in summary["errors"].items() if v and k != "total"}),
    )
    result.add(
        "messages left undelivered by the simulator",
        sum(summary["undelivered"].values()),
        ok=not summary["undelivered"],
    )


# output -----------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_table(result: Result) -> str:
    header = ("", "check", "simulator", "server", "dashboard", "database")
    rows = [
        (
            "ok" if row.ok else "FAIL",
            row.check,
            _cell(row.simulator),
            _cell(row.api),
            _cell(row.dashboard),
            _cell(row.database),
        )
        for row in result.rows
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row, source in zip(rows, result.rows, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if source.note:
            lines.append(f"      {source.note}")
    return "\n".join(lines)


def format_report(result: Result) -> str:
    out = [format_table(result), ""]
    summary = result.summary
    if summary:
        sessions = summary["sessions"]
        out.append(
            f"simulator: {summary['charge_points']} charge points, {summary['duration_s']:.0f} s, "
            f"{summary['messages']['total']:,} messages ({summary['messages_per_second']}/s), "
            f"sessions {sessions['started']} started / {sessions['stopped']} stopped, "
            f"energy {summary['energy_total_wh'] / 1000:,.1f} kWh, "
            f"{summary['offline_periods']} outages ({summary['lost_acks']} answers lost, "
            f"{summary['replayed']} replayed), {summary['faults']} faults, "
            f"{summary['connects']} connects"
        )
    if result.commands:
        out.append(
            "commands: "
            + "; ".join(
                f"{c['command']} {c['charge_point']} -> {c['status'] or c['http']} "
                f"({c['seconds']} s)"
                for c in result.commands
            )
        )
    for name, figures in result.resources.items():
        out.append(
            f"{name}: CPU {figures['cpu_seconds']} s (avg {figures['cpu_avg_percent']} %, "
            f"peak {figures['cpu_peak_percent']} % of a core), RSS peak "
            f"{figures['rss_peak_mib']} MiB"
        )
    out.append(f"runtime {result.runtime_s:.0f} s")
    for problem in result.problems:
        out.append(f"PROBLEM: {problem}")
    out.append("RESULT: " + ("all checks passed" if result.ok else "MISMATCH OR ERROR"))
    return "\n".join(out)


# the simulator process ------------------------------------------------------------------------


async def _worker(config_path: Path) -> None:
    from chargegrid.simulator import Fleet, SimConfig

    config = json.loads(await asyncio.to_thread(config_path.read_text))
    sim = dict(config["sim"])
    sim["id_tags"] = tuple(sim["id_tags"])
    fleet = Fleet(SimConfig(**sim), int(config["count"]))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def emit(kind: str, data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps({"type": kind, **data}) + "\n")
        sys.stdout.flush()

    async def commands() -> None:
        while line := await reader.readline():
            command = line.decode().strip()
            if command == "figures":
                emit(
                    "figures",
                    {
                        "figures": fleet.figures(),
                        "messages": fleet.stats.messages,
                        "errors": fleet.stats.errors,
                    },
                )
            elif command == "finish":
                break
        fleet.stop()  # finished, or the parent went away

    run = asyncio.create_task(
        fleet.run(float(config["duration"]), ramp=float(config["ramp"]), hold=True)
    )
    listener = asyncio.create_task(commands())
    emit("started", {})
    await asyncio.sleep(float(config["duration"]))
    settled = await fleet.wait_settled(float(config["settle_timeout"]))
    emit("settled", {**fleet.snapshot(), "settled": settled})
    summary = await run
    listener.cancel()
    emit("summary", summary)


def _sim_value(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--charge-points", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", type=float, default=None, help="simulated seconds per second")
    parser.add_argument(
        "--sim",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a SimConfig field, e.g. --sim offline_rate=3 (repeatable)",
    )
    parser.add_argument("--ramp", type=float, default=None, help="seconds to connect the fleet")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--no-browser", action="store_true", help="skip the dashboard")
    parser.add_argument("--no-commands", action="store_true", help="send no REST commands")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover
            pass
        asyncio.run(_worker(args.worker))
        return 0
    options = CheckOptions(
        charge_points=args.charge_points,
        duration=args.duration,
        seed=args.seed,
        sim={
            **({"speed": args.speed} if args.speed else {}),
            **{k: _sim_value(v) for k, _, v in (item.partition("=") for item in args.sim)},
        },
        ramp=args.ramp,
        port=args.port,
        workdir=args.workdir,
        keep=args.keep,
        browser=not args.no_browser,
        commands=not args.no_commands,
    )
    result = asyncio.run(run_check(options, say=lambda line: print(line, flush=True)))
    print()
    print(format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2, default=str) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
