"""The operator dashboard: server-rendered pages over the REST API's own handlers.

Pages call the API route functions directly (with the principal of the dashboard's cookie), so
visibility, roles and response shapes are exactly the API's; the browser then keeps a page
current over the live WebSocket (``/static/chargegrid-live.js``) and sends commands to the
REST API with the same cookie. Every template is rendered with autoescape on, and the scripts
only ever write data with ``textContent``: charge point supplied strings stay inert.

Login is a small form POST here: it issues an API token (``POST /api/v1/auth/token``'s handler)
and keeps it in an HttpOnly, SameSite=Strict cookie, which the API and the live streams accept.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import ValidationError

from chargegrid import __version__
from chargegrid.api.deps import Principal, get_node, principal_for_token
from chargegrid.api.models import ChargePointDetail, SessionOut
from chargegrid.api.pagination import Page
from chargegrid.api.routes import auth as auth_routes
from chargegrid.api.routes import charge_points as cp_routes
from chargegrid.api.routes import commands as command_routes
from chargegrid.api.routes import events as event_routes
from chargegrid.api.routes import id_tags as id_tag_routes
from chargegrid.api.routes import sessions as session_routes
from chargegrid.api.routes import stats as stats_routes
from chargegrid.api.routes import users as user_routes
from chargegrid.store import users as user_store
from chargegrid.store.database import writing

router = APIRouter(include_in_schema=False)

COOKIE = "chargegrid_token"
# A dashboard login lasts a working day or so; the API token behind it expires with it.
SESSION_DAYS = 1
PAGE_SIZE = 50
# Bounds the API would enforce through Query(...) validation, which direct calls bypass.
MAX_QUERY = 255
MAX_OFFSET = 1_000_000_000
STATUSES = (
    "Available",
    "Preparing",
    "Charging",
    "SuspendedEVSE",
    "SuspendedEV",
    "Finishing",
    "Reserved",
    "Unavailable",
    "Faulted",
)
TRIGGER_MESSAGES = (
    "BootNotification",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "StatusNotification",
)
FILTERS = ("all", "connected", "offline", "available", "charging", "faulted")
SESSION_CSV_COLUMNS = (
    "id",
    "charge_point",
    "connector_id",
    "id_tag",
    "started_at",
    "stopped_at",
    "meter_start",
    "meter_stop",
    "energy_kwh",
    "duration_seconds",
    "stop_reason",
    "stop_id_tag",
    "status",
)

# Scripts and styles only from this server: even a markup injection could not run a script.
# 'self' covers the live WebSocket on the same host.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,  # every value is escaped unless a template says otherwise (none does)
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _render(
    request: Request,
    template: str,
    principal: Principal | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    role = principal.user.role if principal is not None else None
    # Pager links keep the page's filters and replace only the offset.
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "offset"]
    pager_base = request.url.path + "?" + "".join(f"{quote(k)}={quote(v)}&" for k, v in kept)
    html = _templates.get_template(template).render(
        request_path=request.url.path,
        user=principal.user if principal is not None else None,
        role=role.value if role is not None else None,
        can_operate=principal is not None and principal.at_least(user_store.Role.OPERATOR),
        is_admin=principal is not None and principal.at_least(user_store.Role.ADMIN),
        version=__version__,
        pager_base=pager_base,
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


async def _principal(request: Request) -> Principal | None:
    """Who the dashboard cookie stands for, or None (no cookie, expired, revoked, disabled)."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    principal: Principal | None = await principal_for_token(get_node(request), token)
    return principal


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def _safe_next(value: str | None) -> str:
    """Only a path on this site: never an open redirect to another host."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def _same_origin(request: Request) -> bool:
    """A form POST must come from a page of this site (the SameSite cookie covers logged-in
    forms; this also covers the login form, which has no cookie yet)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True  # non-browser clients and privacy settings send neither
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body, without needing python-multipart."""
    body = (await request.body())[:16_384]
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items() if values}


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return max(low, min(high, number))


def _text(value: str | None) -> str | None:
    value = (value or "").strip()[:MAX_QUERY]
    return value or None


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    if await _principal(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _render(request, "login.html", None, next=_safe_next(next), error=None, username="")


@router.post("/login")
async def login(request: Request) -> Response:
    if not _same_origin(request):
        raise HTTPException(403, "cross-site form")
    form = await _form(request)
    next_path = _safe_next(form.get("next"))
    username = form.get("username", "")
    try:
        body = auth_routes.TokenRequest(
            username=username,
            password=form.get("password", ""),
            name="dashboard",
            expires_in_days=SESSION_DAYS,
        )
        issued = await auth_routes.issue_token(body, get_node(request))
    except (ValidationError, HTTPException):
        return _render(
            request,
            "login.html",
            None,
            status_code=401,
            next=next_path,
            error="Wrong username or password.",
            username=username[:64],
        )
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        COOKIE,
        issued.token,
        max_age=SESSION_DAYS * 86_400,
        path="/",
        httponly=True,  # scripts never see the token
        samesite="strict",  # other sites can neither use nor send it (no CSRF)
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    if not _same_origin(request):
        raise HTTPException(403, "cross-site form")
    token = request.cookies.get(COOKIE)
    if token:
        # The token dies with the login, not only the cookie.
        async with writing(get_node(request).engine).begin() as connection:
            await user_store.revoke_token(connection, token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _fleet_filter(name: str) -> dict[str, Any]:
    """The list API's query parameters for a filter of the fleet page."""
    filters: dict[str, dict[str, Any]] = {
        "connected": {"connected": True},
        "offline": {"connected": False},
        "available": {"available": True},
        "charging": {"charging": True},
        "faulted": {"status": "Faulted"},
    }
    return filters.get(name, {})


@router.get("/")
async def fleet(request: Request) -> Response:
    """The fleet overview: figures, then one card per charge point."""
    principal = await _principal(request)
    if principal is None:
        return _to_login(request)
    node = get_node(request)
    params = request.query_params
    q = _text(params.get("q"))
    state = params.get("filter", "all")
    state = state if state in FILTERS else "all"
    offset = _int(params.get("offset"), 0, 0, MAX_OFFSET)
    figures = await stats_routes.stats(node, principal)
    page = await cp_routes.list_charge_points(
        node, principal, q=q, limit=PAGE_SIZE, offset=offset, **_fleet_filter(state)
    )
    # The summary lacks meter_start, which live energy readings need to become session energy.
    active = await session_routes.list_sessions(
        node,
        principal,
        status=session_routes.SessionStatus.ACTIVE,
        charge_point=None,
        id_tag=None,
        since=None,
        until=None,
        limit=500,
        offset=0,
    )
    meter_start = {s.id: s.meter_start for s in active.items}
    return _render(
        request,
        "fleet.html",
        principal,
        stats=figures,
        charge_points=page.items,
        total=page.total,
        offset=offset,
        page_size=PAGE_SIZE,
        q=q or "",
        filter=state,
        filters=FILTERS,
        meter_start=meter_start,
    )


@router.get("/charge-points/{identity}")
async def charge_point(request: Request, identity: str) -> Response:
    """One charge point: connectors, current session with live charts, history, commands."""
    principal = await _principal(request)
    if principal is None:
        return _to_login(request)
    node = get_node(request)
    try:
        detail: ChargePointDetail = await cp_routes.get_charge_point(identity, node, principal)
    except HTTPException as error:
        if error.status_code != 404:
            raise
        return _render(
            request,
            "error.html",
            principal,
            status_code=404,
            title="Not found",
            message=f"There is no charge point {identity!r}.",
        )
    sessions = await session_routes.list_sessions(
        node,
        principal,
        status=session_routes.SessionStatus.ALL,
        charge_point=identity,
        id_tag=None,
        since=None,
        until=None,
        limit=10,
        offset=0,
    )
    configuration = await cp_routes.get_configuration(identity, node, principal)
    operations = await command_routes.operation_history(
        identity, node, principal, limit=20, offset=0
    )
    log = await event_routes.charge_point_events(
        identity,
        node,
        principal,
        request,
        category=None,
        limit=30,
        offset=0,
        topics=None,
        last_event_id=None,
    )
    current: SessionOut | None = next((s for s in sessions.items if s.status == "active"), None)
    page_data = {
        "identity": identity,
        "connectors": [c.connector_id for c in detail.connectors if c.connector_id > 0],
        "session": current.model_dump() if current is not None else None,
        "can_operate": principal.at_least(user_store.Role.OPERATOR),
    }
    return _render(
        request,
        "charge_point.html",
        principal,
        cp=detail,
        sessions=sessions.items,
        current=current,
        configuration=configuration,
        operations=operations,
        events=log.items if isinstance(log, Page) else [],
        page_data=page_data,
        trigger_messages=TRIGGER_MESSAGES,
    )


def _session_filters(request: Request) -> dict[str, Any]:
    params = request.query_params
    status = params.get("status", "all")
    return {
        "status": session_routes.SessionStatus(status)
        if status in {s.value for s in session_routes.SessionStatus}
        else session_routes.SessionStatus.ALL,
        "charge_point": _text(params.get("charge_point")),
        "id_tag": _text(params.get("id_tag")),
        "since": _text(params.get("since")),
        "until": _text(params.get("until")),
    }


@router.get("/sessions")
async def sessions_page(request: Request) -> Response:
    """Active and past sessions with filters and a CSV export of the same selection."""
    principal = await _principal(request)
    if principal is None:
        return _to_login(request)
    filters = _session_filters(request)
    offset = _int(request.query_params.get("offset"), 0, 0, MAX_OFFSET)
    error = None
    items: list[SessionOut] = []
    total = 0
    try:
        page = await session_routes.list_sessions(
            get_node(request), principal, limit=PAGE_SIZE, offset=offset, **filters
        )
        items, total = page.items, page.total
    except HTTPException as failure:
        error = str(failure.detail)
    query = request.url.query
    export = "/sessions.csv" + (
        "?" + "&".join(p for p in query.split("&") if not p.startswith("offset=")) if query else ""
    )
    return _render(
        request,
        "sessions.html",
        principal,
        sessions=items,
        total=total,
        offset=offset,
        page_size=PAGE_SIZE,
        filters={k: (v.value if k == "status" else v or "") for k, v in filters.items()},
        error=error,
        export=export,
    )


@router.get("/sessions.csv")
async def sessions_csv(request: Request) -> Response:
    """The filtered sessions as CSV, fetched page by page so memory stays flat."""
    principal = await _principal(request)
    if principal is None:
        return _to_login(request)
    node = get_node(request)
    filters = _session_filters(request)
    try:  # report a bad filter as an error, not a half-written download
        await session_routes.list_sessions(node, principal, limit=1, offset=0, **filters)
    except HTTPException as failure:
        return Response(str(failure.detail), status_code=failure.status_code)

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(SESSION_CSV_COLUMNS)
        offset = 0
        while True:
            page = await session_routes.list_sessions(
                node, principal, limit=500, offset=offset, **filters
            )
            for session in page.items:
                values = session.model_dump()
                writer.writerow([_csv_cell(values[c]) for c in SESSION_CSV_COLUMNS])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            offset += len(page.items)
            if not page.items or offset >= page.total:
                break

    return StreamingResponse(
        rows(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="sessions.csv"'},
    )


def _csv_cell(value: Any) -> str:
    """A cell a spreadsheet will not run as a formula (an id tag is the charge point's word)."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@router.get("/alerts")
async def alerts_page(request: Request) -> Response:
    """Alerts (open, resolved), loaded by the page from the alerts API; operators acknowledge."""
    principal = await _principal(request)
    if principal is None:
        return _to_login(request)
    return _render(request, "alerts.html", principal)


@router.get("/id-tags")
async def id_tags_page(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _to_login(request)
    params = request.query_params
    q = (params.get("q") or "").strip()[:20] or None
    status = params.get("status") or None
    offset = _int(params.get("offset"), 0, 0, MAX_OFFSET)
    error = None
    items: list[Any] = []
    total = 0
    try:
        page = await id_tag_routes.list_id_tags(
            get_node(request), principal, q=q, status=status, limit=PAGE_SIZE, offset=offset
        )
        items, total = page.items, page.total
    except HTTPException as failure:
        error = str(failure.detail)
    return _render(
        request,
        "id_tags.html",
        principal,
        tags=items,
        total=total,
        offset=offset,
        page_size=PAGE_SIZE,
        q=q or "",
        status=status or "",
        error=error,
    )


@router.get("/users")
async def users_page(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _to_login(request)
    if not principal.at_least(user_store.Role.ADMIN):
        return _render(
            request,
            "error.html",
            principal,
            status_code=403,
            title="Not allowed",
            message="Only administrators manage users.",
        )
    users = await user_routes.list_users(get_node(request), principal)
    return _render(request, "users.html", principal, users=users)
