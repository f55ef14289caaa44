"""The aiohttp application: one middleware that does what GitHub does around every call.

Around each request, in order: resolve the caller (401 for an unknown or expired token
or a bad App JWT), answer from an injected fault if one matches, refuse a spent primary
limit (403, ``x-ratelimit-remaining: 0``) and a content-creating request over the
secondary limit (403 with ``retry-after``), run the route, answer a matching
``If-None-Match`` with 304, then stamp the rate-limit and GitHub headers (``Date`` by
the stand-in's clock, which a test may move) and log the request. Routes live in
``rest_issues``, ``rest_git`` and ``rest_apps``; all they share is here.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, Final, TypeVar

from aiohttp import web

from agora.bridge.standin import auth
from agora.bridge.standin.auth import Principal
from agora.bridge.standin.engine import Engine, RequestRecord
from agora.bridge.standin.faults import Fault
from agora.bridge.standin.limits import (
    RATE_LIMIT_DOCS,
    primary_message,
    secondary_message,
)
from agora.bridge.standin.state import WRITERS, Actor, GitHubError, Repo, not_found

ENGINE: Final = web.AppKey("engine", Engine)
PRINCIPAL: Final = web.RequestKey("principal", Principal)
REQUEST_ID: Final = web.RequestKey("request_id", str)
CREATION_ROUTES: Final = frozenset({"create-issue", "create-comment"})
APP_ROUTE: Final = re.compile(r"^/app(/|$)|^/repos/[^/]+/[^/]+/installation$")
UNCOUNTED_ROUTES: Final = frozenset({"rate-limit"})
DEFAULT_PER_PAGE: Final = 30
MAX_PER_PAGE: Final = 100
API_VERSION: Final = "2022-11-28"
VARY: Final = (
    "Accept, Authorization, Cookie, X-GitHub-OTP, Accept-Encoding, Accept, X-Requested-With"
)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        charset="utf-8",
    )


def error_response(error: GitHubError) -> web.Response:
    response = json_response(error.body(), error.status)
    response.headers.update(error.headers)
    return response


async def json_of(request: web.Request, default: Any) -> Any:
    raw = await request.read()
    if not raw.strip():
        return default
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GitHubError(400, "Problems parsing JSON") from error


async def body_of(request: web.Request) -> dict[str, Any]:
    body = await json_of(request, {})
    if not isinstance(body, dict):
        raise GitHubError(400, "Body should be a JSON object")
    return body


def required(body: dict[str, Any], name: str, kind: type[T]) -> T:
    value = body.get(name)
    if value is None:
        raise GitHubError(422, f'Invalid request.\n\n"{name}" wasn\'t supplied.')
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise GitHubError(
            422, f"Invalid request.\n\nFor '{name}', {json.dumps(value)} is not a {kind.__name__}."
        )
    return value


def optional(body: dict[str, Any], name: str, kind: type[T]) -> T | None:
    return None if body.get(name) is None else required(body, name, kind)


def int_param(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError:
        return default


def since_param(request: web.Request, resource: str) -> int | None:
    raw = request.query.get("since")
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw.strip().replace(" ", "T", 1))
    except ValueError as error:
        errors = [{"resource": resource, "field": "since", "code": "invalid"}]
        raise GitHubError(422, "Validation Failed", errors=errors) from error
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def paginate(request: web.Request, items: Sequence[T]) -> tuple[list[T], dict[str, str]]:
    """One page of ``items`` and the ``Link`` header that leads to the others."""
    per_page = min(max(int_param(request, "per_page", DEFAULT_PER_PAGE), 1), MAX_PER_PAGE)
    page = max(int_param(request, "page", 1), 1)
    last = max(1, -(-len(items) // per_page))
    links = []

    def link(number: int, rel: str) -> str:
        return f'<{request.url.update_query(page=str(number))}>; rel="{rel}"'

    if page > 1:
        links.append(link(min(page - 1, last), "prev"))
    if page < last:
        links += [link(page + 1, "next"), link(last, "last")]
    if page > 1:
        links.append(link(1, "first"))
    start = (page - 1) * per_page
    return list(items[start : start + per_page]), ({"Link": ", ".join(links)} if links else {})


def paged_response(
    request: web.Request, items: Sequence[T], render: Callable[[T], Any]
) -> web.Response:
    page, headers = paginate(request, items)
    response = json_response([render(item) for item in page])
    response.headers.update(headers)
    return response


def engine_of(request: web.Request) -> Engine:
    return request.app[ENGINE]


def repo_of(request: web.Request) -> Repo:
    """The path's repository, if the caller may see it (an installation only its own)."""
    engine = engine_of(request)
    full_name = f"{request.match_info['owner']}/{request.match_info['repo']}"
    repo = engine.world.find_repo(full_name)
    principal = request[PRINCIPAL]
    if repo is None or (principal.actor and not engine.world.can_see(principal.actor, repo)):
        raise not_found("https://docs.github.com/rest/repos/repos#get-a-repository")
    return repo


def actor_of(request: web.Request, repo: Repo, *, push: bool = False) -> Actor:
    """The caller as the author of a change; ``push`` needs write access to ``repo``."""
    actor = request[PRINCIPAL].actor
    if actor is None:
        raise auth.requires_authentication()
    world = engine_of(request).world
    if push and actor.installation is None and world.association(repo, actor.user) not in WRITERS:
        raise not_found()
    return actor


def _request_id() -> str:
    parts = (secrets.token_hex(2), secrets.token_hex(2), secrets.token_hex(3), secrets.token_hex(3))
    return ":".join(parts).upper() + f":{secrets.token_hex(4).upper()}"


def _fault_response(request: web.Request, fault: Fault) -> web.Response:
    engine = engine_of(request)
    message = fault.text(request_id=request[REQUEST_ID], caller=request[PRINCIPAL].describe())
    body = {"message": message, "documentation_url": fault.documentation_url}
    response = json_response(body, fault.status)
    if fault.reset_in_s is not None:
        response.headers["x-ratelimit-remaining"] = "0"
        response.headers["x-ratelimit-reset"] = str(int(engine.clock() + fault.reset_in_s))
    response.headers.update(fault.headers)
    return response


def _drop(request: web.Request) -> web.Response:
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=502)


def _check_limits(request: web.Request, principal: Principal, request_id: str) -> bool:
    """Refuse a spent primary limit or a creation over the secondary one; True: a creation."""
    engine = engine_of(request)
    now = engine.clock()
    bucket = engine.limits.bucket(principal.key, engine.limit_for(principal.key), now=now)
    if bucket.remaining == 0:
        raise GitHubError(
            403,
            primary_message(principal.describe(), request_id),
            documentation_url=RATE_LIMIT_DOCS,
        )
    route = request.match_info.route.name
    if route not in CREATION_ROUTES or request.method != "POST":
        return False
    retry_after = engine.limits.creation_retry_after(principal.key, now=now)
    if retry_after is not None:
        raise GitHubError(
            403,
            secondary_message(request_id),
            documentation_url=RATE_LIMIT_DOCS,
            headers={"retry-after": str(retry_after)},
        )
    engine.limits.record_creation(principal.key, now=now)
    return True


def _check_route_auth(request: web.Request, principal: Principal) -> None:
    if APP_ROUTE.search(request.path):
        if principal.kind != "app":
            raise GitHubError(
                401,
                "A JSON web token could not be decoded",
                documentation_url=auth.APP_AUTH_DOCS,
            )
    elif principal.kind == "app":
        raise GitHubError(403, "Resource not accessible by integration")


def _conditional(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    if request.method != "GET" or response.status != 200 or not isinstance(response, web.Response):
        return response
    body = response.body if isinstance(response.body, bytes) else b""
    etag = f'W/"{hashlib.sha256(body).hexdigest()}"'
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "private, max-age=60, s-maxage=60"
    response.headers["Vary"] = VARY
    if etag in request.headers.get("If-None-Match", ""):
        not_modified = web.Response(status=304)
        for name in ("ETag", "Cache-Control", "Vary", "Link"):
            if name in response.headers:
                not_modified.headers[name] = response.headers[name]
        return not_modified
    return response


@web.middleware
async def github_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    engine = engine_of(request)
    request_id = _request_id()
    request[REQUEST_ID] = request_id
    principal = auth.ANONYMOUS
    creation = False
    try:
        try:
            principal = auth.principal(
                engine.world, request.headers.get("Authorization"), now=engine.clock()
            )
            refused: GitHubError | None = None
        except GitHubError as error:
            refused = error
        request[PRINCIPAL] = principal
        fault = engine.faults.take(request.method, request.path)
        if fault is not None and not fault.after_apply:
            response: web.StreamResponse = (
                _drop(request) if fault.drop else _fault_response(request, fault)
            )
        elif refused is not None:
            raise refused
        else:
            _check_route_auth(request, principal)
            creation = _check_limits(request, principal, request_id)
            response = await handler(request)
            if fault is not None:
                response = _drop(request) if fault.drop else _fault_response(request, fault)
    except web.HTTPException as error:
        response = error_response(GitHubError(error.status, error.reason))
    except GitHubError as error:
        response = error_response(error)
    response = _conditional(request, response)
    _finish(request, response, principal, request_id)
    engine.log.append(
        RequestRecord(
            engine.clock(), request.method, request.path, response.status, principal.key, creation
        )
    )
    return response


def _finish(
    request: web.Request, response: web.StreamResponse, principal: Principal, request_id: str
) -> None:
    engine = engine_of(request)
    now = engine.clock()
    bucket = engine.limits.bucket(principal.key, engine.limit_for(principal.key), now=now)
    counted = (
        response.status not in (304, 401) and request.match_info.route.name not in UNCOUNTED_ROUTES
    )
    if counted and bucket.remaining > 0:
        bucket.used += 1
    headers = bucket.headers()
    headers.update(
        {k: v for k, v in response.headers.items() if k.lower().startswith("x-ratelimit")}
    )
    response.headers.update(headers)
    response.headers["X-GitHub-Request-Id"] = request_id
    response.headers["Date"] = formatdate(now, usegmt=True)  # GitHub's clock: the stand-in's
    response.headers["X-GitHub-Media-Type"] = "github.v3; format=json"
    response.headers["X-GitHub-Api-Version-Selected"] = request.headers.get(
        "X-GitHub-Api-Version", API_VERSION
    )
    actor = principal.actor
    if actor is not None:
        token = engine.world.tokens.get(auth.credential(request.headers.get("Authorization")) or "")
        if token is not None and token.expires_at is not None and actor.installation is None:
            stamp = datetime.fromtimestamp(int(token.expires_at), UTC)
            response.headers["github-authentication-token-expiration"] = stamp.strftime(
                "%Y-%m-%d %H:%M:%S UTC"
            )
