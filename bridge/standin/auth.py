"""Who is calling: tokens (``token X`` or ``Bearer X``) and GitHub App JWTs.

A personal or installation token must be known and unexpired, else 401 "Bad
credentials". An App JWT must be RS256, signed by the key the app registered, issued
by the app (``iss`` = its id or client id), not issued in the future and expiring at
most ten minutes from now; each refusal carries the message GitHub gives. Pure: the
world and the time come in as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import jwt

from agora.bridge.standin.state import Actor, App, GitHubError, World

JWT_MAX_LIFETIME_S: Final = 600
CLOCK_DRIFT_S: Final = 60
AUTH_DOCS: Final = "https://docs.github.com/rest"
APP_AUTH_DOCS: Final = (
    "https://docs.github.com/apps/building-github-apps/"
    "authenticating-with-github-apps#authenticating-as-a-github-app"
)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request, and the rate-limit bucket its requests count against."""

    kind: Literal["anonymous", "token", "app"]
    key: str  # the rate-limit bucket: "user:ID", "installation:ID", "app:ID", "anonymous"
    actor: Actor | None = None
    app: App | None = None

    def describe(self) -> str:
        kind, _, number = self.key.partition(":")
        return f"{kind} ID {number}" if number else "your IP address"


ANONYMOUS: Final = Principal("anonymous", "anonymous")


def bad_credentials() -> GitHubError:
    return GitHubError(401, "Bad credentials", documentation_url=AUTH_DOCS)


def requires_authentication() -> GitHubError:
    return GitHubError(401, "Requires authentication", documentation_url=AUTH_DOCS)


def _jwt_error(message: str) -> GitHubError:
    return GitHubError(401, message, documentation_url=APP_AUTH_DOCS)


def credential(authorization: str | None) -> str | None:
    """The secret in an ``Authorization`` header: ``token X`` or ``Bearer X``."""
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer") or not value.strip():
        raise bad_credentials()
    return value.strip()


def looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and value.startswith("eyJ")


def principal(world: World, authorization: str | None, *, now: float) -> Principal:
    """Resolve a token to its user or installation; an App JWT to its app."""
    value = credential(authorization)
    if value is None:
        return ANONYMOUS
    if looks_like_jwt(value):
        app = verify_app_jwt(world, value, now=now)
        return Principal("app", f"app:{app.id}", app=app)
    token = world.token(value, now=now)
    if token is None:
        raise bad_credentials()
    actor = token.actor()
    if actor.installation is not None:
        return Principal("token", f"installation:{actor.installation.id}", actor=actor)
    return Principal("token", f"user:{actor.user.id}", actor=actor)


def _find_app(world: World, issuer: object) -> App | None:
    for app in world.apps.values():
        if str(issuer) in (str(app.id), app.client_id):
            return app
    return None


def verify_app_jwt(world: World, value: str, *, now: float) -> App:
    try:
        header = jwt.get_unverified_header(value)
        unverified = jwt.decode(value, options={"verify_signature": False})
    except jwt.PyJWTError as error:
        raise _jwt_error("A JSON web token could not be decoded") from error
    if header.get("alg") != "RS256":
        raise _jwt_error("A JSON web token could not be decoded")
    app = _find_app(world, unverified.get("iss"))
    if app is None:
        raise _jwt_error("'Issuer' claim ('iss') must be an Integer")
    try:
        claims = jwt.decode(
            value,
            app.public_key_pem,
            algorithms=["RS256"],
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.PyJWTError as error:
        raise _jwt_error("A JSON web token could not be decoded") from error
    issued, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued, int) or issued > now + CLOCK_DRIFT_S:
        raise _jwt_error(
            "'Issued at' claim ('iat') must be an Integer representing the time"
            " that the assertion was issued"
        )
    if not isinstance(expires, int) or expires <= now:
        raise _jwt_error(
            "'Expiration time' claim ('exp') must be a numeric value representing"
            " the future time at which the assertion expires"
        )
    if expires > now + JWT_MAX_LIFETIME_S or expires - issued > JWT_MAX_LIFETIME_S:
        raise _jwt_error("'Expiration time' claim ('exp') is too far in the future")
    return app
