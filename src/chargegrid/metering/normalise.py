"""Turning OCPP MeterValue payloads into stored rows: defaults, units, numbers.

OCPP 1.6 §7.43 SampledValue: every field but ``value`` is optional and has a documented default
(CONFORMANCE M2). Values arrive as strings; Raw values are parsed, SignedData kept verbatim (M4).
Units are normalised to the base unit so that kWh and Wh readings of one register compare (M8).
"""

from __future__ import annotations

import math
from typing import Any

from chargegrid.clock import parse_timestamp

DEFAULT_MEASURAND = "Energy.Active.Import.Register"
DEFAULT_UNIT = "Wh"
DEFAULT_CONTEXT = "Sample.Periodic"
DEFAULT_FORMAT = "Raw"
DEFAULT_LOCATION = "Outlet"

# unit as sent -> (stored unit, factor to the stored unit)
UNITS: dict[str, tuple[str, float]] = {
    "Wh": ("Wh", 1.0),
    "kWh": ("Wh", 1000.0),
    "varh": ("varh", 1.0),
    "kvarh": ("varh", 1000.0),
    "W": ("W", 1.0),
    "kW": ("W", 1000.0),
    "VA": ("VA", 1.0),
    "kVA": ("VA", 1000.0),
    "var": ("var", 1.0),
    "kvar": ("var", 1000.0),
    "A": ("A", 1.0),
    "V": ("V", 1.0),
    "K": ("K", 1.0),
    # The 1.6 schema spells it "Celcius"; errata and most firmware send "Celsius" (CONFORMANCE M5).
    "Celcius": ("Celsius", 1.0),
    "Celsius": ("Celsius", 1.0),
    "Fahrenheit": ("Fahrenheit", 1.0),
    "Percent": ("Percent", 1.0),
}

# A measurand's unit when the sampled value names none. OCPP 1.6 §7.43 says Wh by default, which
# only makes sense for energy; charge points that omit the unit of Voltage mean volts.
IMPLIED_UNITS: dict[str, str] = {
    "Power.Active.Import": "W",
    "Power.Active.Export": "W",
    "Power.Offered": "W",
    "Power.Reactive.Import": "var",
    "Power.Reactive.Export": "var",
    "Current.Import": "A",
    "Current.Export": "A",
    "Current.Offered": "A",
    "Voltage": "V",
    "Temperature": "Celsius",
    "SoC": "Percent",
    "Frequency": "Hz",
    "Power.Factor": "",
    "RPM": "",
}


def sampled_value_rows(
    charge_point_id: int,
    connector_id: int,
    transaction_id: int | None,
    meter_values: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per sampled value, ready for ``meter_values`` (CONFORMANCE M1-M6)."""
    rows: list[dict[str, Any]] = []
    for meter_value in meter_values:
        raw_timestamp: str = meter_value["timestamp"]
        timestamp = parse_timestamp(raw_timestamp)
        for sample in meter_value["sampledValue"]:
            measurand = sample.get("measurand") or DEFAULT_MEASURAND
            raw_unit = sample.get("unit")
            if raw_unit is None:
                raw_unit = IMPLIED_UNITS.get(measurand, DEFAULT_UNIT)
            unit, factor = UNITS.get(raw_unit, (raw_unit, 1.0))
            value_format = sample.get("format") or DEFAULT_FORMAT
            raw_value: str = sample["value"]
            rows.append(
                {
                    "charge_point_id": charge_point_id,
                    "connector_id": connector_id,
                    "transaction_id": transaction_id,
                    "timestamp": timestamp,
                    "timestamp_raw": raw_timestamp,
                    "measurand": measurand,
                    "phase": sample.get("phase"),
                    "location": sample.get("location") or DEFAULT_LOCATION,
                    "context": sample.get("context") or DEFAULT_CONTEXT,
                    "unit": unit,
                    "raw_unit": raw_unit,
                    "value": _number(raw_value, factor) if value_format == "Raw" else None,
                    "raw_value": raw_value,
                    "format": value_format,
                }
            )
    return rows


def _number(raw: str, factor: float) -> float | None:
    try:
        value = float(raw) * factor
    except ValueError:
        return None
    # NaN and infinities (sent, or from scaling a huge number) are not readings.
    return value if math.isfinite(value) else None
