"""The whole aiohttp application: the middleware, every route, and a GitHub-style 404."""

from __future__ import annotations

from aiohttp import web

from agora.bridge.standin import rest_apps, rest_git, rest_issues, rest_repos
from agora.bridge.standin.engine import Engine
from agora.bridge.standin.server import ENGINE, github_middleware
from agora.bridge.standin.state import not_found


async def not_found_handler(request: web.Request) -> web.Response:
    raise not_found()


def build_app(engine: Engine) -> web.Application:
    app = web.Application(middlewares=[github_middleware])
    app[ENGINE] = engine
    rest_issues.add_routes(app.router)
    rest_git.add_routes(app.router)
    rest_apps.add_routes(app.router)
    rest_repos.add_routes(app.router)
    app.router.add_route("*", "/{tail:.*}", not_found_handler, name="fallback")
    return app
