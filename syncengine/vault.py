"""Secrets at rest: sealed with SYNCENGINE_SECRET_KEY (Fernet) where it is set, opened for their one reader.

    stored = seal(token)                                   # 'fernet:gAAAA...' with a key, the token without
    token = unseal(stored, again="store it again: `syncengine tenant moodle NAME ...`")

Without the key a secret is stored as given, for the service alone to read; a secret stored sealed
needs the key it was sealed with (SecretKeyError says which setting to fix, or how to store it again).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken

from syncengine.exceptions import Misconfigured

SECRET_KEY = "SYNCENGINE_SECRET_KEY"
SEALED = "fernet:"  # the prefix of a secret stored sealed
MAKE_KEY = "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"


class SecretKeyError(Misconfigured, ValueError):
    """SYNCENGINE_SECRET_KEY is not a key, or not the one a stored secret was sealed with."""

    code = "secret_key"


def _fernet(environ: Mapping[str, str] = os.environ) -> Fernet | None:
    """The Fernet of SYNCENGINE_SECRET_KEY, or None where it is not set."""
    key = environ.get(SECRET_KEY, "").strip()
    if not key:
        return None
    try:
        return Fernet(key)
    except ValueError:
        raise SecretKeyError(
            f"{SECRET_KEY} is not a Fernet key (32 url-safe base64-encoded bytes): make one with {MAKE_KEY}"
        ) from None


def seal(secret: str) -> str:
    """`secret` as it is stored: sealed where SYNCENGINE_SECRET_KEY is set."""
    fernet = _fernet()
    return secret if fernet is None else SEALED + fernet.encrypt(secret.encode()).decode()


def unseal(stored: str, what: str, again: str) -> str:
    """The secret `stored` holds; `what` names it and `again` says how to store it anew, for the error."""
    if not stored.startswith(SEALED):
        return stored
    fernet = _fernet()
    if fernet is None:
        raise SecretKeyError(f"{what} is stored encrypted and {SECRET_KEY} is not set: {_set_key(again)}")
    try:
        return fernet.decrypt(stored[len(SEALED) :].encode()).decode()
    except InvalidToken:
        raise SecretKeyError(f"{SECRET_KEY} does not decrypt {what}: {_set_key(again)}") from None


def _set_key(again: str) -> str:
    return f"set {SECRET_KEY} to the key it was stored with, or {again}"
