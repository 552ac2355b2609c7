"""Property tests: receive() never raises and always returns one Event, whatever arrives."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chargegrid.ocpp.actions import ACTIONS, CP_INITIATED
from chargegrid.ocpp.errors import ErrorCode
from chargegrid.ocpp.session import (
    Ignored,
    IncomingCall,
    IncomingError,
    IncomingResult,
    OcppSession,
    Reply,
)

EVENTS = (IncomingCall, IncomingResult, IncomingError, Reply, Ignored)
CODES = {code.value for code in ErrorCode}

_json: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_ids = st.one_of(st.text(max_size=40), st.sampled_from(["m-1", "", "x" * 37]), _json)
_actions = st.one_of(st.sampled_from(sorted(ACTIONS)), st.text(max_size=12), _json)
_frames = st.one_of(
    st.tuples(st.just(2), _ids, _actions, _json).map(list),
    st.tuples(st.just(3), _ids, _json).map(list),
    st.tuples(st.just(4), _ids, _json, _json, _json).map(list),
    st.lists(_json, max_size=6),
    st.tuples(st.sampled_from([2, 3, 4]), _ids).map(list),
)
_texts = st.one_of(
    st.text(),
    st.binary(),
    _json.map(json.dumps),
    _frames.map(json.dumps),
    # Valid frames cut short: invalid JSON, often with a readable CALL id.
    st.tuples(_frames.map(json.dumps), st.integers(min_value=0, max_value=60)).map(
        lambda pair: pair[0][: pair[1]]
    ),
    st.tuples(_frames.map(json.dumps), st.integers(min_value=0, max_value=60)).map(
        lambda pair: pair[0][: pair[1]].encode("utf-8", "surrogatepass")
    ),
)


def _check(event: object, session: OcppSession) -> None:
    assert isinstance(event, EVENTS)
    if isinstance(event, Reply):
        frame = json.loads(event.text)
        assert len(frame) == 5 and frame[0] == 4
        assert isinstance(frame[1], str) and frame[2] in CODES
        assert isinstance(frame[3], str) and isinstance(frame[4], dict)
        assert event.message_id is None or event.message_id == frame[1]
    elif isinstance(event, IncomingCall):
        assert isinstance(event.call.payload, dict)
        assert 1 <= len(event.call.message_id) <= 36
        assert event.call.action in CP_INITIATED
    elif isinstance(event, IncomingResult | IncomingError):
        assert session.pending is None
    else:
        assert isinstance(event.reason, str) and event.reason


@settings(max_examples=500)
@given(st.lists(_texts, min_size=1, max_size=5), st.booleans(), st.booleans())
def test_receive_never_raises(texts: list[str | bytes], accepted: bool, with_pending: bool) -> None:
    session = OcppSession(supported=CP_INITIATED, accepted=accepted)
    if with_pending:
        session.call("ClearCache", {})
    for text in texts:
        _check(session.receive(text), session)


@settings(max_examples=200)
@given(st.lists(_frames, min_size=1, max_size=5))
def test_answers_to_the_pending_call_never_raise(frames: list[list[Any]]) -> None:
    session = OcppSession(supported=CP_INITIATED, accepted=True)
    call = session.call("GetConfiguration", {})
    for frame in frames:
        if len(frame) > 1 and frame[0] in (3, 4):
            frame[1] = call.message_id
        _check(session.receive(json.dumps(frame)), session)
