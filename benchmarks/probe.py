"""Probe one chargegrid server under the closed-loop throughput load, for tuning work.

``.venv/bin/python benchmarks/probe.py [--runs 4] [--size 500] [--sampled 3] [--rate R]
[--transactions] [--perf] [--pyspy] [--env NAME=VALUE ...]``

Starts ``chargegrid serve`` on a fresh SQLite file pinned to core 0 (the load generator runs
on core 1), then runs the throughput scenario ``--runs`` times back to back on the same server,
printing round trips/s, latency, server CPU per round trip and the group-commit histograms from
``/metrics`` for each run. Unlike ``benchmarks/run`` it keeps the server (and its growing
database) across runs: the figures show the decline from an empty database to the steady state.
``--perf`` / ``--pyspy`` profile the last run (``perf record`` by DSO and symbol; py-spy on the
event loop thread, raw collapsed stacks in the work directory).

``--pair-env NAME=VALUE ...`` compares two servers in the same seconds: A with ``--env``, B with
``--env`` and these (e.g. ``PYTHONPATH=/path/to/other/worktree/src``), both pinned to core 0,
each with a fleet of its own (``--size`` charge points, ``--rate`` each) driven from one load
generator on core 1. This machine's speed drifts by a third within minutes, more than most
changes are worth, and one run after another compares the hours, not the code; side by side
both see the same hour. Prints each server's figures per run and B's CPU per round trip as a
ratio of A's (the figure to judge by; p99s are of two servers sharing one core).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from chargegrid.simulator import bench, loadgen

_COMMIT_BUCKET = r'chargegrid_group_commit_duration_seconds_bucket\{le="([0-9.e+-]+)"\} (\S+)$'


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"(chargegrid_group_commit_\w+?)(_sum|_count)? ([0-9.e+-]+)$", line)
        if match:
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        match = re.match(_COMMIT_BUCKET, line)
        if match:
            out[f"commit_le_{match.group(1)}"] = float(match.group(2))
    return out


def _profile(
    pid: int, delay: float, seconds: float, workdir: Path, perf: bool, pyspy: bool
) -> list[str]:
    commands = []
    if perf:
        data = workdir / "perf.data"
        commands.append(
            [
                *("perf", "record", "-q", "-F", "499", "-g", "-o", str(data), "-p", str(pid)),
                *("--", "sleep", str(seconds)),
            ]
        )
    if pyspy:
        commands.append(
            [
                *(str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking"),
                *("--threads", "-r", "200", "-f", "raw", "-d", str(int(seconds)), "-p", str(pid)),
                *("-o", str(workdir / "pyspy.txt")),
            ]
        )
    for command in commands:
        # Start after the fleet has connected and warmed up: the steady state, not the storm.
        shell = f"sleep {delay}; exec {' '.join(command)}"
        subprocess.Popen(["sh", "-c", shell], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [" ".join(command) for command in commands]


def _target(options: bench.BenchOptions, workdir: Path, env: list[str]) -> tuple[bench.Target, str]:
    """The chargegrid target with ``env`` (NAME=VALUE) set and its fleet provisioned."""
    (target,) = bench._targets(options, workdir)
    for pair in env:
        name, _, value = pair.partition("=")
        target.env[name] = value
    bench._provision(target, options, 0, workdir)
    return target, f"ws://127.0.0.1:{target.port}/ocpp"


async def _throughput(
    args: argparse.Namespace, url: str, ids: list[str], pid: int
) -> dict[str, Any]:
    """One run of the throughput scenario as the command line asks, against server ``pid``."""
    return await loadgen.throughput(
        url,
        ids,
        sampled=args.sampled,
        warmup=args.warmup,
        duration=args.duration,
        server_pid=pid,
        rate=args.rate,
        in_sessions=args.transactions,
    )


def _line(label: str, result: dict[str, Any]) -> tuple[str, float]:
    rate = result["round_trips_per_s"]
    cpu = 100 * (result.get("server_cpu") or 0.0)
    per_rt = 1e4 * cpu / rate if rate else 0.0
    return (
        f"{label}: {rate:8.0f} rt/s  p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f}"
        f" ms  server CPU {cpu:5.1f} % ({per_rt:5.0f} us/rt)"
        f"  loadgen CPU {100 * result['loadgen_cpu']:5.1f} %  errors {result['errors']}",
        per_rt,
    )


async def _paired(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {1})
    workdir = Path(tempfile.mkdtemp(prefix="chargegrid-probe-"))
    print(f"work directory {workdir}")
    servers = []
    for index, env in enumerate((args.env, [*args.env, *args.pair_env])):
        options = bench.BenchOptions(
            targets=("chargegrid",),
            sizes=(args.size,),
            storm=0,
            idle=0,
            base_port=bench.BenchOptions.base_port + 50 * index,
        )
        directory = workdir / "AB"[index]
        directory.mkdir()
        servers.append((*_target(options, directory, env), directory))
    ids = bench._ids("TP", args.size)
    with contextlib.ExitStack() as stack:
        processes = [
            stack.enter_context(
                bench.server_process(
                    target.command, target.port, directory / "server.log", target.env, 0
                )
            )
            for target, _url, directory in servers
        ]
        ratios = []
        for run in range(1, args.runs + 1):
            results = await asyncio.gather(
                *(
                    _throughput(args, url, ids, process.pid)
                    for (_target, url, _directory), process in zip(servers, processes, strict=True)
                )
            )
            (text_a, per_rt_a), (text_b, per_rt_b) = (
                _line(f"run {run} {label}", result)
                for label, result in zip("AB", results, strict=True)
            )
            ratio = per_rt_b / per_rt_a if per_rt_a else float("nan")
            ratios.append(ratio)
            print(f"{text_a}\n{text_b}\n        B/A CPU per round trip: {ratio:.3f}", flush=True)
        ratios.sort()
        print(
            f"B/A CPU per round trip over {len(ratios)} runs: median {ratios[len(ratios) // 2]:.3f}"
            f" (min {ratios[0]:.3f}, max {ratios[-1]:.3f})"
        )


async def _main(args: argparse.Namespace) -> None:
    if args.pair_env:
        await _paired(args)
        return
    os.sched_setaffinity(0, {1})
    workdir = Path(tempfile.mkdtemp(prefix="chargegrid-probe-"))
    options = bench.BenchOptions(targets=("chargegrid",), sizes=(args.size,), storm=0, idle=0)
    target, url = _target(options, workdir, args.env)
    print(f"work directory {workdir}")
    with bench.server_process(
        target.command, target.port, workdir / "server.log", target.env, 0
    ) as server:
        # taskset execs the server: the pid is the server's own.
        ids = bench._ids("TP", args.size)
        for run in range(1, args.runs + 1):
            before = _metrics(target.port)
            if run == args.runs and (args.perf or args.pyspy):
                for line in _profile(
                    server.pid,
                    args.profile_delay,
                    args.duration - 1,
                    workdir,
                    args.perf,
                    args.pyspy,
                ):
                    print(f"profiling: {line}")
            started = time.perf_counter()
            result = await _throughput(args, url, ids, server.pid)
            after = _metrics(target.port)
            delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            batches = delta.get("chargegrid_group_commit_duration_seconds_count", 0.0) or 1.0
            commit_ms = (
                1000 * delta.get("chargegrid_group_commit_duration_seconds_sum", 0.0) / batches
            )
            items = delta.get("chargegrid_group_commit_batch_items_sum", 0.0) / batches
            # The slow commits: every message in such a batch waited at least that long.
            slow = "  ".join(
                f"{1000 * float(le):g} ms: {batches - delta[f'commit_le_{le}']:.0f}"
                for le in ("0.025", "0.05", "0.1", "0.25")
                if f"commit_le_{le}" in delta
            )
            text, _per_rt = _line(f"run {run}", result)
            print(
                f"{text}  commit {commit_ms:5.1f} ms x {items:5.0f} items"
                f"  ({time.perf_counter() - started:.0f} s)"
            )
            print(f"        commits: {batches:.0f}, slower than {slow}")
        if args.perf or args.pyspy:
            await asyncio.sleep(2)
            print(f"profiles in {workdir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--sampled", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=None, help="paced total MeterValues/s")
    parser.add_argument(
        "--transactions",
        action="store_true",
        help="values carry a transaction id per charge point, as a charging fleet's do",
    )
    parser.add_argument("--perf", action="store_true")
    parser.add_argument("--pyspy", action="store_true")
    parser.add_argument("--profile-delay", type=float, default=5.0, help="connect + warmup")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    parser.add_argument(
        "--pair-env",
        action="append",
        default=[],
        help="NAME=VALUE: run a second server B with these too, side by side (see above)",
    )
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
