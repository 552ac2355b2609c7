"""A schemathesis run against the live server's OpenAPI spec finds no 5xx (issue 3).

Every operation in ``/openapi.json`` gets a bounded number of generated valid requests as an
admin; then, while the time budget lasts, invalid ones (negative generation), and both again with
``{identity}`` pinned to a connected charge point so that commands reach it. The only check is
"not a server error". schemathesis is synchronous (requests), so it runs in a thread while the
server serves on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import requests
import schemathesis
from cmdsupport import ScriptedChargePoint, make_user
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from support import RunningServer, charge_point

EXAMPLES_PER_OPERATION = 4
TIME_BUDGET_SECONDS = 40.0


def fuzz(base_url: str, token: str, pinned: dict[str, str]) -> tuple[list[str], int]:
    """Return a description of each server error found, and how many passes ran.

    Pass 1 (valid requests) covers every operation whatever the time; further passes (invalid
    requests, then ``pinned`` path parameters) run while the time budget lasts.
    """
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    session = requests.Session()
    deadline = time.monotonic() + TIME_BUDGET_SECONDS
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the spec lists no operations"
    passes = [
        (GenerationMode.POSITIVE, False),
        (GenerationMode.NEGATIVE, False),
        (GenerationMode.POSITIVE, True),
        (GenerationMode.NEGATIVE, True),
    ]
    for number, (mode, pin) in enumerate(passes, start=1):
        for operation in operations:
            if number > 1 and time.monotonic() > deadline:
                return failures, number - 1
            path_parameters: dict[str, Any] = {}
            if pin:
                names = {p.name for p in operation.path_parameters}
                path_parameters = {k: v for k, v in pinned.items() if k in names}
                if not path_parameters:
                    continue
            strategy = operation.as_strategy(
                generation_mode=mode, path_parameters=path_parameters or None
            )

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                response = case.call(
                    base_url=base_url, session=session, headers=headers, timeout=10
                )
                try:
                    case.validate_response(response, checks=[not_a_server_error])
                except (Exception, BaseExceptionGroup) as error:  # FailureGroup is the latter
                    failures.append(
                        f"{case.operation.label}: {response.status_code} {response.text[:300]}"
                        f"\n  {case.as_curl_command(headers=headers)}\n  {error}"
                    )

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
    return failures, len(passes)


# schemathesis' negative generation uses `random` inside strategies, which Hypothesis deprecates.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_no_server_errors(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    token = await make_user(server, "fuzzer", "admin", password="fuzzer-password")
    async with charge_point(server, "CP1", cls=ScriptedChargePoint):
        failures, passes = await asyncio.to_thread(
            fuzz, server.http_url, token, {"identity": "CP1", "username": "nobody"}
        )
    assert failures == [], "\n".join(failures)
    assert passes >= 1
