"""The group-commit writer against a real SQLite file (DESIGN.md guarantee 1).

Rows and units of work from many concurrent callers go to the database in few transactions; each
caller returns only once its batch is committed, a failing unit fails only its own caller, and a
batch that cannot be committed fails every caller in it with ``StoreUnavailable`` and leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chargegrid.store.database import create_engine
from chargegrid.store.group_commit import GroupCommitter, StoreUnavailable
from chargegrid.store.migrate import upgrade
from chargegrid.store.tables import charge_points, id_tags
from chargegrid.store.types import sqlite_text

NOW = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
TAG_INSERT = insert(id_tags)
CP_INSERT = insert(charge_points)


def tag_row(tag: str) -> dict[str, Any]:
    return {"id_tag": tag, "status": "Accepted", "created_at": NOW, "updated_at": NOW}


def cp_row(identity: str) -> dict[str, Any]:
    return {"identity": identity, "created_at": NOW, "updated_at": NOW}


def add_tag(tag: str, result: Any = None, fail_after: bool = False) -> Any:
    """A unit of work inserting ``tag``; raises after the insert when ``fail_after``."""

    async def unit(connection: AsyncConnection) -> Any:
        await connection.execute(insert(id_tags).values(**tag_row(tag)))
        if fail_after:
            raise ValueError(f"unit for {tag} failed on purpose")
        return result

    return unit


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'gc.db'}", sqlite_synchronous="NORMAL")
    await upgrade(engine)
    yield engine
    await engine.dispose()


async def tags(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(id_tags.c.id_tag).order_by(id_tags.c.id_tag))
        return [r[0] for r in rows]


async def count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


@pytest.fixture
async def writer_factory(engine: AsyncEngine) -> AsyncIterator[Any]:
    writers: list[GroupCommitter] = []

    async def make(**kwargs: Any) -> GroupCommitter:
        writer = GroupCommitter(engine, **kwargs)
        await writer.start()
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        await asyncio.wait_for(writer.stop(), 10)


async def test_concurrent_inserts_share_few_batches(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    writer: GroupCommitter = await writer_factory(interval=0.01)
    calls = 500
    await asyncio.wait_for(
        asyncio.gather(*(writer.insert(TAG_INSERT, [tag_row(f"T{i:04d}")]) for i in range(calls))),
        20,
    )
    assert await count(engine, id_tags) == calls
    assert writer.stats.rows == calls
    assert 1 <= writer.stats.batches <= 10, writer.stats
    assert writer.stats.failures == 0
    assert writer.queued == 0


async def test_insert_returns_only_after_commit(engine: AsyncEngine, writer_factory: Any) -> None:
    writer: GroupCommitter = await writer_factory(interval=0.05)
    await writer.insert(TAG_INSERT, [tag_row("A"), tag_row("B")])
    # Visible to another connection at once: committed, not merely queued.
    assert await tags(engine) == ["A", "B"]


async def test_insert_of_no_rows_returns_at_once(writer_factory: Any) -> None:
    writer: GroupCommitter = await writer_factory(interval=10)
    await asyncio.wait_for(writer.insert(TAG_INSERT, []), 1)
    assert writer.stats.batches == 0


async def test_units_and_rows_in_one_batch(engine: AsyncEngine, writer_factory: Any) -> None:
    writer: GroupCommitter = await writer_factory(interval=0.05)
    results = await asyncio.gather(
        writer.run(add_tag("U1", result=1)),
        writer.insert(TAG_INSERT, [tag_row("R1")]),
        writer.run(add_tag("U2", result="two")),
        writer.insert(CP_INSERT, [cp_row("CP1")]),
    )
    assert results == [1, None, "two", None]
    assert writer.stats.batches == 1
    assert writer.stats.units == 2
    assert writer.stats.rows == 2
    assert await tags(engine) == ["R1", "U1", "U2"]
    assert await count(engine, charge_points) == 1


async def test_a_failing_unit_fails_only_its_caller(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    writer: GroupCommitter = await writer_factory(interval=0.05)
    results = await asyncio.gather(
        writer.run(add_tag("GOOD1", result="g1")),
        writer.run(add_tag("BAD", fail_after=True)),  # its insert must be rolled back
        writer.run(add_tag("GOOD1")),  # duplicate: IntegrityError inside its savepoint
        writer.insert(TAG_INSERT, [tag_row("ROW")]),
        writer.run(add_tag("GOOD2", result="g2")),
        return_exceptions=True,
    )
    assert results[0] == "g1"
    assert isinstance(results[1], ValueError)
    assert "on purpose" in str(results[1])
    assert isinstance(results[2], Exception)
    assert not isinstance(results[2], StoreUnavailable)
    assert results[3] is None
    assert results[4] == "g2"
    assert writer.stats.batches == 1
    assert writer.stats.failures == 0
    assert await tags(engine) == ["GOOD1", "GOOD2", "ROW"]


async def test_unusable_table_fails_the_whole_batch_and_writes_nothing(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    writer: GroupCommitter = await writer_factory(interval=0.05)
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE id_tags"))
    results = await asyncio.gather(
        writer.insert(CP_INSERT, [cp_row("CP1"), cp_row("CP2")]),  # fine on its own
        writer.insert(TAG_INSERT, [tag_row("T1")]),  # no such table
        writer.run(lambda c: c.execute(insert(charge_points).values(**cp_row("CP3")))),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert writer.stats.failures == 1
    assert writer.stats.batches == 0
    assert await count(engine, charge_points) == 0
    # The writer keeps going: the next batch without the broken table commits.
    await writer.insert(CP_INSERT, [cp_row("CP4")])
    assert await count(engine, charge_points) == 1


async def test_failed_commit_fails_every_caller_and_writes_nothing(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    """The statements succeed but COMMIT fails (a deferred foreign key): all or nothing."""
    writer: GroupCommitter = await writer_factory(interval=0.05)

    async def defer_foreign_keys(connection: AsyncConnection) -> str:
        await connection.execute(text("PRAGMA defer_foreign_keys = ON"))
        return "deferred"

    async def orphan_connector(connection: AsyncConnection) -> str:
        await connection.execute(
            text(
                "INSERT INTO connectors (charge_point_id, connector_id, status, error_code, "
                "updated_at) VALUES (999, 1, 'Available', 'NoError', '2024-01-01 00:00:00')"
            )
        )
        return "orphan"

    results = await asyncio.gather(
        writer.run(defer_foreign_keys),
        writer.insert(TAG_INSERT, [tag_row("T1")]),
        writer.run(orphan_connector),
        writer.run(add_tag("T2", result="t2")),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert await tags(engine) == []
    assert writer.stats.failures == 1
    # The writer recovers.
    await writer.insert(TAG_INSERT, [tag_row("T3")])
    assert await tags(engine) == ["T3"]


async def test_unreadable_database_file_gives_store_unavailable(tmp_path: Path) -> None:
    """The database file is replaced by garbage under a running writer."""
    path = tmp_path / "broken.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await upgrade(engine)
    await engine.dispose()
    path.write_bytes(b"this is not a database" * 1000)
    writer = GroupCommitter(engine, interval=0.01)
    await writer.start()
    try:
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(writer.insert(TAG_INSERT, [tag_row("T1")]), 10)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(writer.run(add_tag("T2")), 10)
    finally:
        await writer.stop()
        await engine.dispose()


async def test_max_items_flushes_before_the_interval(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    writer: GroupCommitter = await writer_factory(interval=30, max_items=10)
    started = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(writer.insert(TAG_INSERT, [tag_row(f"T{i}")]) for i in range(10))), 5
    )
    assert time.monotonic() - started < 5
    assert await count(engine, id_tags) == 10
    assert writer.stats.last_batch_items == 10


async def test_a_small_batch_waits_for_the_interval(writer_factory: Any) -> None:
    writer: GroupCommitter = await writer_factory(interval=0.3, max_items=10)
    started = time.monotonic()
    await writer.insert(TAG_INSERT, [tag_row("T1")])
    assert time.monotonic() - started >= 0.25


async def test_stop_commits_what_is_queued(engine: AsyncEngine) -> None:
    writer = GroupCommitter(engine, interval=30)
    await writer.start()
    pending = [
        asyncio.create_task(writer.insert(TAG_INSERT, [tag_row(f"T{i}")])) for i in range(20)
    ]
    pending.append(asyncio.create_task(writer.run(add_tag("UNIT", result="u"))))
    await asyncio.sleep(0.05)  # all queued, the interval far away
    assert writer.queued == 21
    await asyncio.wait_for(writer.stop(), 5)
    results = await asyncio.wait_for(asyncio.gather(*pending), 1)
    assert results[-1] == "u"
    assert await count(engine, id_tags) == 21
    with pytest.raises(StoreUnavailable):
        await writer.insert(TAG_INSERT, [tag_row("LATE")])
    with pytest.raises(StoreUnavailable):
        await writer.run(add_tag("LATE"))


async def test_not_started_writer_refuses_work(engine: AsyncEngine) -> None:
    writer = GroupCommitter(engine)
    with pytest.raises(StoreUnavailable):
        await writer.insert(TAG_INSERT, [tag_row("T1")])


async def test_backpressure_with_a_tiny_queue_completes_everything(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    writer: GroupCommitter = await writer_factory(interval=0.001, queue_limit=3)
    calls = [writer.insert(TAG_INSERT, [tag_row(f"R{i:03d}")]) for i in range(150)]
    calls += [writer.run(add_tag(f"U{i:03d}", result=i)) for i in range(50)]
    results = await asyncio.wait_for(asyncio.gather(*calls), 30)
    assert results[150:] == list(range(50))
    assert await count(engine, id_tags) == 200
    assert writer.stats.last_batch_items <= 3
    assert writer.queued == 0


async def test_a_write_larger_than_the_queue_limit_is_not_stuck_forever(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    """One message with more rows than ``queue_limit`` (e.g. a MeterValues with many samples)."""
    writer: GroupCommitter = await writer_factory(interval=0.001, queue_limit=2)
    await asyncio.wait_for(writer.insert(TAG_INSERT, [tag_row("A"), tag_row("B"), tag_row("C")]), 5)
    assert await tags(engine) == ["A", "B", "C"]


async def test_stop_with_callers_waiting_for_queue_space(engine: AsyncEngine) -> None:
    """Callers held back by backpressure when stop() is called are committed or refused,
    never left waiting forever."""
    writer = GroupCommitter(engine, interval=0.001, queue_limit=1)
    await writer.start()
    pending = [
        asyncio.create_task(writer.insert(TAG_INSERT, [tag_row(f"T{i}")])) for i in range(10)
    ]
    await asyncio.sleep(0)  # every caller has entered the writer
    await asyncio.wait_for(writer.stop(), 5)
    done, not_done = await asyncio.wait(pending, timeout=5)
    for task in not_done:
        task.cancel()
    assert not not_done, f"{len(not_done)} callers still waiting after stop()"
    committed = [t for t in done if t.exception() is None]
    refused = [t for t in done if isinstance(t.exception(), StoreUnavailable)]
    assert len(committed) + len(refused) == 10
    assert await count(engine, id_tags) == len(committed)


async def test_a_stalled_batch_answers_its_callers_within_the_wait_timeout(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    """A database that stops answering holds the one writer; callers in that batch and every
    write queued behind it get StoreUnavailable once ``wait_timeout`` passes, not when the
    database returns. The queued write is not dropped: it commits once the writer moves on."""
    writer = await writer_factory(interval=0.001, wait_timeout=0.3)
    release = asyncio.Event()

    async def stalled(connection: AsyncConnection) -> None:
        await connection.execute(insert(id_tags).values(**tag_row("STALLED")))
        await release.wait()  # stands in for a statement the database never answers

    started = time.monotonic()
    first = asyncio.create_task(writer.run(stalled))
    await asyncio.sleep(0.05)  # the stalled batch is being written
    with pytest.raises(StoreUnavailable, match=r"did not commit within 0\.3 s"):
        await writer.insert(TAG_INSERT, [tag_row("QUEUED")])
    with pytest.raises(StoreUnavailable):
        await first
    assert time.monotonic() - started < 1.0
    assert writer.stats.timeouts == 2
    assert await tags(engine) == []
    release.set()
    for _ in range(100):  # both writes were kept and commit once the database answers
        if await tags(engine) == ["QUEUED", "STALLED"]:
            break
        await asyncio.sleep(0.02)
    assert await tags(engine) == ["QUEUED", "STALLED"]
    await writer.insert(TAG_INSERT, [tag_row("LATER")])  # and the writer goes on
    assert "LATER" in await tags(engine)


async def test_plain_statements_commit_with_the_batch_and_a_failing_one_fails_alone(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    """``execute``: plain SQL in the next batch, each caller's statements in a savepoint of
    their own (here the usual way: the batch has no sink to take it in one trip)."""
    writer: GroupCommitter = await writer_factory(interval=0.05)
    sql = (
        "INSERT INTO id_tags (id_tag, status, created_at, updated_at) VALUES (?, 'Accepted', ?, ?)"
    )
    at = sqlite_text(NOW)
    results = await asyncio.gather(
        writer.execute([(sql, ("S1", at, at)), (sql, ("S2", at, at))]),
        # The second statement is a duplicate: the first one of the same caller goes too.
        writer.execute([(sql, ("S3", at, at)), (sql, ("S1", at, at))]),
        writer.insert(TAG_INSERT, [tag_row("ROW")]),
        writer.execute([]),  # nothing to do: at once
        return_exceptions=True,
    )
    assert results[0] == []  # the last statement returns no rows
    assert isinstance(results[1], Exception)
    assert not isinstance(results[1], StoreUnavailable)
    assert results[2:] == [None, []]
    assert writer.stats.batches == 1
    assert writer.stats.units == 2
    assert await tags(engine) == ["ROW", "S1", "S2"]
    async with engine.connect() as connection:  # stored as the ORM would have
        created = await connection.scalar(
            select(id_tags.c.created_at).where(id_tags.c.id_tag == "S2")
        )
    assert created == NOW


async def test_insert_nowait_calls_back_once_after_the_commit(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    """insert_nowait: the callback is told None once the batch is committed (the rows are
    visible), never before the call returns; a callback that raises keeps no other from its
    answer. Without rows, room or a running writer it takes nothing (False)."""
    writer: GroupCommitter = await writer_factory(interval=0.05)
    told: list[tuple[str, Exception | None]] = []

    def done(name: str) -> Any:
        def callback(error: Exception | None) -> None:
            told.append((name, error))
            if name == "raises":
                raise RuntimeError("a caller's bug")

        return callback

    assert writer.insert_nowait(TAG_INSERT, [tag_row("A")], done("a"))
    assert writer.insert_nowait(TAG_INSERT, [tag_row("B")], done("raises"))
    assert writer.insert_nowait(TAG_INSERT, [tag_row("C")], done("c"))
    assert told == []  # queued, not committed
    assert not writer.insert_nowait(TAG_INSERT, [], done("none"))
    for _ in range(100):
        if len(told) == 3:
            break
        await asyncio.sleep(0.01)
    assert told == [("a", None), ("raises", None), ("c", None)]
    assert await tags(engine) == ["A", "B", "C"]
    assert writer.stats.batches == 1 and writer.queued == 0
    await asyncio.sleep(0.1)
    assert len(told) == 3  # once each
    await writer.stop()
    assert not writer.insert_nowait(TAG_INSERT, [tag_row("D")], done("stopped"))
    small: GroupCommitter = await writer_factory(interval=10, queue_limit=2)
    assert small.insert_nowait(TAG_INSERT, [tag_row("E"), tag_row("F")], done("e"))
    assert not small.insert_nowait(TAG_INSERT, [tag_row("G")], done("full"))  # insert() waits
    assert [name for name, _ in told] == ["a", "raises", "c"]


async def test_insert_nowait_is_told_of_a_failed_or_stalled_batch_once(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    """A batch that cannot commit tells its callbacks StoreUnavailable; one past the wait
    timeout tells them then, and not again when it commits later."""
    writer: GroupCommitter = await writer_factory(interval=0.001, wait_timeout=0.3)
    told: list[Exception | None] = []
    release = asyncio.Event()

    async def failing(connection: AsyncConnection) -> None:
        await connection.execute(text("PRAGMA defer_foreign_keys = ON"))
        await connection.execute(
            text(
                "INSERT INTO connectors (charge_point_id, connector_id, status, error_code, "
                "updated_at) VALUES (999, 1, 'Available', 'NoError', '2024-01-01 00:00:00')"
            )
        )

    unit = asyncio.create_task(writer.run(failing))
    assert writer.insert_nowait(TAG_INSERT, [tag_row("LOST")], told.append)
    with pytest.raises(StoreUnavailable):
        await unit
    assert len(told) == 1 and isinstance(told[0], StoreUnavailable)
    assert await tags(engine) == []

    async def stalled(connection: AsyncConnection) -> None:
        await release.wait()  # stands in for a statement the database never answers

    first = asyncio.create_task(writer.run(stalled))
    await asyncio.sleep(0.05)  # the stalled batch is being written
    assert writer.insert_nowait(TAG_INSERT, [tag_row("QUEUED")], told.append)
    await asyncio.sleep(0.5)
    assert len(told) == 2 and isinstance(told[1], StoreUnavailable)
    assert "did not commit within 0.3 s" in str(told[1])
    release.set()
    with pytest.raises(StoreUnavailable):
        await first
    for _ in range(100):  # kept: it commits once the database answers
        if await tags(engine) == ["QUEUED"]:
            break
        await asyncio.sleep(0.02)
    assert await tags(engine) == ["QUEUED"]
    await asyncio.sleep(0.05)
    assert len(told) == 2  # not told again


async def test_units_beyond_max_items_wait_for_the_next_batch_in_order(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    """Units queued faster than the writer takes them (a connection storm) go ``max_items`` to
    a batch, in order, rows with the first: one batch of everything queued could outlast
    ``wait_timeout`` and fail every caller in it."""
    writer: GroupCommitter = await writer_factory(interval=0.05, max_items=3)
    sizes: list[int] = []
    writer.on_commit = lambda items, _seconds: sizes.append(items)
    results = await asyncio.gather(
        *(writer.run(add_tag(f"T{i}", result=i)) for i in range(7)),
        writer.insert(TAG_INSERT, [tag_row("ROW1"), tag_row("ROW2")]),
    )
    assert results == [*range(7), None]
    assert sizes == [5, 3, 1]  # the rows (2 items) and 3 units; then 3 units; then 1
    assert await count(engine, id_tags) == 9


async def test_units_carried_to_the_next_batch_keep_their_wait_timeout(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    """A caller whose unit is left for the next batch is still answered within
    ``wait_timeout`` of its write while the batch before it is stuck, and its unit still
    commits once the database answers."""
    writer: GroupCommitter = await writer_factory(interval=0.001, max_items=1, wait_timeout=0.3)
    release = asyncio.Event()

    async def stalled(connection: AsyncConnection) -> None:
        await connection.execute(insert(id_tags).values(**tag_row("STALLED")))
        await release.wait()  # stands in for a statement the database never answers

    started = time.monotonic()
    calls = [
        asyncio.create_task(writer.run(stalled)),
        asyncio.create_task(writer.run(add_tag("CARRIED"))),
    ]
    done, _pending = await asyncio.wait(calls, timeout=2)
    assert len(done) == 2
    assert time.monotonic() - started < 1.5
    for call in calls:
        with pytest.raises(StoreUnavailable, match=r"did not commit within 0\.3 s"):
            call.result()
    release.set()
    for _ in range(100):
        if await tags(engine) == ["CARRIED", "STALLED"]:
            break
        await asyncio.sleep(0.02)
    assert await tags(engine) == ["CARRIED", "STALLED"]


async def test_late_runs_once_when_a_unit_commits_after_its_caller_was_answered(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    """``run(late=)``: a unit whose caller got StoreUnavailable by the wait timeout but which
    committed after all has its follow-up (publishing its live event) run with its result,
    once; a unit committed in time, or one whose batch failed, never runs it."""
    writer: GroupCommitter = await writer_factory(interval=0.001, wait_timeout=0.3)
    release = asyncio.Event()
    late_results: list[Any] = []

    async def late(result: Any) -> None:
        late_results.append(result)

    async def stalled(connection: AsyncConnection) -> str:
        await connection.execute(insert(id_tags).values(**tag_row("STALLED")))
        await release.wait()  # stands in for a statement the database never answers
        return "stalled-result"

    assert await writer.run(add_tag("ON-TIME", result="on-time"), late=late) == "on-time"
    with pytest.raises(StoreUnavailable):
        await writer.run(stalled, late=late)
    assert late_results == []
    release.set()
    for _ in range(100):
        if late_results:
            break
        await asyncio.sleep(0.02)
    assert late_results == ["stalled-result"]
    assert await tags(engine) == ["ON-TIME", "STALLED"]
    # A unit that fails in a batch that commits: its caller had its error, nothing runs late.
    with pytest.raises(ValueError):
        await writer.run(add_tag("BAD", fail_after=True), late=late)
    await asyncio.sleep(0.05)
    assert late_results == ["stalled-result"]
    assert not writer._late  # nothing kept for units already written


async def test_a_caller_joining_a_batch_past_its_deadline_is_answered_too(
    engine: AsyncEngine, writer_factory: Any
) -> None:
    """While the writer is stuck the open batch stays open: a caller that joins it after its
    first callers were answered by the wait timeout is answered by a deadline of its own (it
    used to wait for the database), and its write is still kept."""
    writer: GroupCommitter = await writer_factory(interval=0.001, wait_timeout=0.3)
    release = asyncio.Event()

    async def stalled(connection: AsyncConnection) -> None:
        await release.wait()

    blocker = asyncio.create_task(writer.run(stalled))
    await asyncio.sleep(0.05)
    with pytest.raises(StoreUnavailable):
        await writer.insert(TAG_INSERT, [tag_row("FIRST")])  # opens the next batch, expires
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(writer.insert(TAG_INSERT, [tag_row("JOINED")]), 2)
    assert 0.25 < time.monotonic() - started < 1.5
    release.set()
    with pytest.raises(StoreUnavailable):
        await blocker
    for _ in range(100):
        if await tags(engine) == ["FIRST", "JOINED"]:
            break
        await asyncio.sleep(0.02)
    assert await tags(engine) == ["FIRST", "JOINED"]
