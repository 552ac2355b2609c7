"""Id tags (the central authorization list): read, create, update, delete, CSV import."""

from __future__ import annotations

import csv
import email.parser
import email.policy
import io
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid import admin
from chargegrid.api.deps import Admin, Node, Viewer
from chargegrid.api.models import IdTagImportOut, IdTagOut, id_tag_out
from chargegrid.api.pagination import Limit, Offset, Page, Refusal, count, write
from chargegrid.clock import parse_timestamp
from chargegrid.store import id_tags as tag_store
from chargegrid.store.tables import id_tags

router = APIRouter(prefix="/api/v1", tags=["id tags"])

IMPORT_COLUMNS = ("id_tag", "status", "expiry", "parent")
MAX_IMPORT_BYTES = 10 * 1024 * 1024
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such id tag"}}


class IdTagCreate(BaseModel):
    id_tag: str = Field(description="1-20 characters (OCPP 1.6 IdToken).")
    status: str = Field(
        default="Accepted", description="One of " + ", ".join(admin.ID_TAG_STATUSES)
    )
    expiry: str | None = Field(default=None, description="ISO 8601 date-time; absent: never.")
    parent: str | None = Field(default=None, description="Parent id tag (group), 1-20 chars.")


class IdTagUpdate(BaseModel):
    """Only the fields given change; ``null`` clears expiry or parent."""

    status: str | None = Field(
        default=None, description="One of " + ", ".join(admin.ID_TAG_STATUSES)
    )
    expiry: str | None = Field(default=None, description="ISO 8601 date-time; null: never.")
    parent: str | None = Field(default=None, description="Parent id tag; null: none.")


async def _get(connection: AsyncConnection, tag: str) -> IdTagOut:
    record = await tag_store.get(connection, tag)
    if record is None:
        raise Refusal(404, f"no id tag {tag!r}")
    return id_tag_out(record)


@router.get("/id-tags", response_model=Page[IdTagOut])
async def list_id_tags(
    node: Node,
    principal: Viewer,
    q: Annotated[
        str | None, Query(max_length=20, description="Case-insensitive substring of the tag.")
    ] = None,
    status: Annotated[
        str | None, Query(description="One of " + ", ".join(admin.ID_TAG_STATUSES))
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[IdTagOut]:
    """Id tags ordered by tag."""
    query = select(id_tags)
    if q:
        query = query.where(func.lower(id_tags.c.id_tag).contains(q.lower(), autoescape=True))
    if status is not None:
        if status not in admin.ID_TAG_STATUSES:
            raise HTTPException(
                422, f"status must be one of {', '.join(admin.ID_TAG_STATUSES)}, got {status!r}"
            )
        query = query.where(id_tags.c.status == status)
    async with node.engine.connect() as connection:
        total = await count(connection, query)
        rows = await connection.execute(
            query.order_by(id_tags.c.id_tag).limit(limit).offset(offset)
        )
        items = [id_tag_out(r) for r in rows]
    return Page[IdTagOut](items=items, total=total)


@router.get("/id-tags/{tag}", response_model=IdTagOut, responses=NOT_FOUND)
async def get_id_tag(tag: str, node: Node, principal: Viewer) -> IdTagOut:
    async with node.engine.connect() as connection:
        record = await tag_store.get(connection, tag)
    if record is None:
        raise HTTPException(404, f"no id tag {tag!r}")
    return id_tag_out(record)


@router.post(
    "/id-tags",
    response_model=IdTagOut,
    status_code=201,
    responses={409: {"description": "it exists"}, 422: {"description": "invalid values"}},
)
async def create_id_tag(body: IdTagCreate, node: Node, principal: Admin) -> IdTagOut:
    """Add an id tag (admin)."""

    async def unit(connection: AsyncConnection) -> IdTagOut:
        if await tag_store.get(connection, body.id_tag) is not None:
            raise Refusal(409, f"id tag {body.id_tag!r} already exists")
        try:
            await admin.add_id_tag(
                connection,
                body.id_tag,
                now=node.clock.now(),
                status=body.status,
                expiry=body.expiry,
                parent=body.parent,
            )
        except admin.AdminError as error:
            raise Refusal(422, str(error)) from None
        return await _get(connection, body.id_tag)

    return await write(node, unit)


@router.patch(
    "/id-tags/{tag}",
    response_model=IdTagOut,
    responses={**NOT_FOUND, 422: {"description": "invalid values"}},
)
async def update_id_tag(tag: str, body: IdTagUpdate, node: Node, principal: Admin) -> IdTagOut:
    """Change status, expiry or parent (admin); fields left out stay as they are."""
    given = body.model_fields_set
    values: dict[str, Any] = {}
    if "status" in given:
        if body.status not in admin.ID_TAG_STATUSES:
            raise HTTPException(
                422, f"id tag status must be one of {', '.join(admin.ID_TAG_STATUSES)}"
            )
        values["status"] = body.status
    if "expiry" in given:
        try:
            values["expiry_date"] = None if body.expiry is None else parse_timestamp(body.expiry)
        except ValueError:
            raise HTTPException(
                422, f"expiry must be an ISO 8601 date-time, got {body.expiry!r}"
            ) from None
    if "parent" in given:
        if body.parent is not None and not 1 <= len(body.parent) <= 20:
            raise HTTPException(422, "a parent id tag is 1 to 20 characters")
        values["parent_id_tag"] = body.parent

    async def unit(connection: AsyncConnection) -> IdTagOut:
        if values:
            await tag_store.update_fields(connection, tag, now=node.clock.now(), **values)
        return await _get(connection, tag)

    return await write(node, unit)


@router.delete("/id-tags/{tag}", status_code=204, responses=NOT_FOUND)
async def delete_id_tag(tag: str, node: Node, principal: Admin) -> Response:
    """Remove an id tag (admin)."""

    async def unit(connection: AsyncConnection) -> None:
        if not await tag_store.remove(connection, tag):
            raise Refusal(404, f"no id tag {tag!r}")

    await write(node, unit)
    return Response(status_code=204)


def _multipart_csv(content_type: str, body: bytes) -> bytes:
    """The first file part (or the part named ``file``) of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise HTTPException(422, "multipart body without parts: send the CSV as a file part")
    parts = list(message.iter_parts())
    chosen = next(
        (p for p in parts if p.get_param("name", header="content-disposition") == "file"), None
    )
    if chosen is None:
        chosen = next((p for p in parts if p.get_filename() is not None), None)
    if chosen is None:
        raise HTTPException(422, "no file part in the multipart body (name it 'file')")
    payload = chosen.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


async def _import_rows(
    connection: AsyncConnection, text: str, *, now: Any, skip_existing: bool
) -> IdTagImportOut:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "id_tag" not in reader.fieldnames:
        raise Refusal(
            422, f"the CSV needs a header row: {','.join(IMPORT_COLUMNS)} (id_tag is required)"
        )
    unknown = [name for name in reader.fieldnames if name not in IMPORT_COLUMNS]
    if unknown:
        raise Refusal(
            422,
            f"unknown CSV columns: {', '.join(unknown)}; expected {','.join(IMPORT_COLUMNS)}",
        )
    added = 0
    skipped: list[str] = []
    seen: set[str] = set()
    for row in reader:
        line = reader.line_num
        tag = (row.get("id_tag") or "").strip()
        try:
            if None in row:
                raise admin.AdminError("more fields than the header names")
            if tag in seen:
                raise admin.AdminError(f"duplicate id tag {tag!r} in the file")
            seen.add(tag)
            if tag and await tag_store.get(connection, tag) is not None:
                if skip_existing:
                    skipped.append(tag)
                    continue
                raise admin.AdminError(f"id tag {tag!r} already exists")
            await admin.add_id_tag(
                connection,
                tag,
                now=now,
                status=(row.get("status") or "").strip() or "Accepted",
                expiry=(row.get("expiry") or "").strip() or None,
                parent=(row.get("parent") or "").strip() or None,
            )
        except admin.AdminError as error:
            raise Refusal(422, f"line {line}: {error}; nothing was imported") from None
        added += 1
    return IdTagImportOut(added=added, skipped=skipped)


@router.post(
    "/id-tags/import",
    response_model=IdTagImportOut,
    responses={
        413: {"description": "the file is too large"},
        415: {"description": "neither text/csv nor multipart/form-data"},
        422: {"description": "a bad row (named by its line); nothing was imported"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "id_tag,status,expiry,parent\nTAG1,Accepted,,\n"
                    "TAG2,Blocked,2030-01-01T00:00:00Z,TAG1\n",
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
        }
    },
)
async def import_id_tags(
    request: Request,
    node: Node,
    principal: Admin,
    skip_existing: Annotated[
        bool, Query(description="Skip tags that exist instead of failing.")
    ] = False,
) -> IdTagImportOut:
    """Add id tags from CSV with header ``id_tag,status,expiry,parent`` (admin), as a
    ``text/csv`` body or a ``multipart/form-data`` file. All or nothing: the first bad row is
    named by its line and nothing is added."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in ("text/csv", "text/plain", "multipart/form-data"):
        raise HTTPException(415, "send the CSV as text/csv, or as a file in multipart/form-data")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_IMPORT_BYTES:
            raise HTTPException(413, f"the import is limited to {MAX_IMPORT_BYTES} bytes")
    data = bytes(body)
    if media_type == "multipart/form-data":
        data = _multipart_csv(content_type, data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise HTTPException(422, "the CSV must be UTF-8 text") from None
    now = node.clock.now()
    # One savepoint for the whole file: the first bad row rolls every row back.
    return await write(
        node,
        lambda connection: _import_rows(connection, text, now=now, skip_existing=skip_existing),
    )
