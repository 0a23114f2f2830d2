"""Who may act: the dashboard token, the signed session cookie, CSRF, security headers.

Reading is open to whoever reaches the server (it binds 127.0.0.1 by default). Retry, cancel
and delete need the token the server was started with (``--token`` or
``MULTISTEP_WEB_TOKEN``); without one configured the dashboard is read-only.

A request may act when it carries either

* ``Authorization: Bearer <token>`` (scripts and ``curl``; never sent by a browser on its
  own, so it needs no CSRF check), or
* the session cookie the sign-in form sets (``HttpOnly``, ``SameSite=Strict``) **and** the
  header ``X-CSRF-Token`` with the value the page was rendered with, from the same origin.

The cookie holds a random nonce and an HMAC of it keyed by the token; the CSRF value is another
HMAC of the same nonce. Both are checked in constant time. Changing the token signs every
session out.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # Starlette is imported by the app, not by the command line
    from starlette.requests import Request

TOKEN_ENV = "MULTISTEP_WEB_TOKEN"
COOKIE = "multistep_session"
CSRF_HEADER = "x-csrf-token"
MIN_TOKEN = 8

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def token_from_env(token: str | None) -> str | None:
    """The token given, else ``$MULTISTEP_WEB_TOKEN``, else None (read-only)."""
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    return token


@dataclass(frozen=True)
class Verdict:
    """Whether a request may act; if not, the HTTP status and a message saying what to do."""

    ok: bool
    status: int = 200
    message: str = ""


class Auth:
    def __init__(self, token: str | None) -> None:
        from ..errors import ConfigurationError

        if token is not None and (not isinstance(token, str) or len(token) < MIN_TOKEN):
            raise ConfigurationError(
                f"the dashboard token must be at least {MIN_TOKEN} characters; "
                "make one with: python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        self.token = token
        self._key = hashlib.sha256(b"multistep-web:" + token.encode()).digest() if token else b""

    @property
    def enabled(self) -> bool:
        """Whether actions are possible at all (a token is configured)."""
        return self.token is not None

    def _mac(self, kind: str, nonce: str) -> str:
        return hmac.new(self._key, f"{kind}:{nonce}".encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def new_session(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._mac('session', nonce)}"

    def session_nonce(self, request: Request) -> str | None:
        """The nonce of a valid session cookie, else None."""
        if not self.enabled:
            return None
        raw = request.cookies.get(COOKIE, "")
        nonce, _, mac = raw.partition(".")
        if not nonce or not mac or not hmac.compare_digest(mac, self._mac("session", nonce)):
            return None
        return nonce

    def csrf_for(self, request: Request) -> str:
        """The CSRF value a page rendered for this session carries ("" without a session)."""
        nonce = self.session_nonce(request)
        return self._mac("csrf", nonce) if nonce else ""

    def may_act(self, request: Request) -> Verdict:
        if not self.enabled:
            return Verdict(False, 403, f"this dashboard is read-only: start it with --token or ${TOKEN_ENV} to allow actions")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            if self.token_matches(auth[7:].strip()):
                return Verdict(True)
            return Verdict(False, 401, "the bearer token is not this dashboard's token")
        nonce = self.session_nonce(request)
        if nonce is None:
            return Verdict(False, 401, "sign in with the dashboard's token to retry, cancel or delete")
        if not same_origin(request):
            return Verdict(False, 403, "cross-origin request refused (CSRF protection)")
        given = request.headers.get(CSRF_HEADER, "")
        if not given or not hmac.compare_digest(given, self._mac("csrf", nonce)):
            return Verdict(False, 403, "missing or wrong CSRF token: reload the page and try again")
        return Verdict(True)


def same_origin(request: Request) -> bool:
    """False when the request names an Origin (or, lacking one, a Referer) of another host."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin != "null"
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


def safe_next(path: str | None, base: str) -> str:
    """A local path to go back to after signing in (never another site)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return base + "/"
    return path
