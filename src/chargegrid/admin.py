"""Administrative operations shared by the command line (and later the REST API).

Each takes an open connection and validates its input, raising :class:`AdminError` with a message a
person can act on.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.clock import parse_timestamp
from chargegrid.credentials import hash_secret
from chargegrid.store import charge_points as cp_store
from chargegrid.store import id_tags as tag_store

REGISTRATION_STATUSES = ("Accepted", "Pending", "Rejected")
ID_TAG_STATUSES = ("Accepted", "Blocked", "Expired", "Invalid")
# OCPP 1.6 Security Whitepaper §2: 0 none, 1 Basic, 2 TLS + Basic, 3 TLS with a client
# certificate (no key: the certificate is the credential, gateway/client_cert.py).
SECURITY_PROFILES = (0, 1, 2, 3)


class AdminError(Exception):
    pass


def check_auth_key(auth_key: str | None, security_profile: int, *, has_key: bool = False) -> None:
    """``has_key``: a key is already stored, so a profile change alone needs no new one."""
    if security_profile not in SECURITY_PROFILES:
        raise AdminError(f"security profile must be one of 0, 1, 2, 3 (got {security_profile})")
    if security_profile in (1, 2) and not auth_key and not has_key:
        raise AdminError(f"security profile {security_profile} needs an auth key (--auth-key)")
    if auth_key is not None and not 16 <= len(auth_key) <= 40:
        # Security Whitepaper: AuthorizationKey is 16-20 bytes, commonly sent as up to 40 hex chars.
        raise AdminError("auth key must be 16 to 40 characters")
    if auth_key is not None and ":" in auth_key:
        raise AdminError("auth key must not contain ':' (it is sent in HTTP Basic credentials)")


def check_identity(identity: str) -> None:
    if not identity or len(identity) > 255 or "/" in identity or not identity.isprintable():
        raise AdminError(
            f"invalid charge point identity {identity!r}: 1-255 printable characters, no '/'"
        )


async def add_charge_point(
    connection: AsyncConnection,
    identity: str,
    *,
    now: datetime,
    auth_key: str | None = None,
    security_profile: int = 0,
    registration_status: str = "Accepted",
    hash_iterations: int = 5_000,
) -> int:
    check_identity(identity)
    check_auth_key(auth_key, security_profile)
    if registration_status not in REGISTRATION_STATUSES:
        raise AdminError(f"registration status must be one of {', '.join(REGISTRATION_STATUSES)}")
    try:
        return await cp_store.add(
            connection,
            identity,
            now=now,
            auth_key_hash=hash_secret(auth_key, iterations=hash_iterations) if auth_key else None,
            security_profile=security_profile,
            registration_status=registration_status,
        )
    except cp_store.ChargePointExists:
        raise AdminError(f"charge point {identity!r} already exists") from None


async def update_charge_point(
    connection: AsyncConnection,
    identity: str,
    *,
    now: datetime,
    auth_key: str | None = None,
    security_profile: int | None = None,
    registration_status: str | None = None,
    hash_iterations: int = 5_000,
) -> None:
    current = await cp_store.get(connection, identity)
    if current is None:
        raise AdminError(f"no charge point {identity!r}")
    values: dict[str, Any] = {}
    profile = current.security_profile if security_profile is None else security_profile
    if auth_key is not None or security_profile is not None:
        check_auth_key(auth_key, profile, has_key=await _has_key(connection, identity))
        values["security_profile"] = profile
    if auth_key is not None:
        values["auth_key_hash"] = hash_secret(auth_key, iterations=hash_iterations)
    if registration_status is not None:
        if registration_status not in REGISTRATION_STATUSES:
            raise AdminError(
                f"registration status must be one of {', '.join(REGISTRATION_STATUSES)}"
            )
        values["registration_status"] = registration_status
    if values:
        await cp_store.update_fields(connection, identity, now=now, **values)


async def _has_key(connection: AsyncConnection, identity: str) -> bool:
    record = await cp_store.get_auth(connection, identity)
    return record is not None and record.auth_key_hash is not None


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: int
    skipped: list[str]


async def import_charge_points(
    connection: AsyncConnection,
    text: str,
    *,
    now: datetime,
    skip_existing: bool = False,
    hash_iterations: int = 5_000,
) -> ImportResult:
    """Add charge points from CSV with a header ``identity,auth_key,security_profile``.

    All or nothing: the caller's transaction is rolled back on the first bad row, whose line
    number the error names.
    """
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "identity" not in reader.fieldnames:
        raise AdminError(
            "CSV needs a header row with at least: identity (and auth_key, security_profile)"
        )
    unknown = set(reader.fieldnames) - {"identity", "auth_key", "security_profile"}
    if unknown:
        raise AdminError(f"unknown CSV columns: {', '.join(sorted(unknown))}")
    added = 0
    skipped: list[str] = []
    seen: set[str] = set()
    for row in reader:
        line = reader.line_num
        identity = (row.get("identity") or "").strip()
        auth_key = (row.get("auth_key") or "").strip() or None
        profile_text = (row.get("security_profile") or "").strip() or "0"
        try:
            if identity in seen:
                raise AdminError(f"duplicate identity {identity!r} in the file")
            seen.add(identity)
            try:
                profile = int(profile_text)
            except ValueError:
                raise AdminError(
                    f"security_profile must be 0, 1, 2 or 3, got {profile_text!r}"
                ) from None
            if await cp_store.get_auth(connection, identity) is not None and skip_existing:
                skipped.append(identity)
                continue
            await add_charge_point(
                connection,
                identity,
                now=now,
                auth_key=auth_key,
                security_profile=profile,
                hash_iterations=hash_iterations,
            )
            added += 1
        except AdminError as error:
            raise AdminError(f"line {line}: {error}") from None
    return ImportResult(added, skipped)


async def add_id_tag(
    connection: AsyncConnection,
    id_tag: str,
    *,
    now: datetime,
    status: str = "Accepted",
    expiry: str | None = None,
    parent: str | None = None,
) -> int:
    if not id_tag or len(id_tag) > 20:
        raise AdminError("an id tag is 1 to 20 characters (OCPP 1.6 IdToken, CiString20)")
    if status not in ID_TAG_STATUSES:
        raise AdminError(f"id tag status must be one of {', '.join(ID_TAG_STATUSES)}")
    if parent is not None and not 1 <= len(parent) <= 20:
        raise AdminError("a parent id tag is 1 to 20 characters")
    expiry_date = None
    if expiry is not None:
        try:
            expiry_date = parse_timestamp(expiry)
        except ValueError:
            raise AdminError(f"expiry must be an ISO 8601 date-time, got {expiry!r}") from None
    try:
        return await tag_store.add(
            connection,
            id_tag,
            now=now,
            status=status,
            expiry_date=expiry_date,
            parent_id_tag=parent,
        )
    except tag_store.IdTagExists:
        raise AdminError(f"id tag {id_tag!r} already exists") from None
