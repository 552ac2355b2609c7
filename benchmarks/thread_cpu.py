"""CPU of each thread of a running process over a few seconds, from /proc (Linux).

``python benchmarks/thread_cpu.py PID [--seconds 5]``

Use it beside ``benchmarks/probe.py`` in its steady state: py-spy on this machine counts a thread
blocked in ``epoll_wait`` or on a queue as busy, so it cannot say how much CPU the event loop
and the SQLite writer thread each use; the kernel's per-thread counters can. The main thread
(the event loop) is the one whose id is the process id; Python does not name the others for
the kernel, so they are told apart by their figures (the writer thread is the busy one).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def _ticks(pid: int) -> dict[int, tuple[int, int]]:
    """(user, system) clock ticks used so far by each thread of ``pid``."""
    out: dict[int, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (int(fields[11]), int(fields[12]))  # utime, stime: stat(5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    before = _ticks(args.pid)
    time.sleep(args.seconds)
    after = _ticks(args.pid)
    per_second = os.sysconf("SC_CLK_TCK") * args.seconds
    rows = []
    for tid, (user, system) in after.items():
        user0, system0 = before.get(tid, (0, 0))
        rows.append((user - user0 + system - system0, user - user0, tid))
    for total, user, tid in sorted(rows, reverse=True):
        if total:
            name = "main (event loop)" if tid == args.pid else f"thread {tid}"
            print(
                f"{name:20} {100 * total / per_second:5.1f} % of a core"
                f" (user {100 * user / per_second:5.1f} %)"
            )


if __name__ == "__main__":
    main()
