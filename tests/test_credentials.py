"""Salted AuthorizationKey hashes (DESIGN.md guarantee 6)."""

from __future__ import annotations

import base64

import pytest

from chargegrid.credentials import SCHEME, hash_secret, verify_secret

KEY = "0123456789abcdef0123"


def test_hash_has_the_documented_shape_and_hides_the_key() -> None:
    encoded = hash_secret(KEY, iterations=1000)
    scheme, iterations, salt, digest = encoded.split("$")
    assert scheme == SCHEME == "pbkdf2_sha256"
    assert iterations == "1000"
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32
    assert KEY not in encoded


def test_verify_accepts_the_right_key() -> None:
    assert verify_secret(KEY, hash_secret(KEY, iterations=1000))


def test_default_iterations_verify() -> None:
    encoded = hash_secret(KEY)
    assert encoded.split("$")[1] == "5000"
    assert verify_secret(KEY, encoded)


@pytest.mark.parametrize("wrong", ["", KEY[:-1], KEY + "x", KEY.upper(), " " + KEY])
def test_verify_rejects_a_wrong_key(wrong: str) -> None:
    assert not verify_secret(wrong, hash_secret(KEY, iterations=1000))


def test_salts_differ() -> None:
    first = hash_secret(KEY, iterations=1000)
    second = hash_secret(KEY, iterations=1000)
    assert first != second
    assert first.split("$")[2] != second.split("$")[2]
    assert verify_secret(KEY, first)
    assert verify_secret(KEY, second)


def test_unicode_keys() -> None:
    key = "schlüssel-✓-0123456789"
    assert verify_secret(key, hash_secret(key, iterations=1000))
    assert not verify_secret("schlussel-✓-0123456789", hash_secret(key, iterations=1000))


def test_iterations_are_part_of_the_hash() -> None:
    encoded = hash_secret(KEY, iterations=1000)
    scheme, _iterations, salt, digest = encoded.split("$")
    assert not verify_secret(KEY, "$".join((scheme, "1001", salt, digest)))


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "plain-text-key",
        "pbkdf2_sha256",
        "pbkdf2_sha256$1000$salt",
        "pbkdf2_sha256$1000$a$b$c",
        "md5$1000$c2FsdA==$aGFzaA==",
        "pbkdf2_sha256$many$c2FsdA==$aGFzaA==",
        "pbkdf2_sha256$1000$not base64!$aGFzaA==",
        "pbkdf2_sha256$1000$c2FsdA==$***",
        "pbkdf2_sha256$1000$c2FsdA$aGFzaA==",  # bad padding
        "pbkdf2_sha256$0$c2FsdA==$aGFzaA==",  # zero iterations
        "pbkdf2_sha256$-5$c2FsdA==$aGFzaA==",
        "pbkdf2_sha256$1000$$",
        "pbkdf2_sha256$1000$c2FsdA==$",
        "pbkdf2_sha256$1000$c2FsdA==$aGFzaA==",  # well formed, wrong digest
        "pbkdf2_sha256$1000$c2FsdA==$w6k=",  # digest of another length
    ],
)
def test_garbage_encodings_are_false_never_an_exception(garbage: str) -> None:
    assert verify_secret(KEY, garbage) is False


def test_an_unencodable_key_is_false() -> None:
    assert verify_secret("\ud800", hash_secret(KEY, iterations=1000)) is False
