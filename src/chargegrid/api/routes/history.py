"""history routes (issue 4, in progress)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
