"""OcppSession with our own CALLs: pending call, answers, timeouts (CONFORMANCE R7, R11)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from chargegrid.ocpp.actions import CP_INITIATED
from chargegrid.ocpp.errors import ErrorCode, OcppError
from chargegrid.ocpp.frames import Call
from chargegrid.ocpp.session import (
    Ignored,
    IncomingCall,
    IncomingError,
    IncomingResult,
    OcppSession,
    Reply,
)

RESET = {"type": "Soft"}


def session(**options: Any) -> OcppSession:
    options.setdefault("supported", CP_INITIATED)
    options.setdefault("accepted", True)
    return OcppSession(**options)


def pending_session(
    action: str = "Reset", payload: Any = None, **options: Any
) -> tuple[OcppSession, Call]:
    s = session(**options)
    return s, s.call(action, RESET if payload is None else payload)


def result(message_id: Any, payload: Any) -> str:
    return json.dumps([3, message_id, payload])


def error(message_id: Any, *rest: Any) -> str:
    return json.dumps([4, message_id, *rest])


# --- call() and encode() -------------------------------------------------------------------


def test_call_records_a_pending_call_with_a_uuid_id() -> None:
    s = session()
    before = s.pending
    call = s.call("Reset", RESET)
    assert before is None
    assert s.pending is call
    assert (call.action, call.payload) == ("Reset", RESET)
    assert len(call.message_id) <= 36
    assert uuid.UUID(call.message_id).version == 4


def test_encode_gives_the_call_frame() -> None:
    s = session()
    call = s.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"})
    frame = json.loads(s.encode(call))
    assert frame == [2, call.message_id, "ChangeConfiguration", call.payload]


def test_message_ids_are_unique() -> None:
    s = session()
    ids = set()
    for _ in range(50):
        call = s.call("ClearCache", {})
        ids.add(call.message_id)
        s.cancel(call.message_id)
    assert len(ids) == 50


def test_only_one_call_in_flight() -> None:
    s, first = pending_session()
    with pytest.raises(RuntimeError, match=first.message_id):
        s.call("ClearCache", {})
    assert s.pending is first


@pytest.mark.parametrize(
    ("action", "payload", "code"),
    [
        ("Reset", {}, ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION),
        ("Reset", {"type": "Sideways"}, ErrorCode.PROPERTY_CONSTRAINT_VIOLATION),
        ("Reset", {"type": "Soft", "now": True}, ErrorCode.FORMATION_VIOLATION),
        ("UnlockConnector", {"connectorId": "1"}, ErrorCode.TYPE_CONSTRAINT_VIOLATION),
        (
            "ReserveNow",
            {"connectorId": 1, "expiryDate": "tomorrow", "idTag": "T", "reservationId": 1},
            ErrorCode.TYPE_CONSTRAINT_VIOLATION,
        ),
        (
            "BootNotification",
            {"chargePointVendor": "A", "chargePointModel": "B"},
            ErrorCode.NOT_SUPPORTED,
        ),
        ("Heartbeat", {}, ErrorCode.NOT_SUPPORTED),
        ("Foo", {}, ErrorCode.NOT_IMPLEMENTED),
        (
            "ChangeConfiguration",
            {"key": "K", "value": "\ud800"},
            ErrorCode.TYPE_CONSTRAINT_VIOLATION,
        ),
        ("UnlockConnector", {"connectorId": 2**70}, ErrorCode.TYPE_CONSTRAINT_VIOLATION),
    ],
)
def test_call_refuses_what_may_not_be_sent(
    action: str, payload: dict[str, Any], code: ErrorCode
) -> None:
    s = session()
    with pytest.raises(OcppError) as caught:
        s.call(action, payload)
    assert caught.value.code is code
    assert s.pending is None


def test_data_transfer_can_be_sent_too() -> None:
    assert session().call("DataTransfer", {"vendorId": "com.acme"}).action == "DataTransfer"


# --- answers -------------------------------------------------------------------------------


def test_callresult_for_the_pending_call() -> None:
    s, call = pending_session()
    event = s.receive(result(call.message_id, {"status": "Accepted"}))
    assert event == IncomingResult(call, {"status": "Accepted"})
    assert s.pending is None
    s.call("ClearCache", {})


def test_callresult_null_payload_is_empty_object() -> None:
    s, call = pending_session("GetConfiguration", {})
    assert s.receive(result(call.message_id, None)) == IncomingResult(call, {})


def test_callerror_for_the_pending_call() -> None:
    s, call = pending_session()
    event = s.receive(error(call.message_id, "NotSupported", "no reset here", {"hint": 1}))
    assert event == IncomingError(call, "NotSupported", "no reset here", {"hint": 1})
    assert s.pending is None


def test_callerror_with_null_details_and_an_unknown_code() -> None:
    s, call = pending_session()
    event = s.receive(error(call.message_id, "FormatViolation", "", None))
    assert event == IncomingError(call, "FormatViolation", "", {})


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        ({"status": "Maybe"}, "PropertyConstraintViolation", "status"),
        ({}, "OccurenceConstraintViolation", "status"),
        ({"status": 1}, "TypeConstraintViolation", "status"),
        ({"status": "Accepted", "x": 1}, "FormationViolation", "x"),
    ],
)
def test_invalid_callresult_becomes_incoming_error(
    payload: dict[str, Any], code: str, field: str
) -> None:
    s, call = pending_session()
    event = s.receive(result(call.message_id, payload))
    assert isinstance(event, IncomingError)
    assert (event.call, event.code, event.details) == (call, code, {"field": field})
    assert event.description.startswith(f"invalid response: {field}: ")
    assert s.pending is None


def test_response_validation_can_be_switched_off() -> None:
    s, call = pending_session(validate_responses=False)
    assert s.receive(result(call.message_id, {"status": "Maybe"})) == IncomingResult(
        call, {"status": "Maybe"}
    )


@pytest.mark.parametrize(
    "text_for",
    [
        lambda i: json.dumps([3, i, []]),
        lambda i: json.dumps([3, i, "Accepted"]),
        lambda i: json.dumps([3, i]),
        lambda i: json.dumps([3, i, {"status": "Accepted"}, {}]),
    ],
)
def test_malformed_callresult_for_the_pending_call_fails_it(text_for: Any) -> None:
    s, call = pending_session(validate_responses=False)
    event = s.receive(text_for(call.message_id))
    assert isinstance(event, IncomingError)
    assert (event.call, event.code) == (call, "FormationViolation")
    assert event.description.startswith("invalid response: ")
    assert s.pending is None


@pytest.mark.parametrize(
    "text_for",
    [
        lambda i: json.dumps([4, i, "GenericError", "no details"]),
        lambda i: json.dumps([4, i, "GenericError", "d", {}, "extra"]),
        lambda i: json.dumps([4, i, 7, "d", {}]),
        lambda i: json.dumps([4, i, "GenericError", None, {}]),
        lambda i: json.dumps([4, i, "GenericError", "d", []]),
        lambda i: json.dumps([4, i, "GenericError", "d", "details"]),
        lambda i: f'[4,"{i}","GenericError",',
    ],
)
def test_malformed_callerror_is_ignored_and_the_call_stays_pending(text_for: Any) -> None:
    s, call = pending_session()
    assert isinstance(s.receive(text_for(call.message_id)), Ignored)
    assert s.pending is call


# --- R7: answers to nothing ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        result("unknown", {"status": "Accepted"}),
        error("unknown", "GenericError", "", {}),
        result(None, {}),
        result(1, {}),
        "[3]",
        "[4]",
    ],
)
def test_answer_for_an_unknown_id_is_ignored(text: str) -> None:
    s, call = pending_session()
    event = s.receive(text)
    assert isinstance(event, Ignored)
    assert "no pending call" in event.reason
    assert s.pending is call


@pytest.mark.parametrize("text", [result("x", {}), error("x", "GenericError", "", {})])
def test_answer_without_any_pending_call_is_ignored(text: str) -> None:
    assert isinstance(session().receive(text), Ignored)


def test_answer_is_consumed_once() -> None:
    s, call = pending_session()
    s.receive(result(call.message_id, {"status": "Accepted"}))
    assert isinstance(s.receive(result(call.message_id, {"status": "Accepted"})), Ignored)


# --- timeouts ------------------------------------------------------------------------------


def test_cancel_forgets_the_call_and_a_late_answer_is_ignored() -> None:
    s, call = pending_session()
    s.cancel(call.message_id)
    assert s.pending is None
    assert isinstance(s.receive(result(call.message_id, {"status": "Accepted"})), Ignored)
    assert isinstance(s.receive(error(call.message_id, "GenericError", "", {})), Ignored)


def test_cancel_of_another_id_changes_nothing() -> None:
    s, call = pending_session()
    s.cancel("something-else")
    assert s.pending is call


def test_cancel_then_a_new_call() -> None:
    s, first = pending_session()
    s.cancel(first.message_id)
    second = s.call("ClearCache", {})
    assert second.message_id != first.message_id
    assert isinstance(s.receive(result(first.message_id, {"status": "Accepted"})), Ignored)
    assert s.receive(result(second.message_id, {"status": "Accepted"})) == IncomingResult(
        second, {"status": "Accepted"}
    )


# --- both directions at once ---------------------------------------------------------------


def test_incoming_calls_and_our_pending_call_do_not_interfere() -> None:
    s, call = pending_session()
    # The charge point may reuse our id for its own CALL: ids are per sender.
    incoming = s.receive(json.dumps([2, call.message_id, "Heartbeat", {}]))
    assert isinstance(incoming, IncomingCall)
    assert s.pending is call
    assert s.receive(result(call.message_id, {"status": "Accepted"})) == IncomingResult(
        call, {"status": "Accepted"}
    )


def test_answers_are_taken_before_acceptance() -> None:
    s, call = pending_session("GetConfiguration", {}, accepted=False)
    assert s.receive(result(call.message_id, {})) == IncomingResult(call, {})


def test_a_pending_charge_point_may_send_what_trigger_message_asked_for_once() -> None:
    """OCPP 1.6 §4.2.1: while Pending, a message the CSMS triggered gets through, once."""
    session = OcppSession(supported={"StatusNotification", "Heartbeat", "BootNotification"})
    status = (
        '[2,"s%d","StatusNotification",'
        '{"connectorId":1,"errorCode":"NoError","status":"Available"}]'
    )
    refused = session.receive(status % 1)
    assert isinstance(refused, Reply) and refused.code is ErrorCode.SECURITY_ERROR
    call = session.call("TriggerMessage", {"requestedMessage": "StatusNotification"})
    answer = session.receive(f'[3,"{call.message_id}",{{"status":"Accepted"}}]')
    assert isinstance(answer, IncomingResult)
    assert isinstance(session.receive(status % 2), IncomingCall)
    session.result("s2", {})
    again = session.receive(status % 3)  # only once
    assert isinstance(again, Reply) and again.code is ErrorCode.SECURITY_ERROR
    assert isinstance(session.receive('[2,"h1","Heartbeat",{}]'), Reply)  # not asked for
    rejected = session.call("TriggerMessage", {"requestedMessage": "Heartbeat"})
    session.receive(f'[3,"{rejected.message_id}",{{"status":"Rejected"}}]')
    assert isinstance(session.receive('[2,"h2","Heartbeat",{}]'), Reply)  # refused trigger
