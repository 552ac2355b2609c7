"""CONFORMANCE M1-M6 and M8: meter values stored, defaulted, parsed, normalised, deduplicated.

M7 (threshold alerts) is not built yet and has no test here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ocpp.v16 import call

from support import RecordingChargePoint, RunningServer, charge_point

T0 = "2024-05-01T10:00:00Z"
T1 = "2024-05-01T10:15:00Z"
T2 = "2024-05-01T10:30:00Z"
T3 = "2024-05-01T10:45:00Z"

PHASES = ["L1", "L2", "L3", "N", "L1-N", "L2-N", "L3-N", "L1-L2", "L2-L3", "L3-L1"]
LOCATIONS = ["Body", "Cable", "EV", "Inlet", "Outlet"]

COLUMNS = (
    "connector_id, transaction_id, timestamp, timestamp_raw, measurand, phase, location, context, "
    "unit, raw_unit, value, raw_value, format"
)


class FrameRecorder(RecordingChargePoint):
    """Keeps every frame the server sent, decoded, to check payloads exactly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[list[Any]] = []

    async def route_message(self, raw_msg: str) -> None:
        self.frames.append(json.loads(raw_msg))
        await super().route_message(raw_msg)

    @property
    def last_payload(self) -> Any:
        frame = self.frames[-1]
        assert frame[0] == 3, frame  # a CALLRESULT
        return frame[2]


async def send(cp: Any, payload: Any) -> Any:
    """A call whose CALLERROR raises instead of turning into ``None``."""
    return await cp.call(payload, suppress=False)


async def boot(cp: Any) -> None:
    result = await send(cp, call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
    assert result.status == "Accepted"


async def start(cp: Any, connector: int = 1, meter: int = 0, timestamp: str = T0) -> int:
    result = await send(
        cp,
        call.StartTransaction(
            connector_id=connector, id_tag="TAG1", meter_start=meter, timestamp=timestamp
        ),
    )
    assert result.id_tag_info["status"] == "Accepted"
    transaction_id: int = result.transaction_id
    return transaction_id


async def meter_values(
    cp: FrameRecorder,
    connector: int,
    transaction_id: int | None,
    entries: list[dict[str, Any]],
) -> None:
    """Send MeterValues and check the answer is exactly ``{}``."""
    await send(
        cp,
        call.MeterValues(
            connector_id=connector, transaction_id=transaction_id, meter_value=entries
        ),
    )
    assert cp.last_payload == {}


def utc(value: Any) -> datetime | None:
    """A stored time as aware UTC: raw SQL gets naive UTC text from SQLite, datetimes from PG."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def stored(server: RunningServer, where: str = "1 = 1") -> list[dict[str, Any]]:
    rows = await server.rows(f"SELECT {COLUMNS} FROM meter_values WHERE {where} ORDER BY id")
    return [{**r, "timestamp": utc(r["timestamp"])} for r in rows]


async def prepared(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")


async def test_m1_every_sampled_value_of_every_meter_value_stored(server: RunningServer) -> None:
    # CONFORMANCE M1: 3 MeterValue entries x 4 sampled values -> 12 rows, each as sent.
    await prepared(server)
    samples = [
        {"value": "{e}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": "{p}", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": "{c}", "measurand": "Current.Import", "unit": "A", "phase": "L1"},
        {"value": "{v}", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
    ]
    readings = {
        T1: {"e": "1200", "p": "7000", "c": "30.5", "v": "230.1"},
        T2: {"e": "2950", "p": "6900", "c": "30", "v": "229.8"},
        T3: {"e": "4700", "p": "0", "c": "0.25", "v": "231"},
    }
    entries = [
        {
            "timestamp": ts,
            "sampledValue": [{**s, "value": s["value"].format(**values)} for s in samples],
        }
        for ts, values in readings.items()
    ]
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        tx = await start(cp, 1, 0)
        await meter_values(cp, 1, tx, entries)
    rows = await stored(server)
    assert len(rows) == 12
    got = {
        (r["timestamp_raw"], r["measurand"], r["phase"], r["raw_value"], r["value"]) for r in rows
    }
    expected = {
        (
            ts,
            s["measurand"],
            s.get("phase"),
            s["value"].format(**values),
            float(s["value"].format(**values)),
        )
        for ts, values in readings.items()
        for s in samples
    }
    assert got == expected
    assert {(r["connector_id"], r["transaction_id"]) for r in rows} == {(1, tx)}


async def test_m2_omitted_fields_get_their_defaults(server: RunningServer) -> None:
    # CONFORMANCE M2: only a value -> Energy.Active.Import.Register, Wh, Sample.Periodic, Raw,
    # Outlet; no phase.
    await prepared(server)
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        tx = await start(cp, 1, 0)
        await meter_values(cp, 1, tx, [{"timestamp": T1, "sampledValue": [{"value": "123"}]}])
    assert await stored(server) == [
        {
            "connector_id": 1,
            "transaction_id": tx,
            "timestamp": datetime(2024, 5, 1, 10, 15, tzinfo=UTC),
            "timestamp_raw": T1,
            "measurand": "Energy.Active.Import.Register",
            "phase": None,
            "location": "Outlet",
            "context": "Sample.Periodic",
            "unit": "Wh",
            "raw_unit": "Wh",
            "value": 123.0,
            "raw_value": "123",
            "format": "Raw",
        }
    ]


async def test_m3_all_phases_and_locations_stored_as_sent(server: RunningServer) -> None:
    # CONFORMANCE M3: the ten phases and the five locations, each stored as sent.
    await prepared(server)
    by_phase = [
        {"value": str(200 + i), "measurand": "Voltage", "unit": "V", "phase": phase}
        for i, phase in enumerate(PHASES)
    ]
    by_location = [
        {"value": str(20 + i), "measurand": "Temperature", "unit": "Celsius", "location": location}
        for i, location in enumerate(LOCATIONS)
    ]
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        tx = await start(cp, 1, 0)
        await meter_values(cp, 1, tx, [{"timestamp": T1, "sampledValue": by_phase + by_location}])
    rows = await stored(server)
    voltages = [
        (r["phase"], r["location"], r["value"]) for r in rows if r["measurand"] == "Voltage"
    ]
    assert sorted(voltages) == sorted(
        (phase, "Outlet", float(200 + i)) for i, phase in enumerate(PHASES)
    )
    temperatures = [
        (r["location"], r["phase"], r["value"]) for r in rows if r["measurand"] == "Temperature"
    ]
    assert sorted(temperatures) == sorted(
        (location, None, float(20 + i)) for i, location in enumerate(LOCATIONS)
    )
    assert len(rows) == 15


async def test_m4_signed_data_kept_verbatim(server: RunningServer) -> None:
    # CONFORMANCE M4: format SignedData -> raw_value exactly as sent, value NULL.
    await prepared(server)
    signed = (
        'OCMF|{"FV":"1.0","GI":"ABL SBC-301","GS":"808829900001","GV":"1.4p3","PG":"T12345",'
        '"MV":"Phoenix Contact","MM":"EEM-350-D-MCB","MS":"BQ27400330016","MF":"1.0",'
        '"IS":true,"IL":"VERIFIED","IF":["RFID_PLAIN","OCPP_RS_TLS"],"IT":"ISO14443",'
        '"ID":"1F2D3A4B5C6D7E","RD":[{"TM":"2024-05-01T10:15:00,000+0000 S","TX":"B",'
        '"RV":1.2,"RI":"1-b:1.8.0","RU":"kWh","RT":"AC","EF":"","ST":"G"}]}|'
        '{"SD":"304502200E2F107C987A300AC1695CA89EA0D4A1C3C8BD1E6DB1B5E3DF2A1C2E01D7DB3A'
        '022100B6A8A0E1B1B5E1A1C2C3C4C5C6C7C8C9CACBCCCDCECFD0D1D2D3D4D5D6D7D8D9DA"}'
    )
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        tx = await start(cp, 1, 0)
        await meter_values(
            cp,
            1,
            tx,
            [
                {
                    "timestamp": T1,
                    "sampledValue": [
                        {"value": signed, "format": "SignedData", "context": "Transaction.Begin"}
                    ],
                }
            ],
        )
    [row] = await stored(server)
    assert row["raw_value"] == signed
    assert row["value"] is None
    assert row["format"] == "SignedData"
    assert row["context"] == "Transaction.Begin"


async def test_m4_raw_strings_parsed_where_numeric(server: RunningServer) -> None:
    # CONFORMANCE M4: a Raw value is parsed when numeric; a non-numeric one is kept raw, value NULL.
    await prepared(server)
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        tx = await start(cp, 1, 0)
        await meter_values(
            cp,
            1,
            tx,
            [
                {
                    "timestamp": T1,
                    "sampledValue": [
                        {"value": "42.5", "format": "Raw", "measurand": "Power.Active.Import"},
                        {"value": "abc", "measurand": "Current.Import", "unit": "A"},
                        {"value": "-3", "measurand": "Current.Export", "unit": "A"},
                    ],
                }
            ],
        )
    rows = {r["measurand"]: r for r in await stored(server)}
    assert (rows["Power.Active.Import"]["value"], rows["Power.Active.Import"]["raw_value"]) == (
        42.5,
        "42.5",
    )
    assert (rows["Current.Import"]["value"], rows["Current.Import"]["raw_value"]) == (None, "abc")
    assert (rows["Current.Export"]["value"], rows["Current.Export"]["raw_value"]) == (-3.0, "-3")
    assert len(rows) == 3


async def test_m4_raw_and_signed_reading_side_by_side_both_stored(server: RunningServer) -> None:
    # CONFORMANCE M1 + M4: calibration-law meters send the plain reading and its signed twin in
    # one MeterValue (same timestamp, measurand, location); both are sampled values, both stored.
    await prepared(server)
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        tx = await start(cp, 1, 0)
        await meter_values(
            cp,
            1,
            tx,
            [
                {
                    "timestamp": T1,
                    "sampledValue": [
                        {"value": "1200", "context": "Transaction.Begin"},
                        {
                            "value": "OCMF|{...}|{...}",
                            "format": "SignedData",
                            "context": "Transaction.Begin",
                        },
                    ],
                }
            ],
        )
    rows = await stored(server)
    assert sorted((r["format"], r["raw_value"], r["value"]) for r in rows) == [
        ("Raw", "1200", 1200.0),
        ("SignedData", "OCMF|{...}|{...}", None),
    ]


async def test_m5_celcius_and_celsius_both_accepted(server: RunningServer) -> None:
    # CONFORMANCE M5: the schema's "Celcius" and the errata's "Celsius" are both accepted.
    await prepared(server)
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        tx = await start(cp, 1, 0)
        for timestamp, unit, value in ((T1, "Celcius", "21.5"), (T2, "Celsius", "23")):
            await meter_values(
                cp,
                1,
                tx,
                [
                    {
                        "timestamp": timestamp,
                        "sampledValue": [
                            {"value": value, "measurand": "Temperature", "unit": unit}
                        ],
                    }
                ],
            )
    rows = await stored(server)
    assert [(r["raw_unit"], r["value"]) for r in rows] == [("Celcius", 21.5), ("Celsius", 23.0)]
    # One quantity, one stored unit, whichever spelling the charge point used.
    assert rows[0]["unit"] == rows[1]["unit"]


async def test_m6_values_without_session_stored_against_connector(server: RunningServer) -> None:
    # CONFORMANCE M6: connector 0 and clock-aligned values without transactionId -> NULL session.
    await prepared(server)
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        await meter_values(
            cp,
            0,
            None,
            [
                {
                    "timestamp": T1,
                    "sampledValue": [
                        {"value": "98765", "context": "Sample.Clock", "location": "Inlet"}
                    ],
                }
            ],
        )
        await meter_values(
            cp,
            1,
            None,
            [{"timestamp": T1, "sampledValue": [{"value": "4321", "context": "Sample.Clock"}]}],
        )
    rows = await stored(server)
    assert [
        (r["connector_id"], r["transaction_id"], r["location"], r["context"], r["value"])
        for r in rows
    ] == [
        (0, None, "Inlet", "Sample.Clock", 98765.0),
        (1, None, "Outlet", "Sample.Clock", 4321.0),
    ]


async def test_m8_kilo_units_normalised(server: RunningServer) -> None:
    # CONFORMANCE M8: kWh -> Wh and kW -> W in value; raw_unit and raw_value keep what was sent.
    await prepared(server)
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        tx = await start(cp, 1, 0)
        await meter_values(
            cp,
            1,
            tx,
            [
                {
                    "timestamp": T1,
                    "sampledValue": [
                        {"value": "1.5", "unit": "kWh"},
                        {"value": "7.25", "unit": "kW", "measurand": "Power.Active.Import"},
                        {
                            "value": "250",
                            "unit": "Wh",
                            "measurand": "Energy.Active.Export.Register",
                        },
                    ],
                }
            ],
        )
    rows = {r["measurand"]: r for r in await stored(server)}
    assert {m: (r["value"], r["unit"], r["raw_value"], r["raw_unit"]) for m, r in rows.items()} == {
        "Energy.Active.Import.Register": (1500.0, "Wh", "1.5", "kWh"),
        "Power.Active.Import": (7250.0, "W", "7.25", "kW"),
        "Energy.Active.Export.Register": (250.0, "Wh", "250", "Wh"),
    }


async def register_session(
    server: RunningServer, meter_start: int, readings: list[tuple[str, str]], meter_stop: int
) -> float:
    """Start, one MeterValues per (timestamp, Wh reading), Stop; the stored energy_wh."""
    await prepared(server)
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        tx = await start(cp, 1, meter_start, T0)
        for timestamp, reading in readings:
            await meter_values(
                cp, 1, tx, [{"timestamp": timestamp, "sampledValue": [{"value": reading}]}]
            )
        await send(
            cp,
            call.StopTransaction(
                meter_stop=meter_stop, timestamp="2024-05-01T11:00:00Z", transaction_id=tx
            ),
        )
    energy: float = await server.scalar("SELECT energy_wh FROM transactions")
    return energy


async def test_m8_register_reset_gives_no_negative_energy(server: RunningServer) -> None:
    # CONFORMANCE M8: 5000 -> 6000, reset, 100 -> 600. A register resets to 0, so the 100 read
    # after the reset was charged too: 1000 before the reset + 100 + 500 after it.
    energy = await register_session(server, 5000, [(T1, "6000"), (T2, "100")], 600)
    assert energy == 1600.0


async def test_m8_register_reset_counted_when_stop_exceeds_start(server: RunningServer) -> None:
    # CONFORMANCE M8: 5000 -> 6000, reset, 100 -> 5500 -> 5600. The register ends above
    # meterStart, but meterStop - meterStart (600) would still drop the 5500 Wh after the reset:
    # at least 1000 + 5500 were charged.
    energy = await register_session(server, 5000, [(T1, "6000"), (T2, "100"), (T3, "5500")], 5600)
    assert energy >= 6500.0


async def test_m8_duplicate_meter_values_stored_once(server: RunningServer) -> None:
    # Guarantee 2 (M8 duplicates): the same MeterValues sent twice -> stored once, both answered;
    # also without a transaction (NULL transaction_id must still collide).
    await prepared(server)
    with_tx = [
        {
            "timestamp": T1,
            "sampledValue": [
                {"value": "1200"},
                {"value": "16", "measurand": "Current.Import", "unit": "A", "phase": "L1"},
            ],
        }
    ]
    without_tx = [
        {"timestamp": T1, "sampledValue": [{"value": "98765", "context": "Sample.Clock"}]}
    ]
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        tx = await start(cp, 1, 0)
        await meter_values(cp, 1, tx, with_tx)
        await meter_values(cp, 0, None, without_tx)
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        await meter_values(cp, 1, tx, with_tx)
        await meter_values(cp, 0, None, without_tx)
    rows = await stored(server)
    assert sorted((r["connector_id"], r["transaction_id"], r["measurand"]) for r in rows) == sorted(
        [
            (1, tx, "Energy.Active.Import.Register"),
            (1, tx, "Current.Import"),
            (0, None, "Energy.Active.Import.Register"),
        ],
        key=lambda t: (t[0], t[1] or 0, t[2]),
    )
