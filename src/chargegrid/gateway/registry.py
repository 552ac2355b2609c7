"""Which connection is live for each charge point (DESIGN.md guarantee 3)."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Closable(Protocol):
    identity: str

    async def close(self, code: int, reason: str) -> None: ...


C = TypeVar("C", bound=Closable)


class ConnectionRegistry(Generic[C]):
    """One live connection per charge point identity; the newest wins (CONFORMANCE H7)."""

    def __init__(self) -> None:
        self._live: dict[str, C] = {}

    def register(self, connection: C) -> C | None:
        """Make ``connection`` the live one; return the one it replaced (the caller closes it)."""
        previous = self._live.get(connection.identity)
        self._live[connection.identity] = connection
        return previous if previous is not connection else None

    def unregister(self, connection: C) -> bool:
        """Forget ``connection`` if, and only if, it is still the live one.

        A replaced socket's cleanup runs after its successor registered; it must not remove it.
        """
        if self._live.get(connection.identity) is connection:
            del self._live[connection.identity]
            return True
        return False

    def get(self, identity: str) -> C | None:
        return self._live.get(identity)

    def __contains__(self, identity: object) -> bool:
        return identity in self._live

    def __len__(self) -> int:
        return len(self._live)

    def identities(self) -> list[str]:
        return list(self._live)
