"""Frame encoders (OCPP-J 1.6 §4.2) and reading the id of a broken CALL (CONFORMANCE R1)."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError

import pytest

from chargegrid.ocpp.errors import ErrorCode
from chargegrid.ocpp.frames import (
    Call,
    CallError,
    CallResult,
    MessageType,
    encode_call,
    encode_error,
    encode_result,
    recover_call_id,
)


def test_message_type_numbers() -> None:
    assert (MessageType.CALL, MessageType.CALLRESULT, MessageType.CALLERROR) == (2, 3, 4)


def test_encode_call_round_trips() -> None:
    payload = {"type": "Hard"}
    assert json.loads(encode_call("id-1", "Reset", payload)) == [2, "id-1", "Reset", payload]


def test_encode_result_round_trips_non_ascii() -> None:
    payload = {"data": "Grüße ⚡", "status": "Accepted"}
    assert json.loads(encode_result("id-2", payload)) == [3, "id-2", payload]


def test_none_payload_is_sent_as_empty_object() -> None:
    assert json.loads(encode_result("id", None)) == [3, "id", {}]
    assert json.loads(encode_call("id", "ClearCache", None)) == [2, "id", "ClearCache", {}]


def test_encode_error_details_are_an_object_never_null() -> None:
    frame = json.loads(encode_error("id-3", ErrorCode.INTERNAL_ERROR))
    assert frame == [4, "id-3", "InternalError", "", {}]


def test_encode_error_keeps_description_and_details() -> None:
    text = encode_error("id-4", ErrorCode.TYPE_CONSTRAINT_VIOLATION, "x: bad", {"field": "x"})
    assert json.loads(text) == [4, "id-4", "TypeConstraintViolation", "x: bad", {"field": "x"}]


def test_encoders_return_str() -> None:
    assert isinstance(encode_call("a", "Reset", {}), str)
    assert isinstance(encode_result("a", {}), str)
    assert isinstance(encode_error("a", "GenericError"), str)


def test_value_objects_are_frozen_and_slotted() -> None:
    call = Call("a", "Reset", {})
    with pytest.raises(FrozenInstanceError):
        call.action = "Other"  # type: ignore[misc]
    for obj in (call, CallResult("a", {}), CallError("a", "GenericError", "", {})):
        assert not hasattr(obj, "__dict__")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('[2,"abc","Heartbeat",{', "abc"),
        ('  [ 2 ,\n "abc" , broken', "abc"),
        (b'[2,"abc","Heartbeat",{]', "abc"),
        ('[2,"a\\"b\\u00e9",', 'a"bé'),
        ('[2,"",', ""),
    ],
)
def test_recover_call_id_reads_the_id_of_a_broken_call(raw: str | bytes, expected: str) -> None:
    assert recover_call_id(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "hello",
        "[2,",
        '[2,abc,"Heartbeat"',
        '[3,"abc",{',  # CALLRESULTs are never answered (OCPP-J 1.6 §4.2.3)
        '[4,"abc","GenericError"',
        '[22,"abc",',
        '[2,"unterminated',
        '[2,"\\ud800",',  # lone surrogate escape: not a valid JSON string
        '[2,"\ud800",',  # lone surrogate in the text itself
        b'[2,"\xff\xfe",',  # invalid UTF-8
        '[2,"tab\there",',  # raw control character inside a JSON string
        '{"2":"abc"}',
    ],
)
def test_recover_call_id_gives_up_when_no_id_is_readable(raw: str | bytes) -> None:
    assert recover_call_id(raw) is None
