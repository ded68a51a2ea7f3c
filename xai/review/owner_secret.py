"""The owner's secret: a fresh one, its salted scrypt hash (all that is stored) and the constant-time check."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from xai.review.errors import ReviewError

__all__ = ["hash_secret", "new_owner_secret", "secret_matches"]

#: scrypt cost (RFC 7914): N = 2^14, r = 8, p = 1 needs 16 MiB and ~50 ms per check, the interactive-login
#: setting of the scrypt paper (Percival 2009); a stolen database then costs a guesser that much per guess.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32


def new_owner_secret() -> str:
    """A fresh owner secret: 16 random bytes (:func:`secrets.token_urlsafe`), 22 characters to copy."""
    return secrets.token_urlsafe(16)


def hash_secret(secret: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (hex) of ``secret`` with a fresh 16-byte salt (:func:`hashlib.scrypt`).

    Only this is stored: a database copy does not reveal the secret, and the salt makes equal secrets
    hash differently."""
    secret = str(secret)
    if len(secret) < 8:
        raise ReviewError("the owner's secret must be at least 8 characters long")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_LEN)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def secret_matches(secret: str, stored: str | None) -> bool:
    """Whether ``secret`` hashes to ``stored`` (from :func:`hash_secret`); compared with
    :func:`hmac.compare_digest` (no timing hint). False for no stored hash or a malformed one."""
    try:
        kind, n, r, p, salt, digest = str(stored).split("$")
        if kind != "scrypt":
            return False
        expected = bytes.fromhex(digest)
        given = hashlib.scrypt(str(secret).encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                               p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(given, expected)
