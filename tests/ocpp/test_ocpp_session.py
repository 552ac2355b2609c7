"""OcppSession with incoming CALLs: CONFORMANCE R1-R10, strings in, events and frames out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chargegrid.ocpp.actions import CP_INITIATED
from chargegrid.ocpp.errors import ErrorCode
from chargegrid.ocpp.frames import Call
from chargegrid.ocpp.session import (
    Ignored,
    IncomingCall,
    OcppSession,
    Reply,
)

TS = "2024-01-15T10:30:00Z"
BOOT = {"chargePointVendor": "ACME", "chargePointModel": "X1"}
STATUS = {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": TS}
METER = {
    "connectorId": 1,
    "transactionId": 42,
    "meterValue": [
        {
            "timestamp": TS,
            "sampledValue": [
                {"value": "1234.5", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                {"value": "7.4", "measurand": "Power.Active.Import", "unit": "kW"},
                {"value": "32", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
            ],
        }
    ],
}


def session(**options: Any) -> OcppSession:
    options.setdefault("supported", CP_INITIATED)
    options.setdefault("accepted", True)
    return OcppSession(**options)


def call(message_id: Any, action: Any, payload: Any) -> str:
    return json.dumps([2, message_id, action, payload])


def replied(event: object, code: ErrorCode, message_id: str) -> list[Any]:
    """Assert ``event`` is a Reply with ``code`` for ``message_id``; return the decoded frame."""
    assert isinstance(event, Reply), event
    frame: list[Any] = json.loads(event.text)
    assert len(frame) == 5
    assert frame[:3] == [4, message_id, code.value]
    assert frame[3] == event.description
    assert isinstance(frame[4], dict)
    assert event.code is code
    return frame


# --- the happy path ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("BootNotification", BOOT),
        ("Heartbeat", {}),
        ("StatusNotification", STATUS),
        ("MeterValues", METER),
        ("Authorize", {"idTag": "TAG1"}),
        ("DataTransfer", {"vendorId": "com.acme", "data": "x"}),
    ],
)
def test_valid_call_becomes_incoming_call(action: str, payload: dict[str, Any]) -> None:
    event = session().receive(call("m-1", action, payload))
    assert event == IncomingCall(Call("m-1", action, payload))


def test_bytes_frames_are_accepted_too() -> None:
    event = session().receive(call("m-1", "Heartbeat", {}).encode())
    assert event == IncomingCall(Call("m-1", "Heartbeat", {}))


def test_result_answers_and_round_trips() -> None:
    s = session()
    event = s.receive(call("m-1", "Heartbeat", {}))
    assert isinstance(event, IncomingCall)
    text = s.result(event.call.message_id, {"currentTime": TS})
    assert json.loads(text) == [3, "m-1", {"currentTime": TS}]


# --- R1: invalid JSON, bad framing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message_id"),
    [
        ('[2,"abc","Heartbeat",{', "abc"),
        ('[2,"abc","Heartbeat",{"a":}]', "abc"),
        ('[2, "abc", "Heartbeat", {}] trailing', "abc"),
        ('[2,"abc"', "abc"),
        (b'[2,"abc","Heartbeat",{\xff}]', "abc"),
        ('[2,"with \\"quote\\"",', 'with "quote"'),
        ("[2,\"abc\",'Heartbeat',{}]", "abc"),
        ('[2,"abc","Heartbeat",{},]', "abc"),
        ('[2,"abc","Heartbeat",{"n":NaN}]', "abc"),
    ],
)
def test_invalid_json_with_readable_call_id_gets_formation_violation(
    text: str | bytes, message_id: str
) -> None:
    event = session().receive(text)
    replied(event, ErrorCode.FORMATION_VIOLATION, message_id)
    assert isinstance(event, Reply) and event.message_id == message_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "hello",
        "[",
        "[2,",
        "[2,abc",
        '[3,"abc",{',
        '[4,"abc","GenericError"',
        b"\xff\xfe",
        "{",
    ],
)
def test_invalid_json_without_readable_call_id_is_ignored(text: str | bytes) -> None:
    assert isinstance(session().receive(text), Ignored)


@pytest.mark.parametrize("text", ['{"a":1}', '"text"', "42", "null", "true", "[]"])
def test_json_that_is_not_a_frame_is_ignored(text: str) -> None:
    event = session().receive(text)
    assert isinstance(event, Ignored)
    assert event.reason


@pytest.mark.parametrize(
    "text",
    [
        '[2,"abc","Heartbeat"]',
        '[2,"abc"]',
        '[2,"abc","Heartbeat",{},{}]',
        '[2,"abc",7,{}]',
        '[2,"abc",null,{}]',
        '[2,"abc","Heartbeat",[]]',
        '[2,"abc","Heartbeat","{}"]',
        '[2,"abc","Heartbeat",0]',
        '[2,"abc","Heartbeat",false]',
    ],
)
def test_badly_shaped_call_with_readable_id_gets_formation_violation(text: str) -> None:
    replied(session().receive(text), ErrorCode.FORMATION_VIOLATION, "abc")


def test_call_without_any_id_is_ignored() -> None:
    assert isinstance(session().receive("[2]"), Ignored)


def test_rejected_frame_leaves_nothing_in_flight() -> None:
    s = session()
    s.receive('[2,"abc","Heartbeat",{')
    s.receive(call("abc", "Heartbeat", {"bad": 1}))
    assert isinstance(s.receive(call("abc", "Heartbeat", {})), IncomingCall)


# --- R2: unknown action --------------------------------------------------------------------


@pytest.mark.parametrize(
    "action",
    ["Foo", "", "heartbeat", "HeartbeatRequest", "BootNotificationResponse", "GetVariables"],
)
def test_unknown_action_is_not_implemented(action: str) -> None:
    replied(session().receive(call("m", action, {})), ErrorCode.NOT_IMPLEMENTED, "m")


def test_unknown_action_wins_over_a_bad_payload() -> None:
    replied(session().receive(call("m", "Foo", {"x": 1})), ErrorCode.NOT_IMPLEMENTED, "m")


def test_long_unknown_action_is_cut_short_in_the_description() -> None:
    event = session().receive(call("m", "X" * 5000, {}))
    assert isinstance(event, Reply) and len(event.description) < 200


# --- R3: wrong direction or unsupported ----------------------------------------------------


@pytest.mark.parametrize(
    "action", ["Reset", "RemoteStartTransaction", "GetConfiguration", "GetLog", "CertificateSigned"]
)
def test_central_system_action_sent_by_a_charge_point_is_not_supported(action: str) -> None:
    replied(session().receive(call("m", action, {})), ErrorCode.NOT_SUPPORTED, "m")


def test_charge_point_action_we_do_not_handle_is_not_supported() -> None:
    s = session(supported={"BootNotification", "Heartbeat"})
    replied(s.receive(call("m", "MeterValues", METER)), ErrorCode.NOT_SUPPORTED, "m")
    replied(s.receive(call("n", "DataTransfer", {"vendorId": "v"})), ErrorCode.NOT_SUPPORTED, "n")
    assert isinstance(s.receive(call("o", "Heartbeat", {})), IncomingCall)


def test_data_transfer_is_accepted_from_a_charge_point_when_supported() -> None:
    s = session(supported={"DataTransfer"})
    assert isinstance(s.receive(call("m", "DataTransfer", {"vendorId": "v"})), IncomingCall)


@pytest.mark.parametrize("supported", [{"Reset"}, {"Nope"}, {"Heartbeat", "heartbeat"}])
def test_supported_must_name_charge_point_actions(supported: set[str]) -> None:
    with pytest.raises(ValueError, match="not charge-point actions"):
        OcppSession(supported=supported)


# --- R4: payload validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "payload", "code", "field"),
    [
        (
            "StatusNotification",
            {**STATUS, "status": "Broken"},
            "PropertyConstraintViolation",
            "status",
        ),
        (
            "BootNotification",
            {"chargePointModel": "X1"},
            "OccurenceConstraintViolation",
            "chargePointVendor",
        ),
        ("MeterValues", {**METER, "connectorId": "1"}, "TypeConstraintViolation", "connectorId"),
        ("Heartbeat", {"extra": True}, "FormationViolation", "extra"),
        (
            "BootNotification",
            {**BOOT, "chargePointVendor": "V" * 21},
            "PropertyConstraintViolation",
            "chargePointVendor",
        ),
        (
            "StatusNotification",
            {**STATUS, "timestamp": "yesterday"},
            "TypeConstraintViolation",
            "timestamp",
        ),
        (
            "StatusNotification",
            {**STATUS, "timestamp": "2024-13-45T00:00:00Z"},
            "TypeConstraintViolation",
            "timestamp",
        ),
    ],
)
def test_invalid_payload_gets_the_table_7_code_and_names_the_field(
    action: str, payload: dict[str, Any], code: str, field: str
) -> None:
    event = session().receive(call("m", action, payload))
    frame = replied(event, ErrorCode(code), "m")
    assert frame[4] == {"field": field}
    assert frame[3].startswith(f"{field}: ")


def test_invalid_payload_is_not_left_in_flight() -> None:
    s = session()
    s.receive(call("m", "Heartbeat", {"extra": 1}))
    assert isinstance(s.receive(call("m", "Heartbeat", {})), IncomingCall)


# --- R5: message id ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_id", "echoed"),
    [
        ("", ""),
        ("x" * 37, "x" * 37),
        ("é" * 37, "é" * 37),
        (17, "17"),
        (-1.5, "-1.5"),
        (None, ""),
        (True, ""),
        ([1], ""),
        ({"id": 1}, ""),
    ],
)
def test_bad_message_id_gets_formation_violation(message_id: Any, echoed: str) -> None:
    event = session().receive(call(message_id, "Heartbeat", {}))
    replied(event, ErrorCode.FORMATION_VIOLATION, echoed)
    assert isinstance(event, Reply)
    assert event.message_id == (message_id if isinstance(message_id, str) else None)


@pytest.mark.parametrize("message_id", ["1", "x" * 36, "é" * 36, "19223201", " "])
def test_ids_of_1_to_36_characters_are_fine(message_id: str) -> None:
    assert isinstance(session().receive(call(message_id, "Heartbeat", {})), IncomingCall)


def test_bad_id_is_checked_before_the_action() -> None:
    replied(session().receive(call("", "Foo", {})), ErrorCode.FORMATION_VIOLATION, "")


# --- R6: id still in flight ----------------------------------------------------------------


def test_second_call_with_an_id_in_flight_is_a_protocol_error() -> None:
    s = session()
    first = s.receive(call("dup", "Heartbeat", {}))
    assert isinstance(first, IncomingCall)
    replied(s.receive(call("dup", "Heartbeat", {})), ErrorCode.PROTOCOL_ERROR, "dup")
    replied(s.receive(call("dup", "StatusNotification", STATUS)), ErrorCode.PROTOCOL_ERROR, "dup")
    # The duplicate check comes before the schema check.
    replied(s.receive(call("dup", "Heartbeat", {"x": 1})), ErrorCode.PROTOCOL_ERROR, "dup")


def test_original_stays_in_flight_until_answered() -> None:
    s = session()
    s.receive(call("dup", "Heartbeat", {}))
    s.receive(call("dup", "Heartbeat", {}))
    replied(s.receive(call("dup", "Heartbeat", {})), ErrorCode.PROTOCOL_ERROR, "dup")
    s.result("dup", {"currentTime": TS})
    assert isinstance(s.receive(call("dup", "Heartbeat", {})), IncomingCall)


def test_error_answer_also_ends_the_flight() -> None:
    s = session()
    s.receive(call("dup", "Heartbeat", {}))
    text = s.error("dup", ErrorCode.INTERNAL_ERROR, "internal error")
    assert json.loads(text) == [4, "dup", "InternalError", "internal error", {}]
    assert isinstance(s.receive(call("dup", "Heartbeat", {})), IncomingCall)


def test_several_different_ids_may_be_in_flight() -> None:
    s = session()
    assert isinstance(s.receive(call("a", "Heartbeat", {})), IncomingCall)
    assert isinstance(s.receive(call("b", "Heartbeat", {})), IncomingCall)


def test_answering_an_unknown_id_is_harmless() -> None:
    assert json.loads(session().result("never-seen", {})) == [3, "never-seen", {}]


# --- R7: unknown message types (CALLRESULT/CALLERROR ids: see test_ocpp_session_calls) -----


@pytest.mark.parametrize(
    "text",
    [
        '[5,"a",{}]',
        '[0,"a","Heartbeat",{}]',
        '[1,"a","Heartbeat",{}]',
        '[-2,"a","Heartbeat",{}]',
        '["2","a","Heartbeat",{}]',
        '[2.0,"a","Heartbeat",{}]',
        '[true,"a","Heartbeat",{}]',
        '[null,"a","Heartbeat",{}]',
        '[[2],"a","Heartbeat",{}]',
        "[18446744073709551617]",
    ],
)
def test_unknown_message_type_is_ignored(text: str) -> None:
    event = session().receive(text)
    assert isinstance(event, Ignored)
    assert "message type" in event.reason


# --- R8: a handler failed ------------------------------------------------------------------


def test_internal_error_answer_has_empty_details() -> None:
    s = session()
    s.receive(call("m", "MeterValues", METER))
    frame = json.loads(s.error("m", ErrorCode.INTERNAL_ERROR, "An internal error occurred"))
    assert frame == [4, "m", "InternalError", "An internal error occurred", {}]


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_can_be_sent(code: ErrorCode) -> None:
    frame = json.loads(session().error("m", code, "why", {"k": [1]}))
    assert frame == [4, "m", code.value, "why", {"k": [1]}]


# --- R9: null payload ----------------------------------------------------------------------


def test_null_payload_is_an_empty_object() -> None:
    event = session().receive('[2,"m","Heartbeat",null]')
    assert event == IncomingCall(Call("m", "Heartbeat", {}))


def test_null_payload_still_meets_required_fields() -> None:
    event = session().receive('[2,"m","Authorize",null]')
    frame = replied(event, ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION, "m")
    assert frame[4] == {"field": "idTag"}


def test_none_result_payload_is_sent_as_empty_object() -> None:
    assert json.loads(session().result("m", None)) == [3, "m", {}]


# --- R10: not accepted yet -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("Heartbeat", {}),
        ("StatusNotification", STATUS),
        ("MeterValues", METER),
        ("Authorize", {"idTag": "T"}),
    ],
)
def test_call_before_acceptance_is_a_security_error(action: str, payload: dict[str, Any]) -> None:
    replied(
        session(accepted=False).receive(call("m", action, payload)), ErrorCode.SECURITY_ERROR, "m"
    )


def test_boot_notification_is_allowed_before_acceptance() -> None:
    s = session(accepted=False)
    assert isinstance(s.receive(call("m", "BootNotification", BOOT)), IncomingCall)
    # And still validated.
    frame = replied(
        s.receive(call("n", "BootNotification", {})), ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION, "n"
    )
    assert frame[4] == {"field": "chargePointVendor"}


def test_accepting_lets_other_calls_through() -> None:
    s = session(accepted=False)
    replied(s.receive(call("m", "Heartbeat", {})), ErrorCode.SECURITY_ERROR, "m")
    s.accepted = True
    assert isinstance(s.receive(call("m", "Heartbeat", {})), IncomingCall)


def test_rejection_before_acceptance_can_be_switched_off() -> None:
    s = session(accepted=False, reject_before_accepted=False)
    assert isinstance(s.receive(call("m", "Heartbeat", {})), IncomingCall)


def test_default_session_is_not_accepted() -> None:
    s = OcppSession(supported=CP_INITIATED)
    assert s.accepted is False
    replied(s.receive(call("m", "Heartbeat", {})), ErrorCode.SECURITY_ERROR, "m")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('[2,"m","Heartbeat",{', ErrorCode.FORMATION_VIOLATION),
        (call("", "Heartbeat", {}), ErrorCode.FORMATION_VIOLATION),
        (call("m", "Foo", {}), ErrorCode.NOT_IMPLEMENTED),
        (call("m", "Reset", {"type": "Hard"}), ErrorCode.NOT_SUPPORTED),
        (call("m", "Heartbeat", {"not": "checked yet"}), ErrorCode.SECURITY_ERROR),
    ],
)
def test_acceptance_is_checked_after_framing_id_and_action(text: str, code: ErrorCode) -> None:
    event = session(accepted=False).receive(text)
    assert isinstance(event, Reply) and event.code is code


def test_unaccepted_call_does_not_enter_the_flight() -> None:
    s = session(accepted=False)
    s.receive(call("m", "Heartbeat", {}))
    s.accepted = True
    assert isinstance(s.receive(call("m", "Heartbeat", {})), IncomingCall)
