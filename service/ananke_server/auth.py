"""API keys: loading them from settings, and checking an `authorization:
Bearer <key>` value in constant time without ever logging a key (the
interceptor that asks for them is interceptors.ApiKeyCheck)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

from .errors import ServiceError
from .settings import Settings

_BEARER = "bearer "


def load_api_keys(settings: Settings) -> tuple[str, ...]:
    """Keys from `api_keys` plus `api_keys_file` (one per line, `#` comments),
    plus the admin keys (valid for every call)."""
    keys = list(settings.api_keys) + list(settings.admin_api_keys)
    if settings.api_keys_file:
        for line in Path(settings.api_keys_file).read_text().splitlines():
            key = line.strip()
            if key and not key.startswith("#"):
                keys.append(key)
    return tuple(dict.fromkeys(keys))


class ApiKeys:
    """The keys a server accepts."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(key.encode() for key in keys)
        if not self._keys:
            raise ValueError("ApiKeys needs at least one key")

    def check(self, authorization: str | None) -> ServiceError | None:
        """None when the `authorization` metadata value carries a valid key, else
        the error to report (API_KEY_MISSING or API_KEY_INVALID)."""
        if authorization is None or not authorization.strip():
            return ServiceError(
                "API_KEY_MISSING",
                "this call needs an API key: send metadata 'authorization: Bearer <key>'",
            )
        if authorization[: len(_BEARER)].lower() != _BEARER:
            return ServiceError(
                "API_KEY_INVALID", "the authorization metadata must be 'Bearer <key>'"
            )
        offered = authorization[len(_BEARER) :].strip().encode()
        matched = False
        for key in self._keys:  # no early exit: time does not depend on which key matched
            matched |= hmac.compare_digest(offered, key)
        if not matched:
            return ServiceError("API_KEY_INVALID", "the API key is not valid")
        return None
