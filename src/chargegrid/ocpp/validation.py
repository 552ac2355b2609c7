"""Payload validation against the OCPP 1.6 JSON schemas, mapped to OCPP-J 1.6 error codes.

Failures become :class:`OcppError` with the code OCPP-J 1.6 Table 7 prescribes (CONFORMANCE
R4), a description naming the field (``"connectorId: must be integer"``) and
``details = {"field": <path>}``, where the path looks like ``meterValue[0].timestamp`` and the
payload itself is the empty path. Only the first problem found is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from fastjsonschema import JsonSchemaValueException

from chargegrid.ocpp.actions import ACTIONS, CSMS_INITIATED
from chargegrid.ocpp.errors import ErrorCode, OcppError
from chargegrid.ocpp.schemas import (
    ENUM_FORMATS,
    Check,
    Validator,
    compile_all,
    request_check,
    request_validator,
    response_check,
    response_validator,
)

__all__ = ["compile_all", "validate_outgoing_call", "validate_request", "validate_response"]

# JSON Schema keyword broken -> OCPP-J 1.6 Table 7 code. Table 7: FormationViolation "payload
# is syntactically incorrect or not conform the PDU structure"; PropertyConstraintViolation "a
# field contains an invalid value"; OccurenceConstraintViolation "a field violates occurence
# constraints" (a missing required field, fewer array items than its cardinality allows);
# TypeConstraintViolation "a field violates data type constraints". dateTime and anyURI are
# data types in OCPP 1.6 §7, so a bad "format" is a type violation. Everything else (enum,
# maxLength, multipleOf, ...) is a bad value: PropertyConstraintViolation.
_CODES: Final[dict[str, ErrorCode]] = {
    "type": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "format": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "required": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "minItems": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "maxItems": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "additionalProperties": ErrorCode.FORMATION_VIOLATION,
}

_FORMAT_HINTS: Final = {
    "date-time": "an RFC 3339 date-time with offset, e.g. 2024-01-15T10:30:00Z",
    "uri": "a URI",
}


def validate_request(action: str, payload: dict[str, Any]) -> None:
    """Check the payload of a CALL of ``action``, whichever side sends it.

    Raises :class:`OcppError` with the Table 7 code of the first problem found, or
    NotImplemented if ``action`` is not an OCPP 1.6 action.
    """
    if not _validator(request_check, action)(payload):
        _run(request_validator(action), payload)


def validate_response(action: str, payload: dict[str, Any]) -> None:
    """Check the payload of a CALLRESULT answering a CALL of ``action``.

    Raises :class:`OcppError` like :func:`validate_request`.
    """
    if not _validator(response_check, action)(payload):
        _run(response_validator(action), payload)


def validate_outgoing_call(action: str, payload: dict[str, Any]) -> None:
    """Check that we may send a CALL of ``action`` with this payload to a charge point.

    :func:`validate_request`, plus NotSupported for an action only a charge point may start.
    The REST API calls this to answer 422 before anything is queued.
    """
    if action in ACTIONS and action not in CSMS_INITIATED:
        raise OcppError(
            ErrorCode.NOT_SUPPORTED, f"{action} is sent by charge points, not by a CSMS"
        )
    validate_request(action, payload)


def _validator(lookup: Callable[[str], Check], action: str) -> Check:
    try:
        return lookup(action)
    except KeyError:
        raise OcppError(
            ErrorCode.NOT_IMPLEMENTED, f"{action[:64]!r} is not an OCPP 1.6 action"
        ) from None


def _run(validator: Validator, payload: Any) -> None:
    try:
        validator(payload)
    except JsonSchemaValueException as exc:
        raise _to_ocpp_error(exc) from None
    except (ArithmeticError, ValueError):
        # Only payloads built in Python (REST) get here, e.g. NaN, or an int too large for a
        # float meeting "multipleOf"; the wire decoder never produces those.
        raise OcppError(
            ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
            "payload: holds a number that cannot be checked",
            {"field": ""},
        ) from None


def _to_ocpp_error(exc: JsonSchemaValueException) -> OcppError:
    rule = exc.rule or ""
    field = _field_path(exc.name or "data")
    value = exc.value
    definition = exc.definition if isinstance(exc.definition, dict) else {}
    rule_definition = definition.get(rule)
    code = _CODES.get(rule, ErrorCode.PROPERTY_CONSTRAINT_VIOLATION)
    if rule == "required" and isinstance(value, dict):
        missing = next((key for key in rule_definition or () if key not in value), "?")
        field = _join(field, missing)
        problem = "is required"
    elif rule == "additionalProperties" and isinstance(value, dict):
        known = definition.get("properties") or {}
        extra = next((key for key in value if key not in known), "?")
        field = _join(field, str(extra))
        problem = "is not allowed here"
    elif rule == "type":
        types = rule_definition if isinstance(rule_definition, list) else [rule_definition]
        problem = "must be " + " or ".join(map(str, types))
    elif rule == "format" and rule_definition in ENUM_FORMATS:
        # An enum, rewritten into a format by chargegrid.ocpp.schemas: a bad value, not a type.
        code = ErrorCode.PROPERTY_CONSTRAINT_VIOLATION
        problem = "must be one of " + ", ".join(ENUM_FORMATS[rule_definition])
    elif rule == "format":
        problem = "must be " + _FORMAT_HINTS.get(str(rule_definition), str(rule_definition))
    elif rule == "maxLength":
        problem = f"must be at most {rule_definition} characters long"
    elif rule == "minItems":
        problem = f"must have at least {rule_definition} item(s)"
    elif rule == "multipleOf":
        problem = f"must be a multiple of {rule_definition}"
    else:
        # Keywords the 1.6 schemas do not use today; fastjsonschema's text reads well enough.
        name = exc.name or ""
        message = exc.message
        problem = message[len(name) :].strip() if message.startswith(name) else message
    return OcppError(code, f"{field or 'payload'}: {problem}", {"field": field})


def _field_path(name: str) -> str:
    # fastjsonschema calls the root "data": "data.meterValue[0].timestamp".
    if name.startswith("data."):
        return name[5:]
    return name[4:] if name.startswith("data") else name


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key
