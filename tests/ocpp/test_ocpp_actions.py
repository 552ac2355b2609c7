"""The action table against the spec lists and the schema files actually shipped."""

from __future__ import annotations

from importlib import resources

from ocpp.v16.enums import Action

from chargegrid.ocpp.actions import ACTIONS, CP_INITIATED, CSMS_INITIATED, Direction

SCHEMA_DIR = resources.files("ocpp") / "v16" / "schemas"

EXPECTED_CP = {
    "Authorize",
    "BootNotification",
    "DataTransfer",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "StartTransaction",
    "StatusNotification",
    "StopTransaction",
    "SecurityEventNotification",
    "SignCertificate",
    "LogStatusNotification",
    "SignedFirmwareStatusNotification",
}
EXPECTED_CSMS = {
    "CancelReservation",
    "ChangeAvailability",
    "ChangeConfiguration",
    "ClearCache",
    "ClearChargingProfile",
    "DataTransfer",
    "GetCompositeSchedule",
    "GetConfiguration",
    "GetDiagnostics",
    "GetLocalListVersion",
    "RemoteStartTransaction",
    "RemoteStopTransaction",
    "ReserveNow",
    "Reset",
    "SendLocalList",
    "SetChargingProfile",
    "TriggerMessage",
    "UnlockConnector",
    "UpdateFirmware",
    "ExtendedTriggerMessage",
    "GetLog",
    "SignedUpdateFirmware",
    "InstallCertificate",
    "GetInstalledCertificateIds",
    "DeleteCertificate",
    "CertificateSigned",
}


def test_there_are_39_actions() -> None:
    assert len(ACTIONS) == 39


def test_directions_match_the_spec_lists() -> None:
    assert set(CP_INITIATED) == EXPECTED_CP
    assert set(CSMS_INITIATED) == EXPECTED_CSMS


def test_data_transfer_flows_both_ways_and_only_it() -> None:
    assert ACTIONS["DataTransfer"] is Direction.BOTH
    assert {"DataTransfer"} == CP_INITIATED & CSMS_INITIATED
    assert set(ACTIONS) == CP_INITIATED | CSMS_INITIATED


def test_every_action_has_a_request_and_a_response_schema() -> None:
    for action in ACTIONS:
        assert (SCHEMA_DIR / f"{action}.json").is_file(), action
        assert (SCHEMA_DIR / f"{action}Response.json").is_file(), action


def test_every_shipped_schema_belongs_to_an_action() -> None:
    names = {entry.name for entry in SCHEMA_DIR.iterdir() if entry.name.endswith(".json")}
    actions = {name.removesuffix(".json").removesuffix("Response") for name in names}
    assert actions == set(ACTIONS)
    assert len(names) == 2 * len(ACTIONS)


def test_matches_the_ocpp_package_action_enum() -> None:
    assert {action.value for action in Action} == set(ACTIONS)


def test_table_is_read_only() -> None:
    assert not hasattr(ACTIONS, "__setitem__")
