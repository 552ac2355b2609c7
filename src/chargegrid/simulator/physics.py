"""Charging physics: how much power an EV draws, and the sampled values a meter reports.

AC chargers (7.4-22 kW) deliver what the car's on-board charger takes, nearly constant until the
battery is almost full. DC chargers (50-150 kW) deliver the car's maximum up to a knee in state of
charge and then taper roughly linearly; that taper is what makes DC sessions look real on a chart.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["Charger", "Vehicle", "power_w", "sampled_values", "transaction_reading"]

NOMINAL_VOLTAGE = 230.0  # V, phase to neutral


@dataclass(slots=True)
class Charger:
    """One charge point's electrical side (all its connectors share it)."""

    dc: bool
    max_power_w: float
    phases: int  # AC: 1 or 3; DC: 0 (no phase-resolved values)

    @classmethod
    def pick(cls, rng: random.Random) -> Charger:
        if rng.random() < 0.25:
            return cls(dc=True, max_power_w=rng.choice((50_000.0, 100_000.0, 150_000.0)), phases=0)
        power, phases = rng.choice(((7_400.0, 1), (11_000.0, 3), (22_000.0, 3)))
        return cls(dc=False, max_power_w=power, phases=phases)


@dataclass(slots=True)
class Vehicle:
    """The EV plugged into a connector during one session."""

    capacity_wh: float
    soc: float  # 0..1
    target_soc: float
    max_ac_w: float  # its on-board charger
    max_dc_w: float
    knee: float  # SoC above which DC power tapers

    @classmethod
    def arrive(cls, rng: random.Random) -> Vehicle:
        return cls(
            capacity_wh=rng.choice((40_000.0, 58_000.0, 77_000.0, 100_000.0)),
            soc=rng.uniform(0.08, 0.5),
            target_soc=rng.uniform(0.8, 1.0),
            max_ac_w=rng.choice((7_400.0, 11_000.0, 11_000.0, 22_000.0)),
            max_dc_w=rng.choice((50_000.0, 100_000.0, 135_000.0, 150_000.0)),
            knee=rng.uniform(0.5, 0.65),
        )


def power_w(charger: Charger, vehicle: Vehicle, rng: random.Random) -> float:
    """Power drawn now, with a little measurement noise."""
    if vehicle.soc >= 1.0:
        return 0.0
    noise = rng.uniform(0.985, 1.0)
    if charger.dc:
        peak = min(charger.max_power_w, vehicle.max_dc_w)
        if vehicle.soc <= vehicle.knee:
            return peak * noise
        # Linear taper from the knee to 10 % of the peak at 100 % SoC.
        left = (1.0 - vehicle.soc) / (1.0 - vehicle.knee)
        return peak * max(0.1, 0.1 + 0.9 * left) * noise
    peak = min(charger.max_power_w, vehicle.max_ac_w)
    if charger.phases == 1:
        peak = min(peak, 7_400.0)
    if vehicle.soc > 0.95:  # the battery management system backs off at the very top
        peak *= max(0.2, (1.0 - vehicle.soc) / 0.05)
    return peak * noise


def _sv(value: str, measurand: str, unit: str, **extra: str) -> dict[str, Any]:
    sample = {
        "value": value,
        "context": "Sample.Periodic",
        "format": "Raw",
        "measurand": measurand,
        "location": "Outlet",
        "unit": unit,
    }
    sample.update(extra)
    return sample


def sampled_values(
    charger: Charger,
    register_wh: int,
    power: float,
    vehicle: Vehicle | None,
    temperature_c: float,
    rng: random.Random,
) -> list[dict[str, Any]]:
    """One periodic meter reading: energy register, power, current and voltage per phase, SoC
    (DC, where the car reports it) and the charger's body temperature."""
    values = [
        _sv(str(register_wh), "Energy.Active.Import.Register", "Wh"),
        _sv(f"{power:.1f}", "Power.Active.Import", "W"),
    ]
    if charger.dc:
        voltage = 350.0 + 100.0 * (vehicle.soc if vehicle else 0.5) + rng.uniform(-2, 2)
        values.append(_sv(f"{voltage:.1f}", "Voltage", "V"))
        values.append(_sv(f"{power / voltage:.1f}", "Current.Import", "A"))
    else:
        for index in range(charger.phases):
            phase = ("L1", "L2", "L3")[index]
            voltage = NOMINAL_VOLTAGE + rng.uniform(-4.0, 4.0)
            current = power / charger.phases / voltage
            values.append(_sv(f"{current:.2f}", "Current.Import", "A", phase=phase))
            values.append(_sv(f"{voltage:.1f}", "Voltage", "V", phase=f"{phase}-N"))
    if vehicle is not None and charger.dc:
        values.append(_sv(str(math.floor(vehicle.soc * 100)), "SoC", "Percent", location="EV"))
    values.append(_sv(f"{temperature_c:.1f}", "Temperature", "Celsius", location="Body"))
    return values


def transaction_reading(register_wh: int, timestamp: str, context: str) -> dict[str, Any]:
    """A MeterValue for StopTransaction's transactionData (Transaction.Begin / .End)."""
    return {
        "timestamp": timestamp,
        "sampledValue": [
            {
                "value": str(register_wh),
                "context": context,
                "measurand": "Energy.Active.Import.Register",
                "location": "Outlet",
                "unit": "Wh",
            }
        ],
    }
