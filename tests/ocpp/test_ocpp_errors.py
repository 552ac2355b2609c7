"""ErrorCode spelling (OCPP-J 1.6 Table 7) and OcppError's contract."""

from __future__ import annotations

from chargegrid.ocpp.errors import ErrorCode, OcppError


def test_error_codes_are_exactly_the_ten_of_ocpp_j_16_table_7() -> None:
    assert {code.value for code in ErrorCode} == {
        "NotImplemented",
        "NotSupported",
        "InternalError",
        "ProtocolError",
        "SecurityError",
        "FormationViolation",
        "PropertyConstraintViolation",
        "OccurenceConstraintViolation",
        "TypeConstraintViolation",
        "GenericError",
    }


def test_occurence_keeps_the_errata_spelling() -> None:
    assert ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION.value == "OccurenceConstraintViolation"


def test_no_ocpp_201_codes() -> None:
    values = {code.value for code in ErrorCode}
    assert values.isdisjoint({"FormatViolation", "RpcFrameworkError", "MessageTypeNotSupported"})


def test_error_code_is_a_plain_string() -> None:
    assert f"{ErrorCode.NOT_SUPPORTED}" == "NotSupported"


def test_ocpp_error_details_default_to_an_empty_dict() -> None:
    error = OcppError(ErrorCode.GENERIC_ERROR)
    assert error.code is ErrorCode.GENERIC_ERROR
    assert error.description == ""
    assert error.details == {}


def test_ocpp_error_keeps_description_and_details() -> None:
    error = OcppError(
        ErrorCode.PROPERTY_CONSTRAINT_VIOLATION, "idTag: too long", {"field": "idTag"}
    )
    assert error.description == "idTag: too long"
    assert error.details == {"field": "idTag"}
    assert "idTag: too long" in str(error)
    assert "PropertyConstraintViolation" in repr(error)


def test_details_are_not_shared_between_errors() -> None:
    first = OcppError(ErrorCode.GENERIC_ERROR)
    first.details["x"] = 1
    assert OcppError(ErrorCode.GENERIC_ERROR).details == {}
