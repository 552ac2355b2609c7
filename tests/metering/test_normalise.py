"""Meter value normalisation: OCPP 1.6 §7.43 defaults, units, phases, formats, timestamps."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from chargegrid.metering.normalise import (
    DEFAULT_CONTEXT,
    DEFAULT_FORMAT,
    DEFAULT_LOCATION,
    DEFAULT_MEASURAND,
    sampled_value_rows,
)

TS = "2024-06-01T10:00:00Z"


def rows_for(*samples: dict[str, Any], timestamp: str = TS) -> list[dict[str, Any]]:
    return sampled_value_rows(7, 2, 42, [{"timestamp": timestamp, "sampledValue": list(samples)}])


def one(sample: dict[str, Any], timestamp: str = TS) -> dict[str, Any]:
    (row,) = rows_for(sample, timestamp=timestamp)
    return row


def test_a_bare_value_gets_every_documented_default() -> None:
    row = one({"value": "1234"})
    assert row == {
        "charge_point_id": 7,
        "connector_id": 2,
        "transaction_id": 42,
        "timestamp": datetime(2024, 6, 1, 10, 0, tzinfo=UTC),
        "timestamp_raw": TS,
        "measurand": "Energy.Active.Import.Register",
        "phase": None,
        "location": "Outlet",
        "context": "Sample.Periodic",
        "unit": "Wh",
        "raw_unit": "Wh",
        "value": 1234.0,
        "raw_value": "1234",
        "format": "Raw",
    }
    assert DEFAULT_MEASURAND == "Energy.Active.Import.Register"
    assert (DEFAULT_CONTEXT, DEFAULT_FORMAT, DEFAULT_LOCATION) == (
        "Sample.Periodic",
        "Raw",
        "Outlet",
    )


def test_explicit_fields_are_kept() -> None:
    row = one(
        {
            "value": "230.1",
            "measurand": "Voltage",
            "phase": "L2-N",
            "location": "Inlet",
            "context": "Transaction.Begin",
            "unit": "V",
            "format": "Raw",
        }
    )
    assert row["measurand"] == "Voltage"
    assert row["phase"] == "L2-N"
    assert row["location"] == "Inlet"
    assert row["context"] == "Transaction.Begin"
    assert (row["unit"], row["raw_unit"], row["value"]) == ("V", "V", 230.1)


def test_no_transaction_id_is_kept_as_none() -> None:
    (row,) = sampled_value_rows(1, 0, None, [{"timestamp": TS, "sampledValue": [{"value": "1"}]}])
    assert row["transaction_id"] is None
    assert row["connector_id"] == 0


@pytest.mark.parametrize(
    ("raw_unit", "raw_value", "unit", "value"),
    [
        ("Wh", "1500", "Wh", 1500.0),
        ("kWh", "1.5", "Wh", 1500.0),
        ("varh", "12", "varh", 12.0),
        ("kvarh", "0.25", "varh", 250.0),
        ("W", "7400", "W", 7400.0),
        ("kW", "7.4", "W", 7400.0),
        ("VA", "10", "VA", 10.0),
        ("kVA", "11", "VA", 11000.0),
        ("var", "3", "var", 3.0),
        ("kvar", "0.003", "var", 3.0),
        ("A", "16", "A", 16.0),
        ("V", "400", "V", 400.0),
        ("K", "300", "K", 300.0),
        ("Celcius", "21.5", "Celsius", 21.5),  # the 1.6 schema's spelling
        ("Celsius", "21.5", "Celsius", 21.5),
        ("Fahrenheit", "70", "Fahrenheit", 70.0),
        ("Percent", "80", "Percent", 80.0),
    ],
)
def test_units_are_normalised_and_the_raw_unit_kept(
    raw_unit: str, raw_value: str, unit: str, value: float
) -> None:
    row = one({"value": raw_value, "unit": raw_unit})
    assert row["unit"] == unit
    assert row["raw_unit"] == raw_unit
    assert row["value"] == pytest.approx(value)
    assert row["raw_value"] == raw_value


def test_an_unknown_unit_is_kept_as_sent() -> None:
    row = one({"value": "5", "unit": "furlongs"})
    assert (row["unit"], row["raw_unit"], row["value"]) == ("furlongs", "furlongs", 5.0)


@pytest.mark.parametrize(
    ("measurand", "unit"),
    [
        ("Energy.Active.Import.Register", "Wh"),
        ("Energy.Reactive.Export.Interval", "Wh"),
        ("Power.Active.Import", "W"),
        ("Power.Offered", "W"),
        ("Power.Reactive.Import", "var"),
        ("Current.Import", "A"),
        ("Current.Offered", "A"),
        ("Voltage", "V"),
        ("Temperature", "Celsius"),
        ("SoC", "Percent"),
        ("Frequency", "Hz"),
    ],
)
def test_a_missing_unit_is_implied_by_the_measurand(measurand: str, unit: str) -> None:
    row = one({"value": "3", "measurand": measurand})
    assert row["unit"] == unit
    assert row["value"] == 3.0


def test_phases_make_separate_rows() -> None:
    rows = rows_for(
        {"value": "16", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
        {"value": "15", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
        {"value": "14", "measurand": "Current.Import", "phase": "L3", "unit": "A"},
        {"value": "0.5", "measurand": "Current.Import", "phase": "N", "unit": "A"},
    )
    assert [(r["phase"], r["value"]) for r in rows] == [
        ("L1", 16.0),
        ("L2", 15.0),
        ("L3", 14.0),
        ("N", 0.5),
    ]


def test_signed_data_is_kept_verbatim_without_a_number() -> None:
    signed = 'OCMF|{"FV":"1.0","RD":[{"RV":1.5}]}|{"SD":"3045022100"}'
    row = one({"value": signed, "format": "SignedData", "unit": "kWh"})
    assert row["value"] is None
    assert row["raw_value"] == signed
    assert row["format"] == "SignedData"
    assert row["unit"] == "Wh"
    assert row["raw_unit"] == "kWh"


def test_a_numeric_signed_data_value_is_still_not_parsed() -> None:
    assert one({"value": "1234", "format": "SignedData"})["value"] is None


@pytest.mark.parametrize("raw", ["", "abc", "1,5", "12kWh", "NaN", "nan", "inf", "-Infinity"])
def test_unparsable_or_non_finite_values_are_stored_without_a_number(raw: str) -> None:
    row = one({"value": raw})
    assert row["value"] is None
    assert row["raw_value"] == raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(" 12.5 ", 12.5), ("-3", -3.0), ("1e3", 1000.0), ("0", 0.0), ("+7", 7.0)],
)
def test_number_forms(raw: str, expected: float) -> None:
    value = one({"value": raw})["value"]
    assert value == expected
    assert math.isfinite(value)


def test_a_huge_kwh_value_that_overflows_stays_finite_or_none() -> None:
    value = one({"value": "1e306", "unit": "kWh"})["value"]
    assert value is None or math.isfinite(value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-06-01T10:00:00Z", datetime(2024, 6, 1, 10, 0, tzinfo=UTC)),
        ("2024-06-01T10:00:00.123Z", datetime(2024, 6, 1, 10, 0, 0, 123000, tzinfo=UTC)),
        ("2024-06-01T12:00:00+02:00", datetime(2024, 6, 1, 10, 0, tzinfo=UTC)),
        ("2024-06-01T05:30:00-04:30", datetime(2024, 6, 1, 10, 0, tzinfo=UTC)),
        ("2024-06-01T00:30:00+14:00", datetime(2024, 5, 31, 10, 30, tzinfo=UTC)),
        ("2024-06-01T10:00:00", datetime(2024, 6, 1, 10, 0, tzinfo=UTC)),  # no offset: UTC
    ],
)
def test_timestamps_become_utc_and_the_raw_string_is_kept(raw: str, expected: datetime) -> None:
    row = one({"value": "1"}, timestamp=raw)
    assert row["timestamp"] == expected
    assert row["timestamp"].utcoffset() is not None
    assert row["timestamp"].utcoffset().total_seconds() == 0
    assert row["timestamp_raw"] == raw


def test_an_unparsable_timestamp_is_an_error() -> None:
    with pytest.raises(ValueError):
        one({"value": "1"}, timestamp="yesterday")


def test_several_meter_values_keep_their_own_timestamps() -> None:
    rows = sampled_value_rows(
        1,
        1,
        5,
        [
            {"timestamp": "2024-06-01T10:00:00Z", "sampledValue": [{"value": "1"}, {"value": "2"}]},
            {"timestamp": "2024-06-01T10:01:00Z", "sampledValue": [{"value": "3"}]},
        ],
    )
    assert [(r["timestamp_raw"], r["value"]) for r in rows] == [
        ("2024-06-01T10:00:00Z", 1.0),
        ("2024-06-01T10:00:00Z", 2.0),
        ("2024-06-01T10:01:00Z", 3.0),
    ]


def test_an_empty_meter_value_list_gives_no_rows() -> None:
    assert sampled_value_rows(1, 1, None, []) == []
