"""The schema rewrites (enum -> set-backed format, all schemas as draft-04) and their effect.

Each of our validators is compared with fastjsonschema compiling the untouched schema (read as
draft-04), on payloads generated from the schema itself with deliberate mistakes mixed in.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargegrid.ocpp.actions import ACTIONS
from chargegrid.ocpp.errors import ErrorCode, OcppError
from chargegrid.ocpp.formats import is_date_time
from chargegrid.ocpp.schemas import DRAFT_04
from chargegrid.ocpp.validation import validate_request, validate_response

SCHEMA_DIR = resources.files("ocpp") / "v16" / "schemas"

# What the untouched schema's failing keyword must map to (OCPP-J 1.6 Table 7).
EXPECTED_CODE = {
    "type": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "format": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "required": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "minItems": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "additionalProperties": ErrorCode.FORMATION_VIOLATION,
    "enum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "maxLength": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "multipleOf": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
}

_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.text(max_size=3),
    st.lists(st.none(), max_size=1),
    st.dictionaries(st.text(max_size=2), st.none(), max_size=1),
)


def _strings(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "enum" in node:
        return st.sampled_from([*node["enum"], "Bogus", node["enum"][0].lower()])
    if node.get("format") == "date-time":
        return st.sampled_from(
            [
                "2024-01-15T10:30:00Z",
                "2024-01-15T10:30:00.5-03:00",
                "yesterday",
                "2024-13-01T00:00:00Z",
            ]
        )
    if node.get("format") == "uri":
        return st.sampled_from(["ftp://example.com/x", "https://h/p?q=1", "no uri"])
    limit = node.get("maxLength")
    if limit is None:
        return st.text(max_size=4)
    return st.one_of(st.text(max_size=3), st.sampled_from(["x" * limit, "x" * (limit + 1)]))


def _typed(node: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "$ref" in node:
        node = root["definitions"][node["$ref"].rsplit("/", 1)[1]]
    kind = node.get("type")
    if kind == "object":
        properties = node.get("properties", {})
        required = [key for key in node.get("required", []) if key in properties]
        base = st.fixed_dictionaries(
            {key: _value(properties[key], root) for key in required},
            optional={
                key: _value(sub, root) for key, sub in properties.items() if key not in required
            },
        )
        return st.tuples(base, st.sampled_from(["keep"] * 8 + ["drop", "extra"])).map(
            _mutate_object
        )
    if kind == "array":
        return st.lists(_value(node["items"], root), max_size=2)
    if kind == "string":
        return _strings(node)
    if kind == "integer":
        return _rarely(st.integers(min_value=-2, max_value=10**6), st.just(2.0))
    if kind == "number":
        return st.one_of(
            st.integers(min_value=-5, max_value=100),
            st.sampled_from([0.1, 7.3, 7.35, 1e-3, 2.5]),
            st.floats(min_value=-1e6, max_value=1e6),
        )
    if kind == "boolean":
        return st.booleans()
    return _junk


def _value(node: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[Any]:
    # Mostly well-typed, sometimes junk, so that valid and invalid payloads both occur.
    return _rarely(_typed(node, root), _junk)


def _rarely(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(min_value=0, max_value=11).flatmap(lambda n: rare if n == 0 else common)


def _mutate_object(pair: tuple[dict[str, Any], str]) -> dict[str, Any]:
    payload, how = pair
    if how == "drop" and payload:
        payload = dict(payload)
        payload.pop(next(iter(payload)))
    elif how == "extra":
        payload = {**payload, "bogusField": 1}
    return payload


@cache
def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = orjson.loads((SCHEMA_DIR / name).read_bytes())
    return schema


@cache
def _reference(name: str) -> Any:
    schema = {**_schema(name), "$schema": DRAFT_04}
    return fastjsonschema.compile(schema, formats={"date-time": is_date_time}, use_default=False)


@cache
def _payloads(name: str) -> st.SearchStrategy[Any]:
    schema = _schema(name)
    return _typed(schema, schema)


_kinds = st.sampled_from(sorted(ACTIONS)).flatmap(
    lambda action: st.tuples(st.just(action), st.booleans())
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_kinds, st.data())
def test_rewritten_validators_agree_with_the_untouched_schemas(
    kind: tuple[str, bool], data: st.DataObject
) -> None:
    action, response = kind
    name = f"{action}Response.json" if response else f"{action}.json"
    payload = data.draw(_payloads(name))
    validate = validate_response if response else validate_request
    try:
        _reference(name)(payload)
    except fastjsonschema.JsonSchemaValueException as expected:
        try:
            validate(action, payload)
        except OcppError as error:
            assert error.code is EXPECTED_CODE[expected.rule or ""], (expected, error)
            assert isinstance(error.details.get("field"), str)
        else:
            raise AssertionError(f"accepted, but the schema says {expected}") from None
    else:
        validate(action, payload)


def test_security_whitepaper_schemas_are_draft_06_on_disk() -> None:
    # The reason for reading every schema as draft-04 (see chargegrid.ocpp.schemas).
    assert "draft-06" in _schema("LogStatusNotification.json")["$schema"]
    assert "draft-04" in _schema("StatusNotification.json")["$schema"]


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("LogStatusNotification", {"status": "Uploaded", "requestId": 2.0}),
        ("StatusNotification", {"connectorId": 1.0, "errorCode": "NoError", "status": "Available"}),
    ],
)
def test_integral_floats_are_not_integers_in_any_schema(action: str, payload: Any) -> None:
    with pytest.raises(OcppError) as caught:
        validate_request(action, payload)
    assert caught.value.code is ErrorCode.TYPE_CONSTRAINT_VIOLATION
