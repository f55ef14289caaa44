"""Issues, issue comments, issue labels and the repository's issue events over REST, as
GitHub serves them.

Lists are paginated (``per_page`` up to 100, ``page``, a ``Link`` header); those of
issues and comments honour ``since`` (updated at or after, to the second), while issue
events, like GitHub's, take no ``since`` and come newest first. Every change that
GitHub announces by webhook is published the moment it happens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from agora.bridge.standin import payloads
from agora.bridge.standin.server import (
    actor_of,
    body_of,
    engine_of,
    json_of,
    json_response,
    optional,
    paged_response,
    repo_of,
    required,
    since_param,
)
from agora.bridge.standin.state import WRITERS, Comment, GitHubError, Issue, Repo

ISSUE_SORTS: Final[dict[str, Callable[[Issue], float]]] = {
    "created": lambda issue: issue.created_at,
    "updated": lambda issue: issue.updated_at,
    "comments": lambda issue: issue.comments,
}


def _number(request: web.Request) -> int:
    return int(request.match_info["number"])


def _issue_json(request: web.Request, repo: Repo, issue: Issue) -> dict[str, Any]:
    engine = engine_of(request)
    return payloads.issue_json(engine.world, repo, issue, engine.urls)


def _comment_json(request: web.Request, repo: Repo, comment: Comment) -> dict[str, Any]:
    engine = engine_of(request)
    return payloads.comment_json(engine.world, repo, comment, engine.urls)


def _label_names(value: Any) -> list[str]:
    """Labels as GitHub takes them: a name, a list of names, or a list of ``{"name": ...}``."""
    if isinstance(value, dict):
        value = value.get("labels", [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise GitHubError(422, "Invalid request.\n\nFor 'labels', expected an array.")
    names = []
    for item in value:
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(name, str):
            raise GitHubError(422, f"Invalid request.\n\nFor 'labels', {item!r} is not a name.")
        names.append(name)
    return names


async def list_issues(request: web.Request) -> web.Response:
    repo = repo_of(request)
    state = request.query.get("state", "open")
    if state not in ("open", "closed", "all"):
        errors = [{"resource": "Issue", "field": "state", "code": "invalid"}]
        raise GitHubError(422, "Validation Failed", errors=errors)
    wanted = {name.strip().lower() for name in request.query.get("labels", "").split(",")}
    wanted.discard("")
    since = since_param(request, "Issue")
    creator = request.query.get("creator")
    issues = [
        issue
        for issue in repo.issues.values()
        if (state in ("all", issue.state))
        and wanted <= {label.name.lower() for label in issue.labels}
        and (since is None or int(issue.updated_at) >= since)
        and (creator is None or issue.user.login == creator)
    ]
    key = ISSUE_SORTS.get(request.query.get("sort", "created"), ISSUE_SORTS["created"])
    descending = request.query.get("direction", "desc") != "asc"
    issues.sort(key=lambda issue: (key(issue), issue.number), reverse=descending)
    return paged_response(request, issues, lambda issue: _issue_json(request, repo, issue))


async def get_issue(request: web.Request) -> web.Response:
    repo = repo_of(request)
    issue = engine_of(request).world.issue(repo, _number(request))
    return json_response(_issue_json(request, repo, issue))


async def create_issue(request: web.Request) -> web.Response:
    engine = engine_of(request)
    repo = repo_of(request)
    actor = actor_of(request, repo)
    body = await body_of(request)
    title = body.get("title")
    if isinstance(title, int) and not isinstance(title, bool):
        title = str(title)
    if not isinstance(title, str):
        raise GitHubError(422, 'Invalid request.\n\n"title" wasn\'t supplied.')
    labels = _label_names(body.get("labels", []))
    may_label = actor.installation is not None or (
        engine.world.association(repo, actor.user) in WRITERS
    )
    issue, happenings = engine.world.create_issue(
        repo,
        title=title,
        body=optional(body, "body", str),
        actor=actor,
        now=engine.clock(),
        labels=labels if may_label else [],  # GitHub drops them silently otherwise
    )
    engine.publish(happenings)
    response = json_response(_issue_json(request, repo, issue), 201)
    response.headers["Location"] = f"{engine.urls.api}/repos/{repo.full_name}/issues/{issue.number}"
    return response


async def list_comments(request: web.Request) -> web.Response:
    repo = repo_of(request)
    issue = engine_of(request).world.issue(repo, _number(request))
    since = since_param(request, "IssueComment")
    comments = sorted(
        (
            comment
            for comment in engine_of(request).world.comments.values()
            if comment.repo == repo.full_name
            and comment.issue_number == issue.number
            and (since is None or int(comment.updated_at) >= since)
        ),
        key=lambda comment: comment.id,
    )
    return paged_response(request, comments, lambda c: _comment_json(request, repo, c))


async def list_repo_comments(request: web.Request) -> web.Response:
    repo = repo_of(request)
    since = since_param(request, "IssueComment")
    comments = [
        comment
        for comment in engine_of(request).world.comments.values()
        if comment.repo == repo.full_name and (since is None or int(comment.updated_at) >= since)
    ]
    sort = request.query.get("sort")
    if sort == "updated":
        comments.sort(key=lambda comment: (comment.updated_at, comment.id))
    else:
        comments.sort(key=lambda comment: comment.id)
    if sort is not None and request.query.get("direction") == "desc":
        comments.reverse()
    return paged_response(request, comments, lambda c: _comment_json(request, repo, c))


async def list_repo_events(request: web.Request) -> web.Response:
    repo = repo_of(request)
    engine = engine_of(request)
    newest_first = sorted(repo.events, key=lambda event: (event.created_at, event.id), reverse=True)
    return paged_response(
        request,
        newest_first,
        lambda event: payloads.issue_event_json(engine.world, repo, event, engine.urls),
    )


async def create_comment(request: web.Request) -> web.Response:
    engine = engine_of(request)
    repo = repo_of(request)
    actor = actor_of(request, repo)
    issue = engine.world.issue(repo, _number(request))
    text = required(await body_of(request), "body", str)
    comment, happenings = engine.world.add_comment(
        repo, issue, body=text, actor=actor, now=engine.clock()
    )
    engine.publish(happenings)
    response = json_response(_comment_json(request, repo, comment), 201)
    response.headers["Location"] = (
        f"{engine.urls.api}/repos/{repo.full_name}/issues/comments/{comment.id}"
    )
    return response


def _comment_of(request: web.Request, repo: Repo) -> Comment:
    return engine_of(request).world.comment(repo, int(request.match_info["comment_id"]))


async def get_comment(request: web.Request) -> web.Response:
    repo = repo_of(request)
    return json_response(_comment_json(request, repo, _comment_of(request, repo)))


async def update_comment(request: web.Request) -> web.Response:
    engine = engine_of(request)
    repo = repo_of(request)
    actor = actor_of(request, repo)
    comment = _comment_of(request, repo)
    text = required(await body_of(request), "body", str)
    happenings = engine.world.edit_comment(
        repo, comment, body=text, actor=actor, now=engine.clock()
    )
    engine.publish(happenings)
    return json_response(_comment_json(request, repo, comment))


async def delete_comment(request: web.Request) -> web.Response:
    engine = engine_of(request)
    repo = repo_of(request)
    actor = actor_of(request, repo)
    happenings = engine.world.delete_comment(repo, _comment_of(request, repo), actor=actor)
    engine.publish(happenings)
    return web.Response(status=204)


async def list_labels(request: web.Request) -> web.Response:
    repo = repo_of(request)
    issue = engine_of(request).world.issue(repo, _number(request))
    engine = engine_of(request)
    return paged_response(
        request, issue.labels, lambda label: payloads.label_json(label, repo, engine.urls)
    )


async def add_labels(request: web.Request) -> web.Response:
    engine = engine_of(request)
    repo = repo_of(request)
    actor = actor_of(request, repo, push=True)
    issue = engine.world.issue(repo, _number(request))
    names = _label_names(await json_of(request, []))
    happenings = engine.world.add_labels(repo, issue, names, actor=actor, now=engine.clock())
    engine.publish(happenings)
    return json_response([payloads.label_json(label, repo, engine.urls) for label in issue.labels])


async def remove_label(request: web.Request) -> web.Response:
    engine = engine_of(request)
    repo = repo_of(request)
    actor = actor_of(request, repo, push=True)
    issue = engine.world.issue(repo, _number(request))
    happenings = engine.world.remove_label(
        repo, issue, request.match_info["name"], actor=actor, now=engine.clock()
    )
    engine.publish(happenings)
    return json_response([payloads.label_json(label, repo, engine.urls) for label in issue.labels])


def add_routes(router: web.UrlDispatcher) -> None:
    base = "/repos/{owner}/{repo}/issues"
    router.add_get(base, list_issues, name="list-issues")
    router.add_post(base, create_issue, name="create-issue")
    router.add_get(base + "/comments", list_repo_comments, name="list-repo-comments")
    router.add_get(base + "/events", list_repo_events, name="list-repo-events")
    comment = base + r"/comments/{comment_id:\d+}"
    router.add_get(comment, get_comment, name="get-comment")
    router.add_patch(comment, update_comment, name="update-comment")
    router.add_delete(comment, delete_comment, name="delete-comment")
    issue = base + r"/{number:\d+}"
    router.add_get(issue, get_issue, name="get-issue")
    router.add_get(issue + "/comments", list_comments, name="list-comments")
    router.add_post(issue + "/comments", create_comment, name="create-comment")
    router.add_get(issue + "/labels", list_labels, name="list-labels")
    router.add_post(issue + "/labels", add_labels, name="add-labels")
    router.add_delete(issue + "/labels/{name}", remove_label, name="remove-label")
