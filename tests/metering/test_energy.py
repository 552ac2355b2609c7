"""Energy from an energy register, across register resets (CONFORMANCE M8)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chargegrid.metering.energy import register_energy

readings = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize(
    ("values", "energy"),
    [
        ([], 0.0),
        ([5.0], 0.0),
        ([1000.0, 1000.0], 0.0),
        ([1000.0, 1500.0, 2500.0], 1500.0),
        # Reset to 0 then counting again: 500 before, 300 after.
        ([1000.0, 1500.0, 0.0, 300.0], 800.0),
        # Reset to a small value: the new reading itself was charged since the reset.
        ([1000.0, 1500.0, 100.0, 300.0], 500.0 + 100.0 + 200.0),
        # A 32-bit counter wrapping.
        ([4_294_967_000.0, 4_294_967_295.0, 5.0, 105.0], 295.0 + 5.0 + 100.0),
        # Two resets.
        ([10.0, 20.0, 1.0, 5.0, 2.0, 4.0], 10.0 + 1.0 + 4.0 + 2.0 + 2.0),
    ],
)
def test_register_energy(values: list[float], energy: float) -> None:
    assert register_energy(values) == pytest.approx(energy)


def test_accepts_any_iterable() -> None:
    assert register_energy(iter([1.0, 2.0, 4.0])) == 3.0
    assert register_energy(x for x in (0.0, 10.0)) == 10.0


def test_a_negative_reading_after_a_reset_adds_nothing() -> None:
    assert register_energy([100.0, -5.0, 10.0]) == pytest.approx(15.0)


@given(st.lists(readings, max_size=50))
def test_never_negative(values: list[float]) -> None:
    assert register_energy(values) >= 0


@given(st.lists(readings, min_size=1, max_size=50))
def test_monotone_input_gives_last_minus_first(values: list[float]) -> None:
    values.sort()
    assert register_energy(values) == pytest.approx(values[-1] - values[0], rel=1e-9, abs=1e-6)


@given(st.lists(readings, min_size=1, max_size=30), st.lists(readings, min_size=1, max_size=30))
def test_a_reset_between_two_runs_adds_both(before: list[float], after: list[float]) -> None:
    before.sort()
    after.sort()
    if after[0] >= before[-1]:
        return  # not a reset
    expected = (before[-1] - before[0]) + after[0] + (after[-1] - after[0])
    assert register_energy(before + after) == pytest.approx(expected, rel=1e-9, abs=1e-6)


@given(st.lists(readings, max_size=50))
def test_at_least_the_sum_of_rises(values: list[float]) -> None:
    rises = sum(b - a for a, b in itertools.pairwise(values) if b >= a)
    assert register_energy(values) >= rises - 1e-6 * max(1.0, rises)
