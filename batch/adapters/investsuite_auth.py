"""The InvestSuite client's bearer token: one login for all threads, refreshed at 80 % of its life, renewed after a 401.

``TokenKeeper`` holds the token under a lock so concurrent first calls log in once and concurrent 401s log
in again once. It does not send anything itself: the client gives it ``post(route, path, body)``, the
retried auth POST returning the decoded document. A refused login (401/403) is a ``CredentialsError``
(configuration: retrying cannot help); a refused refresh falls back to a fresh login. The secret and the
tokens never reach a log or an exception text; ``secrets()`` lists them for the client's redaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from batch.errors import CredentialsError, PayloadError, RemotePermanentError
from batch.settings import InvestSuiteSettings

log = structlog.get_logger("batch.adapters.investsuite")

ROUTE_LOGIN = "POST /auth/login/"
ROUTE_REFRESH = "POST /auth/refresh-token/"

_REFRESH_AT_FRACTION = 0.8

#: ``post(route, path, body)``: the auth endpoint's decoded JSON answer (transient failures retried)
AuthPost = Callable[[str, str, dict[str, str]], Any]


@dataclass(frozen=True)
class Token:
    access: str
    refresh: str | None
    refresh_at: float  # monotonic instant after which we refresh proactively


class TokenKeeper:
    """The current access token, shared by every thread of one client."""

    def __init__(
        self, settings: InvestSuiteSettings, *, where: str, post: AuthPost, monotonic: Callable[[], float]
    ) -> None:
        self._settings = settings
        self._where = where
        self._post = post
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._token: Token | None = None

    @property
    def configured(self) -> bool:
        """Whether credentials are configured (without them the client calls unauthenticated)."""
        return self._settings.access_key_id is not None and self._settings.secret_access_key is not None

    def secrets(self) -> list[str]:
        """The secret key and the tokens held now: what must never appear in a text the client hands out."""
        found: list[str] = []
        if self._settings.secret_access_key is not None:
            found.append(self._settings.secret_access_key.get_secret_value())
        token = self._token
        if token is not None:
            found.append(token.access)
            if token.refresh:
                found.append(token.refresh)
        return [secret for secret in found if secret]

    def current(self) -> str | None:
        """A valid access token: log in the first time, refresh once 80% of its life has passed."""
        if not self.configured:
            return None  # no credentials configured: unauthenticated (e.g. an open sandbox)
        with self._lock:
            token = self._token
            if token is None:
                token = self._login()
            elif self._monotonic() >= token.refresh_at:
                token = self._refresh(token)
            return token.access

    def relogin(self, *, stale: str | None) -> str | None:
        """After a 401: log in again, unless another thread already replaced the stale token."""
        if not self.configured:
            missing = [n for n in ("access_key_id", "secret_access_key") if getattr(self._settings, n) is None]
            raise CredentialsError(
                f"InvestSuite at {self._where} answered HTTP 401 and no credentials are configured: "
                + ", ".join(f"investsuite.{n} (BATCH_INVESTSUITE__{n.upper()})" for n in missing)
                + (" is" if len(missing) == 1 else " are")
                + " not set"
            )
        with self._lock:
            if self._token is not None and self._token.access != stale:
                return self._token.access
            self._token = None
            return self._login().access

    def _login(self) -> Token:
        key_id = self._settings.access_key_id
        secret = self._settings.secret_access_key
        assert key_id is not None and secret is not None  # checked by the callers
        body = {"access_key_id": key_id, "secret_access_key": secret.get_secret_value()}
        try:
            token = self._issue(ROUTE_LOGIN, "auth/login/", body)
        except RemotePermanentError as exc:
            if exc.status not in (401, 403):
                raise
            raise CredentialsError(
                f"InvestSuite at {self._where} refused the login (HTTP {exc.status} on {ROUTE_LOGIN}): check "
                "investsuite.access_key_id and investsuite.secret_access_key"
            ) from exc
        log.info("investsuite.login")
        return token

    def _refresh(self, token: Token) -> Token:
        if token.refresh:
            try:
                fresh = self._issue(ROUTE_REFRESH, "auth/refresh-token/", {"refresh_token": token.refresh})
            except (RemotePermanentError, PayloadError) as exc:
                log.info("investsuite.refresh_refused", error_type=type(exc).__name__)
            else:
                log.info("investsuite.token_refreshed")
                return fresh
        return self._login()

    def _issue(self, route: str, path: str, body: dict[str, str]) -> Token:
        """POST to an auth endpoint and keep the token it answers; the caller holds the lock."""
        document = self._post(route, path, body)
        if not isinstance(document, dict):
            raise PayloadError(f"{route}: expected a JSON object")
        access, refresh = document.get("access_token"), document.get("refresh_token")
        if not isinstance(access, str) or not access:
            raise PayloadError(f"{route}: no access_token in the response")
        if refresh is not None and not isinstance(refresh, str):
            raise PayloadError(f"{route}: refresh_token is not a string")
        try:
            lifetime = _seconds(document.get("expires_in"))
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise PayloadError(f"{route}: invalid expires_in") from exc
        self._token = Token(
            access=access,
            refresh=refresh or None,
            refresh_at=self._monotonic() + lifetime * _REFRESH_AT_FRACTION,
        )
        return self._token


def _seconds(raw: Any) -> float:
    """``expires_in`` arrives as a string (documented) or a number."""
    if isinstance(raw, bool):
        raise ValueError("boolean expires_in")
    value = float(raw)
    if not value > 0:
        raise ValueError(f"expires_in must be positive, got {raw!r}")
    return value
