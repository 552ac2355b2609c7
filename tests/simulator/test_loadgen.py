"""The load generator's closed loop against a real server: with ``in_sessions`` every charge
point's values carry its own transaction id, and the server finds them by session."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid import admin
from chargegrid.simulator import loadgen
from chargegrid.store.tables import charge_points, meter_values
from chargegrid.store.value_keys import transaction_values
from support import RunningServer


@pytest.mark.parametrize("in_sessions", [False, True])
async def test_throughput_values_carry_a_session_only_when_asked(
    server: RunningServer, in_sessions: bool
) -> None:
    identities = ["LG1", "LG2", "LG3"]
    engine = server.node.engine

    async def setup(connection: AsyncConnection) -> None:
        for identity in identities:
            await admin.add_charge_point(
                connection, identity, now=datetime.now(UTC), hash_iterations=1000
            )

    await server.node.writer.run(setup)
    result = await loadgen.throughput(
        server.ws_url, identities, warmup=0.2, duration=0.5, in_sessions=in_sessions
    )
    assert result["connected"] == 3 and result["errors"] == {}
    assert result["round_trips"] > 0 and result["in_sessions"] is in_sessions
    async with engine.connect() as connection:
        stored = (
            await connection.execute(
                select(charge_points.c.identity, meter_values.c.transaction_id)
                .join(charge_points)
                .distinct()
            )
        ).all()
        assert {identity for identity, _ in stored} == set(identities)
        if not in_sessions:
            assert {session for _, session in stored} == {None}
            return
        # Each charge point reports one session of its own (1..3, in the order they connected).
        session_of = dict(stored)
        assert len(stored) == 3 and sorted(session_of.values()) == [1, 2, 3]
        second = (await connection.execute(transaction_values(connection.dialect.name, 2))).all()
        owner = next(identity for identity, session in stored if session == 2)
        owner_id = await connection.scalar(
            select(charge_points.c.id).where(charge_points.c.identity == owner)
        )
        assert second and {row.charge_point_id for row in second} == {owner_id}
