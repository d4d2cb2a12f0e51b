"""The console's session: the caller's token in an HttpOnly, SameSite=Strict cookie,
and a CSRF token in every form.

The CSRF token is an HMAC of a random per-browser value (its own cookie) under a key
derived from the service's signing secret: a page from elsewhere can neither read the
cookie nor compute the token, and every instance checks it without shared state.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web

from core.errors import Forbidden, Unauthenticated
from core.http.auth import Authenticator, Principal
from core.settings import AuthSettings

SESSION_COOKIE = "rescenter_session"
CSRF_COOKIE = "rescenter_csrf"
CSRF_FIELD = "csrf_token"
COOKIE_PATH = "/console"


class Session:
    def __init__(self, settings: AuthSettings) -> None:
        self.authenticator = Authenticator(settings)
        self._key = hashlib.sha256(b"rescenter console csrf\0" + settings.secret.encode()).digest()

    # ------------------------------------------------------------ who

    def principal(self, request: web.Request) -> Principal | None:
        """The signed-in caller; None without a session. An expired or forged token raises."""
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        return self.authenticator.authenticate(f"Bearer {token}")

    def sign_in(self, request: web.Request, response: web.StreamResponse, token: str) -> Principal:
        principal = self.authenticator.authenticate(f"Bearer {token.strip()}")
        _set_cookie(request, response, SESSION_COOKIE, token.strip())
        # A fresh CSRF secret with every session: a token seen before signing in is worth nothing after.
        _set_cookie(request, response, CSRF_COOKIE, secrets.token_urlsafe(32))
        return principal

    @staticmethod
    def sign_out(response: web.StreamResponse) -> None:
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            response.del_cookie(name, path=COOKIE_PATH)

    # ------------------------------------------------------------ CSRF

    def csrf_seed(self, request: web.Request) -> tuple[str, bool]:
        """The browser's CSRF secret, and whether it is new (the response must set it)."""
        seed = request.cookies.get(CSRF_COOKIE)
        return (seed, False) if seed else (secrets.token_urlsafe(32), True)

    def csrf_token(self, seed: str) -> str:
        return hmac.new(self._key, seed.encode(), hashlib.sha256).hexdigest()

    def remember_seed(self, request: web.Request, response: web.StreamResponse, seed: str) -> None:
        _set_cookie(request, response, CSRF_COOKIE, seed)

    def check_csrf(self, request: web.Request, form: dict[str, str]) -> None:
        seed = request.cookies.get(CSRF_COOKIE)
        sent = form.get(CSRF_FIELD, "")
        if not seed or not sent or not hmac.compare_digest(sent, self.csrf_token(seed)):
            raise Forbidden("the form's CSRF token is missing or does not match this browser's session: "
                            "reload the page and send the form again")


def require(principal: Principal | None) -> Principal:
    if principal is None:
        raise Unauthenticated("sign in first")
    return principal


def _set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str) -> None:
    response.set_cookie(name, value, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=request.secure)
