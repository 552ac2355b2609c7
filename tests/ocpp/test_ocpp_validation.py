"""Schema validation with the shipped OCPP 1.6 schemas, mapped to OCPP-J 1.6 Table 7 codes."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from chargegrid.ocpp.actions import ACTIONS
from chargegrid.ocpp.errors import ErrorCode, OcppError
from chargegrid.ocpp.schemas import compile_all, request_validator, response_validator
from chargegrid.ocpp.validation import (
    validate_outgoing_call,
    validate_request,
    validate_response,
)

TYPE = ErrorCode.TYPE_CONSTRAINT_VIOLATION
PROPERTY = ErrorCode.PROPERTY_CONSTRAINT_VIOLATION
OCCURENCE = ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION
FORMATION = ErrorCode.FORMATION_VIOLATION

TS = "2024-01-15T10:30:00Z"


def boot(**fields: Any) -> dict[str, Any]:
    return {"chargePointVendor": "ACME", "chargePointModel": "X1", **fields}


def status(**fields: Any) -> dict[str, Any]:
    return {"connectorId": 1, "errorCode": "NoError", "status": "Available", **fields}


def sampled(**fields: Any) -> dict[str, Any]:
    return {"value": "1234.5", **fields}


def meter(*samples: dict[str, Any], **fields: Any) -> dict[str, Any]:
    value = {"timestamp": TS, "sampledValue": list(samples) or [sampled()]}
    return {"connectorId": 1, "meterValue": [value], **fields}


def profile(limit: float) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "csChargingProfiles": {
            "chargingProfileId": 1,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
                "startSchedule": TS,
            },
        },
    }


def error_of(action: str, payload: Any, *, response: bool = False) -> OcppError:
    validate = validate_response if response else validate_request
    with pytest.raises(OcppError) as caught:
        validate(action, payload)
    return caught.value


VALID_REQUESTS = [
    ("BootNotification", boot()),
    ("BootNotification", boot(chargePointVendor="V" * 20, iccid="1" * 20, meterSerialNumber="m")),
    ("Heartbeat", {}),
    ("StatusNotification", status(timestamp=TS, info="ok", vendorErrorCode="E1")),
    ("StatusNotification", status(connectorId=0, status="Faulted", errorCode="OtherError")),
    ("MeterValues", meter()),
    (
        "MeterValues",
        meter(
            sampled(measurand="Energy.Active.Import.Register", unit="kWh", context="Trigger"),
            sampled(measurand="Voltage", phase="L1-N", location="Inlet", unit="V"),
            sampled(measurand="Temperature", unit="Celcius", location="Body"),
            sampled(measurand="Temperature", unit="Celsius", format="SignedData"),
            transactionId=7,
        ),
    ),
    ("Authorize", {"idTag": "T" * 20}),
    ("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": TS}),
    ("StopTransaction", {"transactionId": 1, "meterStop": 10, "timestamp": TS}),
    ("DataTransfer", {"vendorId": "com.acme", "messageId": "m", "data": "{}"}),
    ("SecurityEventNotification", {"type": "FirmwareUpdated", "timestamp": TS}),
    ("LogStatusNotification", {"status": "Uploaded", "requestId": 3}),
    ("SetChargingProfile", profile(7.3)),
    ("SetChargingProfile", profile(16)),
    ("GetDiagnostics", {"location": "ftp://user:pw@example.com/diag"}),
    (
        "SignedUpdateFirmware",
        {
            "requestId": 1,
            "firmware": {
                "location": "https://example.com/fw.bin",
                "retrieveDateTime": "2024-01-15T10:30:00.5+01:00",
                "signingCertificate": "-----BEGIN CERTIFICATE-----",
                "signature": "c2ln",
            },
        },
    ),
]


@pytest.mark.parametrize(("action", "payload"), VALID_REQUESTS)
def test_valid_requests_pass_and_are_not_modified(action: str, payload: dict[str, Any]) -> None:
    before = copy.deepcopy(payload)
    validate_request(action, payload)
    assert payload == before


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("BootNotification", {"status": "Accepted", "currentTime": TS, "interval": 300}),
        ("Heartbeat", {"currentTime": "2024-01-15T10:30:00.123+02:00"}),
        ("StartTransaction", {"transactionId": 1, "idTagInfo": {"status": "ConcurrentTx"}}),
        ("GetConfiguration", {}),
        ("GetConfiguration", {"configurationKey": [{"key": "K", "readonly": True}]}),
        ("DataTransfer", {"status": "UnknownVendorId"}),
        ("GetInstalledCertificateIds", {"status": "NotFound"}),
    ],
)
def test_valid_responses_pass(action: str, payload: dict[str, Any]) -> None:
    validate_response(action, payload)


@pytest.mark.parametrize(
    ("action", "payload", "code", "field"),
    [
        # Wrong JSON type -> TypeConstraintViolation.
        ("MeterValues", meter(connectorId="1"), TYPE, "connectorId"),
        ("MeterValues", meter(connectorId=1.5), TYPE, "connectorId"),
        ("MeterValues", meter(connectorId=True), TYPE, "connectorId"),
        ("MeterValues", meter(sampled(value=12.5)), TYPE, "meterValue[0].sampledValue[0].value"),
        ("MeterValues", {"connectorId": 1, "meterValue": {}}, TYPE, "meterValue"),
        ("StatusNotification", status(status=5), TYPE, "status"),
        ("BootNotification", boot(chargePointModel=None), TYPE, "chargePointModel"),
        ("Heartbeat", [], TYPE, ""),
        # Invalid date-time -> TypeConstraintViolation.
        ("StatusNotification", status(timestamp="yesterday"), TYPE, "timestamp"),
        ("StatusNotification", status(timestamp="2024-13-45T00:00:00Z"), TYPE, "timestamp"),
        (
            "StartTransaction",
            {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2024-01-15T10:30:00"},
            TYPE,
            "timestamp",
        ),
        (
            "SecurityEventNotification",
            {"type": "X", "timestamp": "2024-02-30T00:00:00Z"},
            TYPE,
            "timestamp",
        ),
        # Bad enum value, too long -> PropertyConstraintViolation.
        ("StatusNotification", status(status="Broken"), PROPERTY, "status"),
        ("StatusNotification", status(errorCode="Oops"), PROPERTY, "errorCode"),
        ("StatusNotification", status(status="available"), PROPERTY, "status"),
        (
            "MeterValues",
            meter(sampled(unit="Kelvin")),
            PROPERTY,
            "meterValue[0].sampledValue[0].unit",
        ),
        (
            "MeterValues",
            meter(sampled(), sampled(phase="L4")),
            PROPERTY,
            "meterValue[0].sampledValue[1].phase",
        ),
        ("BootNotification", boot(chargePointVendor="V" * 21), PROPERTY, "chargePointVendor"),
        ("Authorize", {"idTag": "T" * 21}, PROPERTY, "idTag"),
        ("LogStatusNotification", {"status": "Done"}, PROPERTY, "status"),
        (
            "SecurityEventNotification",
            {"type": "X", "timestamp": TS, "techInfo": "i" * 256},
            PROPERTY,
            "techInfo",
        ),
        (
            "SetChargingProfile",
            profile(7.35),
            PROPERTY,
            "csChargingProfiles.chargingSchedule.chargingSchedulePeriod[0].limit",
        ),
        # Missing required / too few items -> OccurenceConstraintViolation.
        ("BootNotification", {"chargePointModel": "X1"}, OCCURENCE, "chargePointVendor"),
        (
            "StartTransaction",
            {"connectorId": 1, "idTag": "T", "meterStart": 0},
            OCCURENCE,
            "timestamp",
        ),
        ("MeterValues", {"connectorId": 1, "meterValue": []}, OCCURENCE, "meterValue"),
        (
            "MeterValues",
            {"connectorId": 1, "meterValue": [{"timestamp": TS, "sampledValue": []}]},
            OCCURENCE,
            "meterValue[0].sampledValue",
        ),
        (
            "MeterValues",
            {"connectorId": 1, "meterValue": [{"sampledValue": [sampled()]}]},
            OCCURENCE,
            "meterValue[0].timestamp",
        ),
        ("MeterValues", meter({"unit": "Wh"}), OCCURENCE, "meterValue[0].sampledValue[0].value"),
        (
            "SignedUpdateFirmware",
            {
                "requestId": 1,
                "firmware": {"location": "x", "retrieveDateTime": TS, "signingCertificate": "c"},
            },
            OCCURENCE,
            "firmware.signature",
        ),
        # Property the schema does not allow -> FormationViolation.
        ("Heartbeat", {"foo": 1}, FORMATION, "foo"),
        ("BootNotification", boot(firmware="1.0"), FORMATION, "firmware"),
        ("MeterValues", meter(sampled(foo="bar")), FORMATION, "meterValue[0].sampledValue[0].foo"),
        ("DataTransfer", {"vendorId": "v", "customData": {}}, FORMATION, "customData"),
    ],
)
def test_request_errors_map_to_table_7_codes(
    action: str, payload: Any, code: ErrorCode, field: str
) -> None:
    error = error_of(action, payload)
    assert (error.code, error.details) == (code, {"field": field})
    assert error.description.startswith(f"{field or 'payload'}: ")


def test_type_error_description_names_field_and_type() -> None:
    assert error_of("MeterValues", meter(connectorId="1")).description == (
        "connectorId: must be integer"
    )


def test_enum_error_description_lists_the_allowed_values() -> None:
    description = error_of("StatusNotification", status(status="Broken")).description
    assert description.startswith("status: must be one of Available, Preparing, Charging")


def test_date_time_error_description_gives_an_example() -> None:
    description = error_of("StatusNotification", status(timestamp="yesterday")).description
    assert "date-time" in description and "2024-01-15T10:30:00Z" in description


def test_descriptions_carry_no_traceback_or_internal_names() -> None:
    for action, payload in [("Heartbeat", {"foo": 1}), ("BootNotification", {})]:
        error = error_of(action, payload)
        assert "Traceback" not in error.description
        assert "data" not in error.description.split(":")[0]


@pytest.mark.parametrize(
    ("action", "payload", "code", "field"),
    [
        (
            "BootNotification",
            {"status": "Maybe", "currentTime": TS, "interval": 1},
            PROPERTY,
            "status",
        ),
        ("BootNotification", {"status": "Accepted", "currentTime": TS}, OCCURENCE, "interval"),
        ("Heartbeat", {"currentTime": "now"}, TYPE, "currentTime"),
        ("Reset", {"status": "Accepted", "extra": 1}, FORMATION, "extra"),
        (
            "GetInstalledCertificateIds",
            {"status": "Accepted", "certificateHashData": []},
            OCCURENCE,
            "certificateHashData",
        ),
        (
            "GetInstalledCertificateIds",
            {"status": "Accepted", "certificateHashData": [{"hashAlgorithm": "MD5"}]},
            OCCURENCE,
            "certificateHashData[0].issuerNameHash",
        ),
        (
            "StartTransaction",
            {"transactionId": "1", "idTagInfo": {"status": "Accepted"}},
            TYPE,
            "transactionId",
        ),
    ],
)
def test_response_errors_map_to_table_7_codes(
    action: str, payload: Any, code: ErrorCode, field: str
) -> None:
    error = error_of(action, payload, response=True)
    assert (error.code, error.details) == (code, {"field": field})


def test_uri_format_is_checked_on_outgoing_get_diagnostics() -> None:
    error = error_of("GetDiagnostics", {"location": "not a uri"})
    assert (error.code, error.details) == (TYPE, {"field": "location"})


@pytest.mark.parametrize("action", ["Foo", "", "GetVariables", "heartbeat", "HeartbeatResponse"])
def test_unknown_action_is_not_implemented(action: str) -> None:
    assert error_of(action, {}).code is ErrorCode.NOT_IMPLEMENTED
    assert error_of(action, {}, response=True).code is ErrorCode.NOT_IMPLEMENTED


def test_outgoing_call_of_a_charge_point_action_is_not_supported() -> None:
    with pytest.raises(OcppError) as caught:
        validate_outgoing_call("BootNotification", boot())
    assert caught.value.code is ErrorCode.NOT_SUPPORTED


def test_outgoing_call_validates_the_payload() -> None:
    validate_outgoing_call("Reset", {"type": "Soft"})
    validate_outgoing_call("DataTransfer", {"vendorId": "com.acme"})
    with pytest.raises(OcppError) as caught:
        validate_outgoing_call("Reset", {"type": "Sideways"})
    assert caught.value.code is PROPERTY
    with pytest.raises(OcppError) as caught:
        validate_outgoing_call("Nope", {})
    assert caught.value.code is ErrorCode.NOT_IMPLEMENTED


@pytest.mark.parametrize("limit", [math.nan, math.inf, 10**400])
def test_numbers_python_cannot_check_become_an_ocpp_error(limit: float) -> None:
    assert error_of("SetChargingProfile", profile(limit)).code is PROPERTY


def test_compile_all_compiles_every_schema_and_caches_it() -> None:
    compile_all()
    for action in ACTIONS:
        assert request_validator(action) is request_validator(action)
        assert response_validator(action) is response_validator(action)
        assert request_validator(action) is not response_validator(action)


def test_unknown_action_has_no_validator() -> None:
    with pytest.raises(KeyError):
        request_validator("Foo")
