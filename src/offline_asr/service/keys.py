"""API keys: which configured key a request carries, named by its keyed id (never the key)."""

from __future__ import annotations

import hmac

from offline_asr.asr.audit import key_id


class KeyRing:
    """The accepted Bearer keys and their audit ids (HMAC under the server's secret)."""

    def __init__(self, keys: list[str], secret: bytes) -> None:
        self._keys = [(key.encode(), key_id(secret, key)) for key in keys]

    @property
    def required(self) -> bool:
        return bool(self._keys)

    @property
    def ids(self) -> list[str]:
        """The keys' ids in the configured order, for the start-up log."""
        return [ident for _, ident in self._keys]

    def identify(self, authorization: str) -> str | None:
        """The id of the configured key in an `Authorization: Bearer KEY` header, else None.

        Every key is compared, in constant time, whichever matches.
        """
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = token.strip().encode()
        found = None
        for key, ident in self._keys:
            if hmac.compare_digest(given, key):
                found = ident
        return found
