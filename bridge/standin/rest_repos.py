"""Repository endpoints beyond issues: a user's permission on a repository.

``GET /repos/{owner}/{repo}/collaborators/{username}/permission`` answers with the
user's legacy base role (``admin``, ``write``, ``read``, ``none``), as GitHub does for
any user, collaborator or not; an unknown login is a 404.
"""

from __future__ import annotations

from aiohttp import web

from agora.bridge.standin import payloads
from agora.bridge.standin.server import engine_of, json_response, repo_of
from agora.bridge.standin.state import not_found

DOCS = "https://docs.github.com/rest/collaborators/collaborators"


async def get_permission(request: web.Request) -> web.Response:
    engine = engine_of(request)
    repo = repo_of(request)
    wanted = request.match_info["username"].lower()  # logins are not case sensitive
    user = next((u for login, u in engine.world.users.items() if login.lower() == wanted), None)
    if user is None:
        raise not_found(f"{DOCS}#get-repository-permissions-for-a-user")
    permission = engine.world.permission(repo, user)
    return json_response(payloads.collaborator_permission_json(user, permission, engine.urls))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(
        "/repos/{owner}/{repo}/collaborators/{username}/permission",
        get_permission,
        name="get-collaborator-permission",
    )
