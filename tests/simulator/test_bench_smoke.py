"""The benchmark harness at toy scale: it runs end to end and writes every field. No timings are
asserted (the test suite never judges speed; docs/benchmarks.md does, on a quiet machine)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from chargegrid.simulator import loadgen
from chargegrid.simulator.bench import BenchOptions, run_bench, server_process, write_reports

PEERS = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"


@pytest.mark.slow
def test_bench_runs_at_tiny_scale(tmp_path: Path) -> None:
    options = BenchOptions(
        targets=("chargegrid", "echo", "picows-echo"),
        sizes=(5,),
        sampled=(3,),
        repeats=1,
        warmup=0.2,
        duration=1.0,
        paced_rate=50.0,
        idle=10,
        storm=10,
        commands=3,
        peers_dir=PEERS,
        out_dir=tmp_path,
        base_port=18900,
    )
    results = run_bench(options, say=lambda _line: None)
    written = write_reports(results, tmp_path)

    assert {"machine", "loadavg_start", "loadavg_end", "targets", "ratios"} <= set(results)
    for name in ("chargegrid", "echo", "picows-echo"):
        target = results["targets"][name]
        assert "error" not in target, target
        figure = target["throughput_n5_sv3"]
        for key in ("round_trips_per_s", "p50_ms", "p95_ms", "p99_ms", "loadgen_cpu", "runs"):
            assert key in figure
        assert figure["round_trips"] > 0 and figure["errors"] == {}
        assert target["idle"]["held"] == 10
        assert target["storm"]["accepted"] == 10
        assert "paced_50_n5" in target
    ours = results["targets"]["chargegrid"]
    assert ours["command_latency"]["answered_by_cp"] == 3
    assert ours["fanout_latency"]["missed"] == 0
    assert {"echo", "picows-echo"} <= set(results["ratios"]["throughput_n5_sv3"])
    assert json.loads((tmp_path / "results.json").read_text())["targets"]
    assert (tmp_path / "results.md") in written


@pytest.mark.slow
def test_idle_fleet_is_spread_over_load_generator_processes(tmp_path: Path) -> None:
    """A load generator process may hold only as many sockets as its fd limit allows: the idle
    fleet is split over several, and every socket is counted once."""
    port = 18950
    command = [sys.executable, str(PEERS / "echo_server.py"), "--port", str(port)]
    with server_process(command, port, tmp_path / "echo.log", {}, None) as process:
        result = asyncio.run(
            loadgen.idle_connections(
                f"ws://127.0.0.1:{port}/ocpp",
                [f"IDLE{n}" for n in range(10)],
                server_pid=process.pid,
                settle=0.2,
                per_process=4,
            )
        )
    assert result["loadgen_processes"] == 3
    assert result["held"] == 10 and result["held_half"] == 5
    assert result["connect_failures"] == {}
    assert result["kib_per_connection"] is not None
