"""chargegrid: an OCPP 1.6J central system."""

from __future__ import annotations

__version__ = "0.1.0"
