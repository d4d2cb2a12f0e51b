"""Bearer JWT: the algorithm is pinned, and `exp`, `aud` and `sub` are required.

Roles come from the `roles` claim (a list) or `role` (a string): buyer, seller,
support, admin, service. One user may be buyer and seller at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from core.errors import Unauthenticated
from core.messages import Actor
from core.settings import AuthSettings

ROLES = ("admin", "support", "service", "seller", "buyer")
STAFF_ROLES = ("admin", "support", "service")


@dataclass(frozen=True)
class Principal:
    id: str
    roles: frozenset[str]

    def has_any(self, roles: frozenset[str]) -> bool:
        return bool(self.roles & roles)

    @property
    def is_staff(self) -> bool:
        return any(role in self.roles for role in STAFF_ROLES)

    def actor(self, party: str | None = None) -> Actor:
        for role in STAFF_ROLES:
            if role in self.roles:
                return Actor(id=self.id, role=role)  # type: ignore[arg-type]
        if party in self.roles:
            return Actor(id=self.id, role=party)  # type: ignore[arg-type]
        role = next((r for r in ROLES if r in self.roles), "buyer")
        return Actor(id=self.id, role=role)  # type: ignore[arg-type]


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings

    def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise Unauthenticated("an Authorization: Bearer token is required")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        options: dict[str, Any] = {"require": ["exp", "aud", "sub"]}
        try:
            claims = jwt.decode(
                token.strip(),
                self.settings.secret,
                algorithms=[self.settings.algorithm],
                audience=self.settings.audience,
                issuer=self.settings.issuer or None,
                options=options,
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token lacks the required claim {exc.claim!r}") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        raw_roles = claims.get("roles", claims.get("role", []))
        if isinstance(raw_roles, str):
            raw_roles = [raw_roles]
        roles = frozenset(r for r in raw_roles if r in ROLES) if isinstance(raw_roles, list) else frozenset()
        if not roles:
            raise Unauthenticated(f"the token carries no known role (one of {', '.join(ROLES)})")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated("the token's sub must be a non-empty string")
        return Principal(id=sub, roles=roles)


def issue_token(
    settings: AuthSettings, sub: str, roles: list[str], *, ttl: int = 3600, **claims: Any
) -> str:
    """Mint a token (for development, tests and the CLI); production tokens come from the IdP."""
    payload = {"sub": sub, "roles": roles, "aud": settings.audience, "exp": int(time.time()) + ttl, **claims}
    if settings.issuer:
        payload.setdefault("iss", settings.issuer)
    return jwt.encode(payload, settings.secret, algorithm=settings.algorithm)
