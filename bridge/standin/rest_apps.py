"""GitHub App endpoints, all behind the App JWT: installation tokens and hook deliveries;
and two that any caller may ask: ``GET /user`` (a user's token only: an installation's is
refused, as on GitHub) and ``GET /rate_limit``.

An installation token lives for the app's configured lifetime (an hour by default, as
on GitHub; shorter in tests) and ``expires_at`` says when, to the second. Deliveries are
listed newest first with cursor pagination; a redelivery sends the same payload under
the same GUID again, from the background sender, and answers 202 at once.
"""

from __future__ import annotations

from aiohttp import web

from agora.bridge.standin import payloads
from agora.bridge.standin.auth import requires_authentication
from agora.bridge.standin.server import (
    PRINCIPAL,
    engine_of,
    int_param,
    json_response,
    repo_of,
)
from agora.bridge.standin.state import App, Delivery, GitHubError, Installation, not_found
from agora.core.errors import InternalError

DOCS = "https://docs.github.com/rest/apps"
USER_DOCS = "https://docs.github.com/rest/users/users#get-the-authenticated-user"


def _app(request: web.Request) -> App:
    app = request[PRINCIPAL].app
    if app is None:
        raise InternalError("the middleware lets only App JWTs reach the app routes")
    return app


def _installation(request: web.Request) -> Installation:
    installation = engine_of(request).world.installations.get(
        int(request.match_info["installation_id"])
    )
    if installation is None or installation.app is not _app(request):
        raise not_found(f"{DOCS}/apps#create-an-installation-access-token-for-an-app")
    return installation


async def get_app(request: web.Request) -> web.Response:
    return json_response(payloads.integration_json(_app(request), engine_of(request).urls))


async def get_installation(request: web.Request) -> web.Response:
    installation = _installation(request)
    return json_response(payloads.installation_json(installation, engine_of(request).urls))


async def create_installation_token(request: web.Request) -> web.Response:
    engine = engine_of(request)
    installation = _installation(request)
    token = engine.world.issue_token(
        installation=installation,
        now=engine.clock(),
        lifetime_s=installation.app.token_lifetime_s,
    )
    expires_at = token.expires_at if token.expires_at is not None else engine.clock()
    return json_response(payloads.installation_token_json(token.value, expires_at), 201)


async def get_repo_installation(request: web.Request) -> web.Response:
    engine = engine_of(request)
    repo = repo_of(request)
    installation = engine.world.installation_for(_app(request), repo)
    if installation is None:
        raise not_found(f"{DOCS}/apps#get-a-repository-installation-for-the-authenticated-app")
    return json_response(payloads.installation_json(installation, engine.urls))


def _deliveries(request: web.Request) -> list[Delivery]:
    app = _app(request)
    return [d for d in engine_of(request).world.deliveries if d.hook.app is app]


async def list_deliveries(request: web.Request) -> web.Response:
    newest_first = sorted(_deliveries(request), key=lambda d: d.id, reverse=True)
    status = request.query.get("status")
    if status == "success":
        newest_first = [d for d in newest_first if d.ok]
    elif status == "failure":
        newest_first = [d for d in newest_first if not d.ok]
    cursor = request.query.get("cursor", "")
    if cursor.startswith("v1_") and cursor[3:].isdigit():
        newest_first = [d for d in newest_first if d.id < int(cursor[3:])]
    per_page = min(max(int_param(request, "per_page", 30), 1), 100)
    page = newest_first[:per_page]
    response = json_response([payloads.delivery_item_json(d) for d in page])
    if len(newest_first) > per_page:
        after = request.url.update_query(cursor=f"v1_{page[-1].id}", per_page=str(per_page))
        response.headers["Link"] = f'<{after}>; rel="next"'
    return response


def _delivery(request: web.Request) -> Delivery:
    wanted = int(request.match_info["delivery_id"])
    for delivery in _deliveries(request):
        if delivery.id == wanted:
            return delivery
    raise not_found(f"{DOCS}/webhooks#get-a-delivery-for-an-app-webhook")


async def get_delivery(request: web.Request) -> web.Response:
    return json_response(payloads.delivery_json(_delivery(request), engine_of(request).urls))


async def redeliver(request: web.Request) -> web.Response:
    engine_of(request).redeliver(_delivery(request))
    return json_response({}, 202)


async def get_authenticated_user(request: web.Request) -> web.Response:
    actor = request[PRINCIPAL].actor
    if actor is None:
        raise requires_authentication()
    if actor.installation is not None:
        raise GitHubError(
            403, "Resource not accessible by integration", documentation_url=USER_DOCS
        )
    return json_response(payloads.public_user_json(actor.user, engine_of(request).urls))


async def rate_limit(request: web.Request) -> web.Response:
    engine = engine_of(request)
    principal = request[PRINCIPAL]
    bucket = engine.limits.bucket(
        principal.key, engine.limit_for(principal.key), now=engine.clock()
    )
    core = {
        "limit": bucket.limit,
        "remaining": bucket.remaining,
        "reset": int(bucket.reset),
        "used": bucket.used,
        "resource": "core",
    }
    search = {**core, "limit": 30, "remaining": 30, "used": 0, "resource": "search"}
    return json_response({"resources": {"core": core, "search": search}, "rate": core})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/app", get_app, name="get-app")
    router.add_get(r"/app/installations/{installation_id:\d+}", get_installation)
    router.add_post(
        r"/app/installations/{installation_id:\d+}/access_tokens",
        create_installation_token,
        name="create-installation-token",
    )
    router.add_get("/repos/{owner}/{repo}/installation", get_repo_installation)
    router.add_get("/app/hook/deliveries", list_deliveries, name="list-deliveries")
    router.add_get(r"/app/hook/deliveries/{delivery_id:\d+}", get_delivery)
    router.add_post(r"/app/hook/deliveries/{delivery_id:\d+}/attempts", redeliver)
    router.add_get("/rate_limit", rate_limit, name="rate-limit")
    router.add_get("/user", get_authenticated_user, name="get-authenticated-user")
