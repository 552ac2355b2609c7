"""The ``chargegrid`` command line."""

from __future__ import annotations

import asyncio
import gc
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid import __version__, admin
from chargegrid.clock import SystemClock, isoformat_z
from chargegrid.config import Settings, load_settings
from chargegrid.store import charge_points as cp_store
from chargegrid.store import id_tags as tag_store
from chargegrid.store import users as user_store
from chargegrid.store.database import create_engine, writing
from chargegrid.store.migrate import upgrade

T = TypeVar("T")


def _run_fast(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop where it is installed (a dependency except on Windows)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main)
    return uvloop.run(main)


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    try:
        return load_settings(ctx.obj.get("config"), **overrides)
    except (ValidationError, FileNotFoundError, ValueError) as error:
        raise click.ClickException(f"invalid settings: {error}") from None


def _with_database(settings: Settings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on a migrated database."""

    async def run() -> T:
        engine = create_engine(
            settings.database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        try:
            await upgrade(engine)
            async with writing(engine).begin() as connection:
                return await work(connection)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except admin.AdminError as error:
        raise click.ClickException(str(error)) from None


def _time(value: Any) -> str:
    return isoformat_z(value) if value is not None else "-"


@click.group()
@click.version_option(__version__, prog_name="chargegrid")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CHARGEGRID_CONFIG",
    help="TOML settings file (see docs/configuration.md).",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """chargegrid: an OCPP 1.6J central system."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


database_option = click.option(
    "--database-url",
    envvar="CHARGEGRID_DATABASE_URL",
    default=None,
    help="sqlite+aiosqlite:///PATH (default ./chargegrid.db) or postgresql+asyncpg://...",
)


@main.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8180).")
@database_option
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, database_url: str | None) -> None:
    """Run the server: OCPP at ws://HOST:PORT/ocpp/{id}, the API at http://HOST:PORT/."""
    import uvicorn

    from chargegrid.app import build_app
    from chargegrid.gateway.uvicorn_protocol import LeanWebSocketProtocol
    from chargegrid.observability.logs import configure_logging

    settings = _settings(ctx, host=host, port=port, database_url=database_url)
    # Observability: text or JSON lines (settings.log_format), credentials masked; uvicorn's
    # loggers go to the same handler (log_config=None below).
    configure_logging(settings.log_level, settings.log_format)
    # The cyclic garbage collector ran after every 700 container allocations, a few hundred
    # of which every message makes, and each run walked the long-lived heap (connections, live
    # statistics): 15 % of the server's CPU under load (perf, docs/benchmarks.md). Little of
    # what the hot path allocates is cyclic; collecting less often frees it as well.
    gc.set_threshold(50_000, 20, 100)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        loop = "asyncio"
    config = uvicorn.Config(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        loop=loop,
        # The stock websockets-sansio protocol, or the same with less memory per connection.
        ws=LeanWebSocketProtocol if settings.ws_lean_protocol else "websockets-sansio",
        ws_max_size=settings.ws_max_size,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
        ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
        # Security Profile 3 on direct TLS: the handshake fails without a certificate from
        # tls_client_ca_file (Security Whitepaper A00.FR.403, A00.FR.407).
        ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_ca_file else ssl.CERT_NONE,
        ssl_ca_certs=str(settings.tls_client_ca_file) if settings.tls_client_ca_file else None,
        # Forwarded headers are judged by the gateway against trusted_proxies, which needs the
        # proxy's own address in the scope: uvicorn must not rewrite it (nor the scheme).
        proxy_headers=False,
        log_level=settings.log_level,
        log_config=None,
        lifespan="on",
    )
    scheme = "wss" if settings.tls_certfile else "ws"
    click.echo(
        f"chargegrid {__version__}: OCPP at {scheme}://{settings.host}:{settings.port}/ocpp/{{id}}"
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(1)


@main.command()
@database_option
@click.pass_context
def migrate(ctx: click.Context, database_url: str | None) -> None:
    """Create or upgrade the database schema."""
    settings = _settings(ctx, database_url=database_url)

    async def noop(_connection: AsyncConnection) -> None:
        return None

    _with_database(settings, noop)
    click.echo("database is up to date")


@main.group("charge-points")
def charge_points_group() -> None:
    """Provision charge points."""


@charge_points_group.command("add")
@click.argument("identity")
@click.option(
    "--auth-key", default=None, help="Security Profile 1/2 AuthorizationKey (16-40 chars)."
)
@click.option("--security-profile", type=click.IntRange(0, 3), default=0, show_default=True)
@click.option(
    "--registration",
    type=click.Choice(admin.REGISTRATION_STATUSES),
    default="Accepted",
    show_default=True,
    help="How its BootNotification is answered.",
)
@database_option
@click.pass_context
def charge_points_add(
    ctx: click.Context,
    identity: str,
    auth_key: str | None,
    security_profile: int,
    registration: str,
    database_url: str | None,
) -> None:
    """Add a charge point."""
    settings = _settings(ctx, database_url=database_url)
    _with_database(
        settings,
        lambda c: admin.add_charge_point(
            c,
            identity,
            now=SystemClock().now(),
            auth_key=auth_key,
            security_profile=security_profile,
            registration_status=registration,
            hash_iterations=settings.auth_key_hash_iterations,
        ),
    )
    click.echo(f"added charge point {identity}")


@charge_points_group.command("update")
@click.argument("identity")
@click.option("--auth-key", default=None, help="New AuthorizationKey.")
@click.option("--security-profile", type=click.IntRange(0, 3), default=None)
@click.option("--registration", type=click.Choice(admin.REGISTRATION_STATUSES), default=None)
@database_option
@click.pass_context
def charge_points_update(
    ctx: click.Context,
    identity: str,
    auth_key: str | None,
    security_profile: int | None,
    registration: str | None,
    database_url: str | None,
) -> None:
    """Change a charge point's credentials, security profile or registration status."""
    settings = _settings(ctx, database_url=database_url)
    _with_database(
        settings,
        lambda c: admin.update_charge_point(
            c,
            identity,
            now=SystemClock().now(),
            auth_key=auth_key,
            security_profile=security_profile,
            registration_status=registration,
            hash_iterations=settings.auth_key_hash_iterations,
        ),
    )
    click.echo(f"updated charge point {identity}")


@charge_points_group.command("list")
@database_option
@click.pass_context
def charge_points_list(ctx: click.Context, database_url: str | None) -> None:
    """List charge points."""
    rows = _with_database(_settings(ctx, database_url=database_url), cp_store.list_all)
    click.echo(f"{'IDENTITY':<30} {'PROFILE':<7} {'REGISTRATION':<12} {'CONNECTED':<9} LAST SEEN")
    for cp in rows:
        click.echo(
            f"{cp.identity:<30} {cp.security_profile:<7} {cp.registration_status:<12} "
            f"{'yes' if cp.connected else 'no':<9} {_time(cp.last_seen_at)}"
        )


@charge_points_group.command("remove")
@click.argument("identity")
@database_option
@click.pass_context
def charge_points_remove(ctx: click.Context, identity: str, database_url: str | None) -> None:
    """Remove a charge point and everything stored about it."""
    removed = _with_database(
        _settings(ctx, database_url=database_url), lambda c: cp_store.remove(c, identity)
    )
    if not removed:
        raise click.ClickException(f"no charge point {identity!r}")
    click.echo(f"removed charge point {identity}")


@charge_points_group.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@click.option(
    "--skip-existing", is_flag=True, help="Skip identities that exist instead of failing."
)
@database_option
@click.pass_context
def charge_points_import(
    ctx: click.Context, csv_file: Any, skip_existing: bool, database_url: str | None
) -> None:
    """Add charge points from a CSV file with header identity,auth_key,security_profile.

    All or nothing: on any bad row nothing is added and the row's line is named.
    """
    settings = _settings(ctx, database_url=database_url)
    text = csv_file.read()
    result = _with_database(
        settings,
        lambda c: admin.import_charge_points(
            c,
            text,
            now=SystemClock().now(),
            skip_existing=skip_existing,
            hash_iterations=settings.auth_key_hash_iterations,
        ),
    )
    click.echo(f"imported {result.added} charge points, skipped {len(result.skipped)}")


@main.group("id-tags")
def id_tags_group() -> None:
    """Manage the authorization list."""


@id_tags_group.command("add")
@click.argument("tag")
@click.option(
    "--status", type=click.Choice(admin.ID_TAG_STATUSES), default="Accepted", show_default=True
)
@click.option("--expiry", default=None, help="ISO 8601 date-time after which the tag is Expired.")
@click.option("--parent", default=None, help="Parent id tag (group).")
@database_option
@click.pass_context
def id_tags_add(
    ctx: click.Context,
    tag: str,
    status: str,
    expiry: str | None,
    parent: str | None,
    database_url: str | None,
) -> None:
    """Add an id tag."""
    _with_database(
        _settings(ctx, database_url=database_url),
        lambda c: admin.add_id_tag(
            c, tag, now=SystemClock().now(), status=status, expiry=expiry, parent=parent
        ),
    )
    click.echo(f"added id tag {tag}")


@id_tags_group.command("list")
@database_option
@click.pass_context
def id_tags_list(ctx: click.Context, database_url: str | None) -> None:
    """List id tags."""
    rows = _with_database(_settings(ctx, database_url=database_url), tag_store.list_all)
    click.echo(f"{'ID TAG':<20} {'STATUS':<8} {'EXPIRY':<24} PARENT")
    for tag in rows:
        expiry = _time(tag.expiry_date)
        click.echo(f"{tag.id_tag:<20} {tag.status:<8} {expiry:<24} {tag.parent_id_tag or '-'}")


@id_tags_group.command("remove")
@click.argument("tag")
@database_option
@click.pass_context
def id_tags_remove(ctx: click.Context, tag: str, database_url: str | None) -> None:
    """Remove an id tag."""
    removed = _with_database(
        _settings(ctx, database_url=database_url), lambda c: tag_store.remove(c, tag)
    )
    if not removed:
        raise click.ClickException(f"no id tag {tag!r}")
    click.echo(f"removed id tag {tag}")


@main.group("users")
def users_group() -> None:
    """Manage operators who use the API and dashboard."""


@users_group.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice([r.value for r in user_store.Role]), required=True)
@click.option(
    "--password",
    default=None,
    help="Login password (prompted when omitted; empty for a token-only user).",
)
@click.option(
    "--group",
    "groups",
    multiple=True,
    help="Limit the user to the charge points of this group (repeatable; created if new).",
)
@database_option
@click.pass_context
def users_add(
    ctx: click.Context,
    username: str,
    role: str,
    password: str | None,
    groups: tuple[str, ...],
    database_url: str | None,
) -> None:
    """Add a user."""
    if password is None:
        password = click.prompt(
            "password (empty for token-only)",
            hide_input=True,
            confirmation_prompt=True,
            default="",
            show_default=False,
        )
    if password and len(password) < 8:
        raise click.ClickException("a password needs at least 8 characters")
    if not 1 <= len(username) <= 64:
        raise click.ClickException("a username is 1 to 64 characters")

    async def work(connection: AsyncConnection) -> None:
        now = SystemClock().now()
        try:
            user_id = await user_store.add_user(
                connection,
                username,
                role=user_store.Role(role),
                now=now,
                password=password or None,
                all_charge_points=not groups,
            )
        except user_store.UserExists:
            raise admin.AdminError(f"user {username!r} already exists") from None
        for name in groups:
            group = await user_store.group_id(connection, name)
            if group is None:
                group = await user_store.add_group(connection, name, now)
            await user_store.grant_group(connection, user_id, group)

    _with_database(_settings(ctx, database_url=database_url), work)
    scope = f"groups {', '.join(groups)}" if groups else "all charge points"
    click.echo(f"added {role} {username} ({scope})")


@users_group.command("token")
@click.argument("username")
@click.option("--name", default="cli", help="A label for the token.")
@click.option("--days", type=click.IntRange(1, 3650), default=None, help="Expire after N days.")
@database_option
@click.pass_context
def users_token(
    ctx: click.Context, username: str, name: str, days: int | None, database_url: str | None
) -> None:
    """Issue an API token (printed once; only its hash is stored)."""
    from datetime import timedelta

    async def work(connection: AsyncConnection) -> str:
        user = await user_store.get_user(connection, username)
        if user is None:
            raise admin.AdminError(f"no user {username!r}")
        now = SystemClock().now()
        expires = now + timedelta(days=days) if days else None
        return await user_store.issue_token(
            connection, user.id, name=name, now=now, expires_at=expires
        )

    click.echo(_with_database(_settings(ctx, database_url=database_url), work))


@users_group.command("list")
@database_option
@click.pass_context
def users_list(ctx: click.Context, database_url: str | None) -> None:
    """List users."""
    rows = _with_database(_settings(ctx, database_url=database_url), user_store.list_users)
    click.echo(f"{'USERNAME':<24} {'ROLE':<9} SCOPE")
    for user in rows:
        scope = "all charge points" if user.all_charge_points else "groups"
        click.echo(f"{user.username:<24} {user.role.value:<9} {scope}")


@users_group.command("remove")
@click.argument("username")
@database_option
@click.pass_context
def users_remove(ctx: click.Context, username: str, database_url: str | None) -> None:
    """Remove a user and its tokens."""
    removed = _with_database(
        _settings(ctx, database_url=database_url),
        lambda c: user_store.remove_user(c, username),
    )
    if not removed:
        raise click.ClickException(f"no user {username!r}")
    click.echo(f"removed user {username}")


@main.group("groups")
def groups_group() -> None:
    """Groups of charge points, which limit what a user sees."""


@groups_group.command("assign")
@click.argument("group")
@click.argument("identities", nargs=-1, required=True)
@database_option
@click.pass_context
def groups_assign(
    ctx: click.Context, group: str, identities: tuple[str, ...], database_url: str | None
) -> None:
    """Put charge points into GROUP (created if new)."""

    async def work(connection: AsyncConnection) -> None:
        group_key = await user_store.group_id(connection, group)
        if group_key is None:
            group_key = await user_store.add_group(connection, group, SystemClock().now())
        for identity in identities:
            if not await user_store.add_to_group(connection, group_key, identity):
                raise admin.AdminError(f"no charge point {identity!r}")

    _with_database(_settings(ctx, database_url=database_url), work)
    click.echo(f"group {group}: added {len(identities)} charge points")


# --- simulator and benchmarks (issue 7) ------------------------------------------------------


@main.command()
@click.option(
    "--url", required=True, help="OCPP endpoint without the identity: ws://HOST:PORT/ocpp"
)
@click.option("--charge-points", "count", type=click.IntRange(1), default=10, show_default=True)
@click.option(
    "--duration",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds to run.",
)
@click.option(
    "--profile",
    type=click.Choice(["realistic", "stress"]),
    default="realistic",
    show_default=True,
    help="realistic: sessions, faults, outages; stress: MeterValues as fast as answered.",
)
@click.option("--id-prefix", default="SIM", show_default=True, help="Identities PREFIX00001, ...")
@click.option("--auth-key", default=None, help="Security Profile 1 AuthorizationKey for all CPs.")
@click.option(
    "--id-tag",
    "id_tags",
    multiple=True,
    help="idTag to charge with (repeatable; spread over connectors). Default SIMTAG.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same behaviour.")
@click.option(
    "--speed",
    type=click.FloatRange(0, min_open=True),
    default=1.0,
    show_default=True,
    help="Simulated seconds per real second (sessions, meter interval, outages).",
)
@click.option("--connectors", type=click.IntRange(0, 8), default=0, help="Per CP (0: 1 or 2).")
@click.option("--meter-interval", type=click.FloatRange(0.1), default=5.0, show_default=True)
@click.option(
    "--idle-mean",
    type=click.FloatRange(0),
    default=120.0,
    show_default=True,
    help="Mean simulated seconds between sessions on a connector.",
)
@click.option(
    "--fault-rate",
    type=click.FloatRange(0),
    default=0.02,
    show_default=True,
    help="Faults per connector per simulated hour.",
)
@click.option(
    "--offline-rate",
    type=click.FloatRange(0),
    default=0.05,
    show_default=True,
    help="Network drops per CP per simulated hour.",
)
@click.option(
    "--ramp",
    type=click.FloatRange(0),
    default=None,
    help="Seconds over which CPs connect (default: N/500, at most 10).",
)
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--quiet", is_flag=True, help="No progress line.")
def simulate(
    url: str,
    count: int,
    duration: float,
    profile: str,
    id_prefix: str,
    auth_key: str | None,
    id_tags: tuple[str, ...],
    seed: int,
    speed: float,
    connectors: int,
    meter_interval: float,
    idle_mean: float,
    fault_rate: float,
    offline_rate: float,
    ramp: float | None,
    summary_json: Path | None,
    quiet: bool,
) -> None:
    """Simulate N OCPP 1.6J charge points against a central system."""
    import json

    from chargegrid.simulator import Fleet, SimConfig
    from chargegrid.simulator.fleet import ProgressLine

    config = SimConfig(
        url=url,
        id_prefix=id_prefix,
        id_tags=id_tags or ("SIMTAG",),
        auth_key=auth_key,
        profile=profile,
        seed=seed,
        speed=speed,
        connectors=connectors,
        meter_interval=meter_interval,
        idle_mean=idle_mean,
        fault_rate=fault_rate,
        offline_rate=offline_rate,
    )
    fleet = Fleet(config, count)
    line = None if quiet else ProgressLine()

    async def run() -> dict[str, Any]:
        return await fleet.run(
            duration, ramp=min(count / 500, 10.0) if ramp is None else ramp, progress=line
        )

    try:
        # uvloop for the fleet's sockets; it must be chosen before the loop exists (installing
        # it inside run() only changed the policy for later loops).
        summary = _run_fast(run())
    except KeyboardInterrupt:
        summary = fleet.summary()
    if line is not None:
        line.done()
    _print_simulation_summary(summary)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    if summary["errors"]["total"]:
        sys.exit(1)


def _print_simulation_summary(summary: dict[str, Any]) -> None:
    click.echo(
        f"{summary['charge_points']} charge points, {summary['duration_s']:.0f} s, "
        f"{summary['messages']['total']} messages ({summary['messages_per_second']}/s)"
    )
    click.echo(f"{'ACTION':<32} {'SENT':>8} {'ANSWERED':>9}")
    sent, answered = summary["messages"]["sent"], summary["messages"]["answered"]
    for action in sorted(sent):
        click.echo(f"{action:<32} {sent[action]:>8} {answered.get(action, 0):>9}")
    for action, n in summary["messages"]["received"].items():
        click.echo(f"{'<- ' + action:<32} {n:>8}")
    sessions = summary["sessions"]
    click.echo(
        f"sessions: {sessions['started']} started, {sessions['stopped']} stopped, "
        f"{sessions['active_at_end']} active; energy {summary['energy_total_wh'] / 1000:,.1f} kWh; "
        f"{summary['offline_periods']} outages, {summary['replayed']} replayed, "
        f"{summary['faults']} faults"
    )
    errors = summary["errors"]
    click.echo(f"errors: {errors['total']}")
    for kind in ("call_errors", "timeouts", "connect_failures", "unexpected"):
        for what, n in errors[kind].items():
            click.echo(f"  {kind}: {what}: {n}")
    if summary["undelivered"]:
        click.echo(f"undelivered at the end: {summary['undelivered']}")
    top = sorted(summary["energy_wh"].items(), key=lambda kv: -kv[1])[:10]
    if top:
        click.echo(
            "energy per charge point (top 10, kWh): "
            + ", ".join(f"{cp} {wh / 1000:.1f}" for cp, wh in top)
        )


def _csv_ints(value: str) -> tuple[int, ...]:
    return tuple(int(part) for part in value.split(",") if part.strip())


def _csv_words(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@main.command()
@click.option(
    "--targets",
    default="chargegrid,ocpp-lib,ocpp-rpc,echo,uvicorn-echo,picows-echo",
    show_default=True,
    help="Servers to measure, comma-separated.",
)
@click.option("--scenarios", default="throughput,latency,idle,storm,commands", show_default=True)
@click.option("--sizes", default="50,500", show_default=True, help="Charge points (throughput).")
@click.option("--sampled", default="3,10", show_default=True, help="Sampled values per message.")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--warmup", type=click.FloatRange(0), default=2.0, show_default=True)
@click.option(
    "--duration",
    type=click.FloatRange(0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds measured per throughput run.",
)
@click.option(
    "--paced-rate",
    type=click.FloatRange(1),
    default=5000.0,
    show_default=True,
    help="Round trips/s of the paced latency run (largest size).",
)
@click.option(
    "--idle",
    type=click.IntRange(0),
    default=20_000,
    show_default=True,
    help="Idle connections to hold (capped by the fd limit).",
)
@click.option(
    "--storm",
    type=click.IntRange(0),
    default=5_000,
    show_default=True,
    help="Charge points connecting at once.",
)
@click.option(
    "--commands",
    type=click.IntRange(0),
    default=100,
    show_default=True,
    help="REST commands and live events timed (chargegrid only).",
)
@click.option(
    "--peers-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("benchmarks/peers"),
    show_default=True,
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("benchmarks/results"),
    show_default=True,
)
@click.option("--base-port", type=click.IntRange(1024, 65000), default=18300, show_default=True)
@click.option(
    "--quick",
    is_flag=True,
    help="A fast sanity run: 1 repeat, 3 s, 2,000 idle, 1,000 storm, 20 commands.",
)
def bench(
    targets: str,
    scenarios: str,
    sizes: str,
    sampled: str,
    repeats: int,
    warmup: float,
    duration: float,
    paced_rate: float,
    idle: int,
    storm: int,
    commands: int,
    peers_dir: Path,
    out_dir: Path,
    base_port: int,
    quick: bool,
) -> None:
    """Benchmark chargegrid against peers (see docs/benchmarks.md); writes JSON, markdown, PNG."""
    from chargegrid.simulator.bench import BenchOptions, markdown, run_bench, write_reports

    options = BenchOptions(
        targets=_csv_words(targets),
        scenarios=_csv_words(scenarios),
        sizes=_csv_ints(sizes),
        sampled=_csv_ints(sampled),
        repeats=1 if quick else repeats,
        warmup=1.0 if quick else warmup,
        duration=3.0 if quick else duration,
        paced_rate=paced_rate,
        idle=min(idle, 2_000) if quick else idle,
        storm=min(storm, 1_000) if quick else storm,
        commands=min(commands, 20) if quick else commands,
        peers_dir=peers_dir,
        out_dir=out_dir,
        base_port=base_port,
    )
    results = run_bench(options, say=lambda line: click.echo(line, err=True))
    for path in write_reports(results, out_dir):
        click.echo(f"wrote {path}", err=True)
    click.echo(markdown(results))


# --- Meter-value pipeline: rollups and alert rules (issue 4) -------------------------------------


def _cli_time(name: str, value: str) -> Any:
    from chargegrid.clock import parse_timestamp

    try:
        return parse_timestamp(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 date-time: {value!r}", param_hint=name) from None


@main.group("rollups")
def rollups_group() -> None:
    """Hourly and daily meter value rollups."""


@rollups_group.command("rebuild")
@click.option("--since", required=True, help="ISO 8601 start (rounded down to a UTC day).")
@click.option("--until", default=None, help="ISO 8601 end (default: now).")
@database_option
@click.pass_context
def rollups_rebuild(
    ctx: click.Context, since: str, until: str | None, database_url: str | None
) -> None:
    """Recompute rollups from raw values, one UTC day per transaction (safe while serving)."""
    from chargegrid.metering.rollups import rebuild

    settings = _settings(ctx, database_url=database_url)
    since_at = _cli_time("--since", since)
    until_at = _cli_time("--until", until) if until else SystemClock().now()
    if until_at < since_at:
        raise click.BadParameter("--until is before --since", param_hint="--until")

    async def run() -> int:
        engine = create_engine(
            settings.database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        try:
            await upgrade(engine)
            return await rebuild(
                engine,
                since_at,
                until_at,
                progress=lambda day, rows: click.echo(
                    f"{day.date().isoformat()}: {rows} values", err=True
                ),
            )
        finally:
            await engine.dispose()

    rows = asyncio.run(run())
    click.echo(f"rebuilt rollups from {rows} raw values")


@main.group("alerts")
def alerts_group() -> None:
    """Alert rules."""


@alerts_group.command("import")
@click.argument("rules_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@database_option
@click.pass_context
def alerts_import(ctx: click.Context, rules_file: Path, database_url: str | None) -> None:
    """Create or replace the rules of a TOML file ([[rules]] tables), by name."""
    from chargegrid.metering.alerts import sync_rules_file

    settings = _settings(ctx, database_url=database_url)
    try:
        count = _with_database(
            settings, lambda c: sync_rules_file(c, rules_file, SystemClock().now())
        )
    except (ValidationError, ValueError) as error:
        raise click.ClickException(f"invalid rules file: {error}") from None
    click.echo(f"imported {count} rules")
