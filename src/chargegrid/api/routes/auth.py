"""Getting an API token with a username and password."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from chargegrid.api.deps import Node, Viewer
from chargegrid.store import users as user_store
from chargegrid.store.database import writing

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class TokenRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    name: str = Field(default="api", max_length=64, description="A label for the token.")
    expires_in_days: int | None = Field(default=30, ge=1, le=3650)


class TokenOut(BaseModel):
    token: str
    token_type: str = "bearer"
    username: str
    role: str


class Me(BaseModel):
    username: str
    role: str
    all_charge_points: bool


@router.post("/token", response_model=TokenOut)
async def issue_token(body: TokenRequest, node: Node) -> TokenOut:
    """A bearer token for ``Authorization: Bearer ...``; shown once, stored only as a hash."""
    async with writing(node.engine).begin() as connection:
        user = await user_store.check_password(connection, body.username, body.password)
        if user is None:
            raise HTTPException(401, "wrong username or password")
        now = node.clock.now()
        expires = now + timedelta(days=body.expires_in_days) if body.expires_in_days else None
        token = await user_store.issue_token(
            connection, user.id, name=body.name, now=now, expires_at=expires
        )
    return TokenOut(token=token, username=user.username, role=user.role.value)


@router.get("/me", response_model=Me)
async def me(principal: Viewer) -> Me:
    user = principal.user
    return Me(
        username=user.username, role=user.role.value, all_charge_points=user.all_charge_points
    )
