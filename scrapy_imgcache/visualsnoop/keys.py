"""A collection's key pair, and how its secret is kept in the database.

HMAC needs the secret itself, so it cannot be hashed one-way. :class:`SecretBox` stores it
encrypted (Fernet) when a server key is configured, and as given otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

SECRETS_KEY_ENV = "IMGCACHE_SECRETS_KEY"
SECRETS_KEY_FILE_ENV = "IMGCACHE_SECRETS_KEY_FILE"
PUBLIC_KEY_RE = re.compile(r"^[0-9a-f]{20}$")


def new_key_pair() -> tuple[str, str]:
    """A 20-hex public key and a 40-character secret, as the hosted service issued them."""
    return secrets.token_hex(10), secrets.token_urlsafe(30)


class SecretBox:
    """Seals secret keys for the database: Fernet-encrypted with a server key when one is set.

    The server key is any long random string (``IMGCACHE_SECRETS_KEY``, or a file named by
    ``IMGCACHE_SECRETS_KEY_FILE``); the Fernet key is its SHA-256. Without one the secret is
    stored as given, marked ``plain:``, and a leaked database leaks the secrets.
    """

    def __init__(self, server_key: str | None = None) -> None:
        self._fernet: Fernet | None = None
        if server_key:
            if len(server_key) < 16:
                raise ConfigError(f"{SECRETS_KEY_ENV}: at least 16 characters of random text are expected")
            from cryptography.fernet import Fernet

            self._fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(server_key.encode()).digest()))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SecretBox:
        env = os.environ if environ is None else environ
        key = env.get(SECRETS_KEY_ENV, "").strip()
        path = env.get(SECRETS_KEY_FILE_ENV, "").strip()
        if path and not key:
            try:
                with open(path, encoding="utf-8") as fh:
                    key = fh.read().strip()
            except OSError as exc:
                raise ConfigError(f"{SECRETS_KEY_FILE_ENV}={path!r}: {exc.strerror}") from exc
        return cls(key or None)

    def seal(self, secret: str) -> str:
        if self._fernet is None:
            return "plain:" + secret
        return "fernet:" + self._fernet.encrypt(secret.encode()).decode("ascii")

    def open(self, stored: str) -> str:
        kind, _, value = stored.partition(":")
        if kind == "plain":
            return value
        if self._fernet is None:
            raise ConfigError(f"a secret is stored encrypted but {SECRETS_KEY_ENV} is not set")
        from cryptography.fernet import InvalidToken

        try:
            return str(self._fernet.decrypt(value.encode("ascii")).decode())
        except InvalidToken as exc:
            raise ConfigError(f"a secret cannot be decrypted with this {SECRETS_KEY_ENV}") from exc
