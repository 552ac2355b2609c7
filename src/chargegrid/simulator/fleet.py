"""A fleet of simulated charge points in one process: start, progress line, summary."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from chargegrid.simulator.chargepoint import SimConfig, SimulatedChargePoint
from chargegrid.simulator.stats import FleetStats

__all__ = ["Fleet", "identities", "run_fleet"]


def identities(prefix: str, count: int) -> list[str]:
    """The charge point identities the simulator uses: ``SIM00001``, ``SIM00002``, …"""
    width = max(5, len(str(count)))
    return [f"{prefix}{n:0{width}d}" for n in range(1, count + 1)]


class Fleet:
    """``count`` charge points sharing one :class:`FleetStats`."""

    def __init__(self, config: SimConfig, count: int) -> None:
        self.config = config
        self.stats = FleetStats()
        self.charge_points = [
            SimulatedChargePoint(identity, index, config, self.stats)
            for index, identity in enumerate(identities(config.id_prefix, count))
        ]
        self.started = 0.0
        self.elapsed = 0.0

    def get(self, identity: str) -> SimulatedChargePoint:
        for cp in self.charge_points:
            if cp.identity == identity:
                return cp
        raise KeyError(identity)

    async def run(
        self,
        duration: float,
        *,
        ramp: float = 0.0,
        progress: Callable[[Fleet], None] | None = None,
        progress_interval: float = 1.0,
        hold: bool = False,
    ) -> dict[str, Any]:
        """Run every charge point for ``duration`` seconds (connections spread over ``ramp``
        seconds so a fleet start is not a connection storm unless asked for), then return the
        summary.

        With ``hold``, the charge points hold still after ``duration`` (see
        :meth:`SimulatedChargePoint.run`) until :meth:`stop`: wait for :meth:`settled`, compare
        :meth:`snapshot` with what the central system shows, then ``stop()``."""
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        deadline = self.started + duration
        count = len(self.charge_points)

        async def one(index: int, cp: SimulatedChargePoint) -> None:
            if ramp > 0 and count > 1:
                await asyncio.sleep(ramp * index / count)
            await cp.run(deadline, hold=hold)

        reporter: asyncio.Task[None] | None = None
        if progress is not None:
            reporter = asyncio.create_task(self._report(progress, progress_interval))
        try:
            tasks = [asyncio.create_task(one(i, cp)) for i, cp in enumerate(self.charge_points)]
            try:
                await asyncio.gather(*tasks)
            except asyncio.CancelledError:
                self.stop()
                # Give every charge point its chance to deliver its queue and close cleanly.
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            self.elapsed = loop.time() - self.started
        return self.summary()

    def energy_wh(self) -> int:
        """Energy delivered so far by the whole fleet (meter registers minus their start)."""
        return sum(
            sum(int(c.register) for c in cp.connectors.values()) - cp.initial_energy
            for cp in self.charge_points
        )

    def stop(self) -> None:
        for cp in self.charge_points:
            cp.stop()

    def settled(self) -> bool:
        """Every charge point holds still, online, with nothing left to tell the CSMS."""
        return all(cp.settled for cp in self.charge_points)

    async def wait_settled(self, timeout: float, poll: float = 0.2) -> bool:
        """Wait until :meth:`settled` (after the run's duration, with ``hold``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.settled():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(poll)
        return True

    def figures(self) -> dict[str, Any]:
        """The fleet as the dashboard counts it, from what the CSMS was told and acknowledged:
        charge points connected, available (connected, charge point status Available: the
        simulator always reports connector 0 Available), charging (a connector's last status
        is Charging) and active sessions."""
        online = [cp for cp in self.charge_points if cp.online]
        return {
            "total": len(self.charge_points),
            "connected": len(online),
            "available": len(online),
            "charging": sum(
                any(c.status == "Charging" for c in cp.connectors.values())
                for cp in self.charge_points
            ),
            "active_sessions": self.stats.sessions_active,
        }

    def snapshot(self) -> dict[str, Any]:
        """The summary so far, the fleet figures, and every charge point's state."""
        self.elapsed = asyncio.get_running_loop().time() - self.started
        return {
            **self.summary(),
            "settled": self.settled(),
            "figures": self.figures(),
            "charge_point_state": {cp.identity: cp.snapshot() for cp in self.charge_points},
        }

    async def _report(self, progress: Callable[[Fleet], None], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.elapsed = asyncio.get_running_loop().time() - self.started
            progress(self)

    def summary(self) -> dict[str, Any]:
        config = self.config
        messages = self.stats.messages
        return self.stats.summary(
            url=config.url,
            profile=config.profile,
            charge_points=len(self.charge_points),
            seed=config.seed,
            speed=config.speed,
            duration_s=round(self.elapsed, 3),
            messages_per_second=round(messages / self.elapsed, 1) if self.elapsed else 0.0,
        )


class ProgressLine:
    """``connected 998/1000 | sessions 312 active, 1200 started, 900 stopped | 450 msg/s | …``

    On a terminal the line is rewritten in place; otherwise one line per report.
    """

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_messages = 0
        self._last_time = time.monotonic()

    def __call__(self, fleet: Fleet) -> None:
        stats = fleet.stats
        now = time.monotonic()
        messages = stats.messages
        rate = (messages - self._last_messages) / max(now - self._last_time, 1e-6)
        self._last_messages, self._last_time = messages, now
        line = (
            f"{fleet.elapsed:6.0f}s connected {stats.connected}/{len(fleet.charge_points)} | "
            f"sessions {stats.sessions_active} active, {stats.sessions_started} started, "
            f"{stats.sessions_stopped} stopped | {rate:,.0f} msg/s | "
            f"{fleet.energy_wh() / 1000:,.1f} kWh | errors {stats.errors}"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


async def run_fleet(
    config: SimConfig,
    count: int,
    duration: float,
    *,
    ramp: float = 0.0,
    progress: Callable[[Fleet], None] | None = None,
) -> dict[str, Any]:
    """Run a fleet and return its summary (the ``chargegrid simulate`` command's work)."""
    fleet = Fleet(config, count)
    return await fleet.run(duration, ramp=ramp, progress=progress)
