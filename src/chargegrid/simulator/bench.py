"""``chargegrid bench``: start each server pinned to one core, load it from another, compare.

Targets: ``chargegrid`` (``chargegrid serve``, SQLite, settings as shipped), the peers in
``benchmarks/peers`` (``ocpp-lib``: a central system on the ``ocpp`` library; ``ocpp-rpc``: the
Node server from npm; ``echo``: a bare websockets+uvloop+orjson answerer, the ceiling). Every
scenario is repeated and reported as the median; every figure carries the load generator's CPU
so it is visible when the load generator, not the server, was the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chargegrid.simulator import loadgen

__all__ = ["BenchOptions", "run_bench", "write_reports"]

TARGETS = ("chargegrid", "ocpp-lib", "ocpp-rpc", "echo", "uvicorn-echo", "picows-echo")
SCENARIOS = ("throughput", "latency", "idle", "storm", "commands")
LOCAL_ADDRESSES = tuple(f"127.0.0.{n}" for n in range(1, 9))


@dataclass
class BenchOptions:
    targets: tuple[str, ...] = TARGETS
    scenarios: tuple[str, ...] = SCENARIOS
    sizes: tuple[int, ...] = (50, 500)
    sampled: tuple[int, ...] = (3, 10)
    repeats: int = 3
    warmup: float = 2.0
    duration: float = 10.0
    paced_rate: float = 5000.0  # the "p99 at 5,000 round trips/s" figure (500 CPs, paced)
    idle: int = 20_000
    storm: int = 5_000
    commands: int = 100
    peers_dir: Path = Path("benchmarks/peers")
    out_dir: Path = Path("benchmarks/results")
    base_port: int = 18300
    server_core: int = 0
    loadgen_core: int = 1
    notes: list[str] = field(default_factory=list)


# processes ----------------------------------------------------------------------


SERVER_FD_MARGIN = 100  # descriptors a server keeps beside its sockets (listener, database, …)


def _raise_fd_limit(wanted: int = 0) -> None:
    """Children and this process may hold tens of thousands of sockets: raise the hard limit
    to ``wanted`` where allowed (root with CAP_SYS_RESOURCE), then the soft one to the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _executable(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment minus every CHARGEGRID_* setting: the server runs as shipped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEGRID_")}
    env.update(extra)
    return env


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


@contextlib.contextmanager
def server_process(
    command: list[str],
    port: int,
    log: Path,
    env: dict[str, str],
    core: int | None,
    fds: int = 0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server pinned to ``core`` (``taskset``) until the block ends (SIGINT, then kill),
    with its fd limit raised towards ``fds``."""
    if core is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(core), *command]
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=lambda: _raise_fd_limit(fds),
        )
    try:
        _wait_port(port, process)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _cli(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [_executable("chargegrid"), *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"chargegrid {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


@dataclass
class Target:
    name: str
    port: int
    command: list[str]
    env: dict[str, str]
    token: str | None = None  # chargegrid only: for the REST/live scenarios


def _targets(options: BenchOptions, workdir: Path) -> list[Target]:
    python = sys.executable
    peers = options.peers_dir
    out: list[Target] = []
    for offset, name in enumerate(options.targets):
        port = options.base_port + offset
        if name == "chargegrid":
            database = workdir / "chargegrid-bench.db"
            env = _clean_env(
                {
                    "CHARGEGRID_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
                    "CHARGEGRID_PORT": str(port),
                    "CHARGEGRID_HOST": "127.0.0.1",
                    "CHARGEGRID_LOG_LEVEL": "warning",
                }
            )
            out.append(Target(name, port, [_executable("chargegrid"), "serve"], env))
        elif name == "ocpp-lib":
            script = str(peers / "ocpp_library_server.py")
            out.append(Target(name, port, [python, script, "--port", str(port)], _clean_env({})))
        elif name == "ocpp-rpc":
            node = shutil.which("node") or "node"
            script = str(peers / "ocpp-rpc" / "server.js")
            out.append(Target(name, port, [node, script, str(port)], _clean_env({})))
        elif name == "echo":
            script = str(peers / "echo_server.py")
            out.append(Target(name, port, [python, script, "--port", str(port)], _clean_env({})))
        elif name == "uvicorn-echo":
            script = str(peers / "uvicorn_echo.py")
            out.append(Target(name, port, [python, script, "--port", str(port)], _clean_env({})))
        elif name == "picows-echo":
            script = str(peers / "picows_echo.py")
            out.append(Target(name, port, [python, script, "--port", str(port)], _clean_env({})))
        else:
            raise ValueError(f"unknown target {name!r}; one of {', '.join(TARGETS)}")
    return out


def _ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n:05d}" for n in range(1, count + 1)]


def _provision(target: Target, options: BenchOptions, idle: int, workdir: Path) -> None:
    """chargegrid refuses unknown charge points: import every identity the scenarios use, and
    make a user and token for the REST and live scenarios (all through the CLI, as an operator
    would)."""
    identities = (
        _ids("TP", max(options.sizes, default=0))
        + _ids("ID", idle)
        + _ids("ST", options.storm)
        + ["CMD00001", "LIVE00001"]
    )
    csv = workdir / "fleet.csv"
    csv.write_text(
        "identity,auth_key,security_profile\n" + "".join(f"{i},,0\n" for i in identities)
    )
    _cli(["charge-points", "import", str(csv)], target.env)
    _cli(["users", "add", "bench", "--role", "admin", "--password", ""], target.env)
    target.token = _cli(["users", "token", "bench"], target.env).splitlines()[-1].strip()


# scenarios ----------------------------------------------------------------------


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field over the runs; the runs themselves are kept too."""
    merged: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers = [run[key] for run in runs if isinstance(run.get(key), int | float)]
            merged[key] = round(statistics.median(numbers), 3) if numbers else None
        else:
            merged[key] = value
    merged["runs"] = runs
    return merged


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


async def _bench_target(
    target: Target,
    process: subprocess.Popen[bytes],
    options: BenchOptions,
    idle: int,
    say: Callable[[str], None],
    scenarios: Collection[str],
) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{target.port}/ocpp"
    http = f"http://127.0.0.1:{target.port}"
    result: dict[str, Any] = {"loadavg_start": _loadavg()}
    pid = process.pid
    if "throughput" in scenarios:
        for size in options.sizes:
            for sampled in options.sampled:
                runs = []
                for repeat in range(options.repeats):
                    run = await loadgen.throughput(
                        url,
                        _ids("TP", size),
                        sampled=sampled,
                        warmup=options.warmup,
                        duration=options.duration,
                        server_pid=pid,
                    )
                    say(
                        f"  {target.name} throughput N={size} sv={sampled} #{repeat + 1}: "
                        f"{run['round_trips_per_s']:,.0f}/s p99 {run['p99_ms']} ms "
                        f"(loadgen cpu {run['loadgen_cpu']:.0%}, "
                        f"server {run.get('server_cpu', 0):.0%})"
                    )
                    runs.append(run)
                result[f"throughput_n{size}_sv{sampled}"] = _median(runs)
    if "latency" in scenarios and options.sizes:
        size = max(options.sizes)
        runs = []
        for _ in range(options.repeats):
            run = await loadgen.throughput(
                url,
                _ids("TP", size),
                sampled=3,
                warmup=options.warmup,
                duration=options.duration,
                server_pid=pid,
                rate=options.paced_rate,
            )
            say(
                f"  {target.name} paced {options.paced_rate:,.0f}/s N={size}: "
                f"{run['round_trips_per_s']:,.0f}/s p99 {run['p99_ms']} ms"
            )
            runs.append(run)
        result[f"paced_{int(options.paced_rate)}_n{size}"] = _median(runs)
    if "storm" in scenarios and options.storm:
        loadavg = _loadavg()
        run = await loadgen.storm(
            url, _ids("ST", options.storm), local_addresses=LOCAL_ADDRESSES, server_pid=pid
        )
        run["loadavg"] = loadavg
        say(
            f"  {target.name} storm {options.storm}: {run['accepted']} accepted, the last after "
            f"{run['all_accepted_s']} s (retries {run['retries'] or 'none'}, load {loadavg})"
        )
        result["storm"] = run
    if "idle" in scenarios and idle:
        loadavg = _loadavg()
        run = await loadgen.idle_connections(
            url, _ids("ID", idle), server_pid=pid, local_addresses=LOCAL_ADDRESSES
        )
        run["loadavg"] = loadavg
        say(
            f"  {target.name} idle: {run['held']}/{idle} held, {run['kib_per_connection']} KiB "
            f"each ({run['kib_per_connection_marginal']} KiB marginal; "
            f"failures {run['connect_failures'] or 'none'}, load {loadavg})"
        )
        result["idle"] = run
    if target.token and "commands" in scenarios and options.commands:
        loadavg = _loadavg()
        run = await loadgen.command_latency(
            url, http, "CMD00001", target.token, count=options.commands
        )
        run["loadavg"] = loadavg
        say(
            f"  {target.name} command latency: p50 {run['p50_ms']} ms p99 {run['p99_ms']} ms "
            f"({run['statuses']}, load {loadavg})"
        )
        result["command_latency"] = run
        loadavg = _loadavg()
        run = await loadgen.fanout_latency(
            url, http, "LIVE00001", target.token, count=options.commands
        )
        run["loadavg"] = loadavg
        say(f"  {target.name} live fan-out: p50 {run['p50_ms']} ms p99 {run['p99_ms']} ms")
        result["fanout_latency"] = run
    result["loadavg_end"] = _loadavg()
    return result


def _machine() -> dict[str, Any]:
    model = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    node = shutil.which("node")
    node_version = (
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        if node
        else None
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node_version,
        "fd_limit": fd_limit(),
    }


def run_bench(options: BenchOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every target and scenario; return the results (also written by ``write_reports``)."""
    # The load generator spreads the idle fleet over processes as its fd limit requires; the
    # server holds every socket in one process, so its limit must exceed the fleet.
    server_fds = options.idle + SERVER_FD_MARGIN
    _raise_fd_limit(max(server_fds, options.storm + SERVER_FD_MARGIN))
    pinned = (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {options.loadgen_core})
    else:
        options.notes.append("one CPU only: server and load generator share it (not pinned)")
    idle = options.idle
    if idle and idle > fd_limit() - SERVER_FD_MARGIN:
        idle = fd_limit() - SERVER_FD_MARGIN
        options.notes.append(
            f"idle connections capped at {idle:,}: a server process may open {fd_limit():,} "
            f"descriptors (hard fd limit, `ulimit -Hn`) and this process cannot raise it (that "
            f"needs root with CAP_SYS_RESOURCE); {SERVER_FD_MARGIN} are left for the server's "
            f"listener, database and logs"
        )
    results: dict[str, Any] = {
        "machine": _machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": _loadavg(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "pinned": {"server_core": options.server_core, "loadgen_core": options.loadgen_core}
        if pinned
        else None,
        "targets": {},
    }
    options.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chargegrid-bench-") as tmp:
        workdir = Path(tmp)
        for target in _targets(options, workdir):
            say(f"{target.name}: starting on port {target.port}")
            if target.name == "chargegrid":
                _provision(target, options, idle, workdir)
            log = options.out_dir / f"server-{target.name}.log"
            log.write_bytes(b"")
            # The idle figure is taken on a freshly started server: one that had held the
            # throughput or storm fleets would reuse their freed memory for the idle one.
            scenarios = [s for s in options.scenarios if s != "idle"]
            phases = [["idle"]] if "idle" in options.scenarios and idle else []
            phases += [scenarios] if scenarios else []
            figures: dict[str, Any] = {}
            try:
                for phase in phases:
                    with server_process(
                        target.command,
                        target.port,
                        log,
                        target.env,
                        options.server_core if pinned else None,
                        fds=server_fds,
                    ) as process:
                        run = asyncio.run(_bench_target(target, process, options, idle, say, phase))
                        run["loadavg_start"] = figures.get("loadavg_start", run["loadavg_start"])
                        figures.update(run)
            except (RuntimeError, OSError) as error:
                say(f"{target.name}: failed: {error}")
                figures["error"] = str(error)
            results["targets"][target.name] = figures
    results["loadavg_end"] = _loadavg()
    results["ratios"] = _ratios(results["targets"])
    results["notes"] = options.notes
    return results


def _ratios(targets: dict[str, Any]) -> dict[str, Any]:
    """chargegrid's figure over each peer's: round trips/s per throughput figure, KiB per idle
    connection, seconds until a storm is accepted."""
    ours = targets.get("chargegrid") or {}
    ratios: dict[str, Any] = {}
    for key, figure in ours.items():
        if not key.startswith("throughput_"):
            continue
        for peer, theirs in targets.items():
            if peer == "chargegrid" or key not in theirs:
                continue
            mine, other = figure.get("round_trips_per_s"), theirs[key].get("round_trips_per_s")
            if mine and other:
                ratios.setdefault(key, {})[peer] = round(mine / other, 2)
    # Memory per idle connection and storm time: chargegrid's over each peer's (< 1: less).
    for key, scenario, field_name in (
        ("idle_kib_per_connection", "idle", "kib_per_connection"),
        ("storm_all_accepted_s", "storm", "all_accepted_s"),
    ):
        mine = (ours.get(scenario) or {}).get(field_name)
        for peer, theirs in targets.items():
            other = (theirs.get(scenario) or {}).get(field_name)
            if peer != "chargegrid" and mine and other:
                ratios.setdefault(key, {})[peer] = round(mine / other, 2)
    return ratios


# reports ----------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables."""
    machine = results["machine"]
    lines = [
        f"Machine: {machine['nproc']} CPUs, {machine['cpu']}, Linux {machine['kernel']}, "
        f"Python {machine['python']}, Node {machine['node']}; load average "
        f"{results['loadavg_start']} at the start, {results['loadavg_end']} at the end.",
        "",
        "| target | figure | round trips/s | p50 ms | p95 ms | p99 ms | server CPU | "
        "load-gen CPU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, target in results["targets"].items():
        for key, figure in target.items():
            if not isinstance(figure, dict) or "round_trips_per_s" not in figure:
                continue
            lines.append(
                f"| {name} | {key} | {figure['round_trips_per_s']:,.0f} | {figure['p50_ms']} | "
                f"{figure['p95_ms']} | {figure['p99_ms']} | {figure.get('server_cpu', 0):.0%} | "
                f"{figure['loadgen_cpu']:.0%} |"
            )
    lines += [
        "",
        "| target | idle held | KiB/connection | marginal KiB | RSS MiB (0 → N) | load avg |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, target in results["targets"].items():
        idle = target.get("idle")
        if idle:
            lines.append(
                f"| {name} | {idle['held']:,}/{idle['requested']:,} | "
                f"{idle['kib_per_connection']} | {idle.get('kib_per_connection_marginal', '-')} | "
                f"{idle['rss_before_mib']} → {idle['rss_after_mib']} | {idle.get('loadavg')} |"
            )
    lines += [
        "",
        "| target | storm: accepted | all accepted (s) | p50 (s) | retries | server CPU | "
        "load-gen CPU | load avg |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for name, target in results["targets"].items():
        storm = target.get("storm")
        if storm:
            lines.append(
                f"| {name} | {storm['accepted']:,}/{storm['charge_points']:,} | "
                f"{storm['all_accepted_s']} | {storm['p50_accepted_s']} | "
                f"{storm['retries'] or 'none'} | {storm.get('server_cpu', 0):.0%} | "
                f"{storm.get('loadgen_cpu', 0):.0%} | {storm.get('loadavg')} |"
            )
    ours = results["targets"].get("chargegrid") or {}
    for key, title in (
        ("command_latency", "command (REST → CP → answer)"),
        ("fanout_latency", "live fan-out (StatusNotification → subscriber)"),
    ):
        if key in ours:
            figure = ours[key]
            lines.append(
                f"\n{title}: p50 {figure['p50_ms']} ms, p95 {figure['p95_ms']} ms, "
                f"p99 {figure['p99_ms']} ms, max {figure['max_ms']} ms "
                f"(load average {figure.get('loadavg')})"
            )
    if results.get("ratios"):
        lines += [
            "",
            "| figure | " + " | ".join(f"chargegrid / {p}" for p in _peers(results)) + " |",
        ]
        lines.append("| --- |" + " ---: |" * len(_peers(results)))
        for key, ratios in results["ratios"].items():
            cells = " | ".join(f"{ratios.get(p, '-')}" for p in _peers(results))
            lines.append(f"| {key} | {cells} |")
    for note in results.get("notes", []):
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


def _peers(results: dict[str, Any]) -> list[str]:
    return [name for name in results["targets"] if name != "chargegrid"]


def plot(results: dict[str, Any], path: Path) -> bool:
    """A bar chart of round trips/s per target and figure; ``False`` without matplotlib."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    targets = results["targets"]
    figures = sorted(
        {k for t in targets.values() for k in t if k.startswith(("throughput_", "paced_"))}
    )
    if not figures:
        return False
    names = list(targets)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(10, 5))
    for index, name in enumerate(names):
        values = [(targets[name].get(f) or {}).get("round_trips_per_s", 0) or 0 for f in figures]
        ax.bar([x + index * width for x in range(len(figures))], values, width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(figures))])
    ax.set_xticklabels([f.replace("throughput_", "").replace("_", " ") for f in figures])
    ax.set_ylabel("round trips/s (median)")
    ax.set_title(
        f"OCPP MeterValues round trips/s, server on one core "
        f"(load avg {results['loadavg_start'][0] if results['loadavg_start'] else '?'})"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_reports(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """``results.json``, ``results.md`` and (with matplotlib) ``throughput.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json", out_dir / "results.md"]
    written[0].write_text(json.dumps(results, indent=2) + "\n")
    written[1].write_text(markdown(results))
    if plot(results, out_dir / "throughput.png"):
        written.append(out_dir / "throughput.png")
    return written
