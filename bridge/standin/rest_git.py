"""The Git Data API: refs, blobs, trees and commits with the ids git itself computes.

Writes need push access. A ref moves only forward unless ``force`` is set (422 "Update
is not a fast forward"), so two writers racing on a branch see what they would see on
GitHub. ``GET git/trees/{sha}`` takes a tree, a commit or a branch name, and any value
of ``recursive`` lists the whole tree, as GitHub does.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from agora.bridge.standin import payloads
from agora.bridge.standin.git import (
    BLOB_MODES,
    MODE_SUBMODULE,
    MODE_TREE,
    MODES,
    Change,
    Commit,
    GitObjectError,
    Signature,
)
from agora.bridge.standin.server import (
    actor_of,
    body_of,
    engine_of,
    json_response,
    optional,
    repo_of,
    required,
)
from agora.bridge.standin.state import Actor, GitHubError, Repo, not_found

SHA: Final = re.compile(r"^[0-9a-f]{40}$")
DOCS: Final = "https://docs.github.com/rest/git"


def _unprocessable(message: str, page: str) -> GitHubError:
    return GitHubError(422, message, documentation_url=f"{DOCS}/{page}")


def _ref_response(request: web.Request, repo: Repo, ref: str, status: int = 200) -> web.Response:
    urls = engine_of(request).urls
    return json_response(payloads.ref_json(repo, ref, repo.refs[ref], urls), status)


async def get_ref(request: web.Request) -> web.Response:
    repo = repo_of(request)
    ref = "refs/" + request.match_info["ref"]
    if ref not in repo.refs:
        raise not_found(f"{DOCS}/refs#get-a-reference")
    return _ref_response(request, repo, ref)


async def matching_refs(request: web.Request) -> web.Response:
    repo = repo_of(request)
    prefix = "refs/" + request.match_info["ref"]
    urls = engine_of(request).urls
    found = [
        payloads.ref_json(repo, ref, sha, urls)
        for ref, sha in sorted(repo.refs.items())
        if ref.startswith(prefix)
    ]
    return json_response(found)


def _commit_sha(repo: Repo, sha: str, page: str) -> str:
    if not SHA.match(sha) or repo.store.kind(sha) != "commit":
        raise _unprocessable("Object does not exist", page)
    return sha


async def create_ref(request: web.Request) -> web.Response:
    repo = repo_of(request)
    actor_of(request, repo, push=True)
    body = await body_of(request)
    ref = required(body, "ref", str)
    sha = required(body, "sha", str)
    if not ref.startswith("refs/") or ref.count("/") < 2:
        raise _unprocessable(
            "Reference name must start with 'refs/' and have at least two slashes.",
            "refs#create-a-reference",
        )
    if ref in repo.refs:
        raise _unprocessable("Reference already exists", "refs#create-a-reference")
    repo.refs[ref] = _commit_sha(repo, sha, "refs#create-a-reference")
    repo.pushed_at = engine_of(request).clock()
    response = _ref_response(request, repo, ref, 201)
    response.headers["Location"] = f"{engine_of(request).urls.api}/repos/{repo.full_name}/git/{ref}"
    return response


async def update_ref(request: web.Request) -> web.Response:
    repo = repo_of(request)
    actor_of(request, repo, push=True)
    body = await body_of(request)
    ref = "refs/" + request.match_info["ref"]
    sha = required(body, "sha", str)
    force = optional(body, "force", bool) or False
    if ref not in repo.refs:
        raise _unprocessable("Reference does not exist", "refs#update-a-reference")
    sha = _commit_sha(repo, sha, "refs#update-a-reference")
    if not force and not repo.store.is_ancestor(repo.refs[ref], sha):
        raise _unprocessable("Update is not a fast forward", "refs#update-a-reference")
    repo.refs[ref] = sha
    repo.pushed_at = engine_of(request).clock()
    return _ref_response(request, repo, ref)


async def delete_ref(request: web.Request) -> web.Response:
    repo = repo_of(request)
    actor_of(request, repo, push=True)
    ref = "refs/" + request.match_info["ref"]
    if ref not in repo.refs:
        raise _unprocessable("Reference does not exist", "refs#delete-a-reference")
    del repo.refs[ref]
    return web.Response(status=204)


async def create_blob(request: web.Request) -> web.Response:
    repo = repo_of(request)
    actor_of(request, repo, push=True)
    body = await body_of(request)
    content = required(body, "content", str)
    encoding = (optional(body, "encoding", str) or "utf-8").lower()
    if encoding in ("utf-8", "utf8"):
        data = content.encode()
    elif encoding == "base64":
        try:
            data = base64.b64decode(content, validate=False)
        except (binascii.Error, ValueError) as error:
            raise _unprocessable("content is not valid Base64", "blobs#create-a-blob") from error
    else:
        raise _unprocessable(
            f"encoding must be 'utf-8' or 'base64', got {encoding!r}", "blobs#create-a-blob"
        )
    sha = repo.store.put("blob", data)
    url = f"{engine_of(request).urls.api}/repos/{repo.full_name}/git/blobs/{sha}"
    response = json_response({"sha": sha, "url": url}, 201)
    response.headers["Location"] = url
    return response


async def get_blob(request: web.Request) -> web.Response:
    repo = repo_of(request)
    sha = request.match_info["sha"]
    if repo.store.kind(sha) != "blob":
        raise not_found(f"{DOCS}/blobs#get-a-blob")
    data = repo.store.body(sha, "blob")
    return json_response(payloads.blob_json(repo, sha, data, engine_of(request).urls))


def _change(repo: Repo, item: Any) -> Change:
    page = "trees#create-a-tree"
    if not isinstance(item, dict):
        raise _unprocessable("Invalid tree info", page)
    path, mode, kind = item.get("path"), item.get("mode"), item.get("type")
    if not isinstance(path, str) or mode not in MODES or kind not in ("blob", "tree", "commit"):
        raise _unprocessable(
            f"Invalid tree info: path {path!r}, mode {mode!r}, type {kind!r}", page
        )
    expected = "tree" if mode == MODE_TREE else "commit" if mode == MODE_SUBMODULE else "blob"
    if kind != expected:
        raise _unprocessable(f"tree.mode {mode} does not fit tree.type {kind!r}", page)
    if "content" in item and item.get("sha") is not None:
        raise _unprocessable("tree.sha and tree.content are mutually exclusive", page)
    content = item.get("content")
    if isinstance(content, str):
        if mode not in BLOB_MODES:
            raise _unprocessable(f"tree.content needs a file mode, not {mode}", page)
        return Change(path, mode, repo.store.put("blob", content.encode()))
    sha = item.get("sha")
    if sha is None:
        return Change(path, mode, None)
    if not isinstance(sha, str) or not SHA.match(sha):
        raise _unprocessable(f"tree.sha {sha} is not a valid {kind}", page)
    if kind != "commit" and repo.store.kind(sha) != kind:
        raise _unprocessable(f"tree.sha {sha} is not a valid {kind}", page)
    return Change(path, mode, sha)


async def create_tree(request: web.Request) -> web.Response:
    engine = engine_of(request)
    repo = repo_of(request)
    actor_of(request, repo, push=True)
    body = await body_of(request)
    items = required(body, "tree", list)
    base_tree = optional(body, "base_tree", str)
    if base_tree is not None and repo.store.kind(base_tree) != "tree":
        raise _unprocessable(f"base_tree {base_tree} is not a valid tree", "trees#create-a-tree")
    try:
        sha = repo.store.build_tree(base_tree, [_change(repo, item) for item in items])
    except GitObjectError as error:
        raise _unprocessable(str(error), "trees#create-a-tree") from error
    response = json_response(payloads.tree_json(repo, sha, engine.urls, recursive=False), 201)
    response.headers["Location"] = f"{engine.urls.api}/repos/{repo.full_name}/git/trees/{sha}"
    return response


async def get_tree(request: web.Request) -> web.Response:
    repo = repo_of(request)
    name = request.match_info["sha"]
    kind = repo.store.kind(name)
    if kind == "commit":
        name = repo.store.commit(name).tree
    elif kind is None and f"refs/heads/{name}" in repo.refs:
        name = repo.store.commit(repo.refs[f"refs/heads/{name}"]).tree
    elif kind != "tree":
        raise not_found(f"{DOCS}/trees#get-a-tree")
    recursive = "recursive" in request.query
    return json_response(
        payloads.tree_json(repo, name, engine_of(request).urls, recursive=recursive)
    )


def _signature(value: Any, default: Signature, field: str) -> Signature:
    if value is None:
        return default
    if not isinstance(value, dict):
        raise _unprocessable(f"{field} must be an object", "commits#create-a-commit")
    name, email, date = value.get("name"), value.get("email"), value.get("date")
    if not isinstance(name, str) or not isinstance(email, str):
        raise _unprocessable(
            f"{field}.name and {field}.email are required", "commits#create-a-commit"
        )
    if date is None:
        return Signature(name, email, default.timestamp, default.offset_minutes)
    try:
        when = datetime.fromisoformat(str(date))
    except ValueError as error:
        raise _unprocessable(
            f"{field}.date {date!r} is not ISO 8601", "commits#create-a-commit"
        ) from error
    offset = when.utcoffset()
    minutes = 0 if offset is None else int(offset.total_seconds() // 60)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return Signature(name, email, int(when.timestamp()), minutes)


def _default_signature(actor: Actor, now: float) -> Signature:
    return Signature(actor.user.login, actor.user.email, int(now))


async def create_commit(request: web.Request) -> web.Response:
    engine = engine_of(request)
    repo = repo_of(request)
    actor = actor_of(request, repo, push=True)
    body = await body_of(request)
    message = required(body, "message", str)
    tree = required(body, "tree", str)
    parents = optional(body, "parents", list) or []
    page = "commits#create-a-commit"
    if repo.store.kind(tree) != "tree":
        raise _unprocessable("Tree SHA does not exist", page)
    for parent in parents:
        if not isinstance(parent, str) or repo.store.kind(parent) != "commit":
            raise _unprocessable("Parent SHA does not exist or is not a commit object", page)
    author = _signature(body.get("author"), _default_signature(actor, engine.clock()), "author")
    committer = _signature(body.get("committer"), author, "committer")
    sha = repo.store.put_commit(Commit(tree, tuple(parents), author, committer, message))
    response = json_response(payloads.commit_json(repo, sha, engine.urls), 201)
    response.headers["Location"] = f"{engine.urls.api}/repos/{repo.full_name}/git/commits/{sha}"
    return response


async def get_commit(request: web.Request) -> web.Response:
    repo = repo_of(request)
    sha = request.match_info["sha"]
    if repo.store.kind(sha) != "commit":
        raise not_found(f"{DOCS}/commits#get-a-commit-object")
    return json_response(payloads.commit_json(repo, sha, engine_of(request).urls))


def add_routes(router: web.UrlDispatcher) -> None:
    base = "/repos/{owner}/{repo}/git"
    router.add_get(base + "/ref/{ref:.+}", get_ref, name="get-ref")
    router.add_get(base + "/refs/{ref:.+}", get_ref, name="get-ref-legacy")
    router.add_get(base + "/matching-refs/{ref:.*}", matching_refs, name="matching-refs")
    router.add_post(base + "/refs", create_ref, name="create-ref")
    router.add_patch(base + "/refs/{ref:.+}", update_ref, name="update-ref")
    router.add_delete(base + "/refs/{ref:.+}", delete_ref, name="delete-ref")
    router.add_post(base + "/blobs", create_blob, name="create-blob")
    router.add_get(base + "/blobs/{sha}", get_blob, name="get-blob")
    router.add_post(base + "/trees", create_tree, name="create-tree")
    router.add_get(base + "/trees/{sha:.+}", get_tree, name="get-tree")
    router.add_post(base + "/commits", create_commit, name="create-commit")
    router.add_get(base + "/commits/{sha}", get_commit, name="get-commit")
