"""Energy from an energy register, aware of register resets (CONFORMANCE M8)."""

from __future__ import annotations

from collections.abc import Iterable


def register_energy(readings: Iterable[float]) -> float:
    """Energy in the register's unit over time-ordered ``readings``.

    A reading lower than the one before means the register was reset (meter swap, firmware
    update, a 32-bit counter wrapping): the energy since the reset is the new reading itself,
    never a negative difference.
    """
    total = 0.0
    previous: float | None = None
    for reading in readings:
        if previous is not None:
            total += reading - previous if reading >= previous else max(reading, 0.0)
        previous = reading
    return total
