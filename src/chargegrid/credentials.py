"""Salted hashes for charge point AuthorizationKeys (DESIGN.md guarantee 6).

PBKDF2-HMAC-SHA256 from the standard library: an AuthorizationKey is 16-20 random bytes
(OCPP 1.6 Security Whitepaper, configuration key ``AuthorizationKey``), so the hash need not be
memory-hard; it needs a salt per key and must stay cheap enough that 5,000 charge points
reconnecting at once are admitted in seconds. The key itself is never stored or logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SCHEME = "pbkdf2_sha256"


def hash_secret(secret: str, *, iterations: int = 5_000) -> str:
    """``pbkdf2_sha256$iterations$salt$hash`` for ``secret``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return "$".join((SCHEME, str(iterations), _b64(salt), _b64(digest)))


def verify_secret(secret: str, encoded: str) -> bool:
    """True when ``secret`` matches ``encoded``; constant-time, never raises on bad input."""
    try:
        scheme, iterations, salt, expected = encoded.split("$")
        if scheme != SCHEME:
            return False
        digest = hashlib.pbkdf2_hmac(
            "sha256", secret.encode(), base64.b64decode(salt), int(iterations)
        )
        return hmac.compare_digest(digest, base64.b64decode(expected))
    except (ValueError, TypeError):
        return False


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
