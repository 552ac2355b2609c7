"""charge points routes (filled in by issue 3's work in progress)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
