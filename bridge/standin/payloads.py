"""The JSON GitHub sends: REST resources and webhook payloads, built from the world's state.

Shapes follow GitHub's REST description (githubkit's generated models accept every one
of them) and the examples in ``@octokit/webhooks``: full user, repository, issue and
comment objects, ``reactions`` roll-ups, ``performed_via_github_app`` for an app's
writes. URLs point at the stand-in (``Urls.api``) so a client can follow them. Pure
functions: state in, dicts out.
"""

from __future__ import annotations

import base64
import json
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from agora.bridge.standin.git import ObjectStore, Signature, TreeEntry
from agora.bridge.standin.state import (
    APP_EVENTS,
    APP_PERMISSIONS,
    App,
    Comment,
    Delivery,
    Happening,
    Hook,
    Installation,
    Issue,
    IssueEvent,
    Label,
    Permission,
    Repo,
    User,
    World,
    node_id,
)

Json = dict[str, Any]
ZEN: Final = "Design for failure."


@dataclass(frozen=True, slots=True)
class Urls:
    """Where the API and the web pages live (no trailing slash)."""

    api: str
    web: str


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def user_json(user: User, urls: Urls) -> Json:
    api = f"{urls.api}/users/{user.login}"
    html = f"{urls.web}/apps/{user.login.removesuffix('[bot]')}" if user.type == "Bot" else None
    return {
        "login": user.login,
        "id": user.id,
        "node_id": user.node_id,
        "avatar_url": f"{urls.web}/avatars/u/{user.id}?v=4",
        "gravatar_id": "",
        "url": api,
        "html_url": html or f"{urls.web}/{user.login}",
        "followers_url": f"{api}/followers",
        "following_url": f"{api}/following{{/other_user}}",
        "gists_url": f"{api}/gists{{/gist_id}}",
        "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{api}/subscriptions",
        "organizations_url": f"{api}/orgs",
        "repos_url": f"{api}/repos",
        "events_url": f"{api}/events{{/privacy}}",
        "received_events_url": f"{api}/received_events",
        "type": user.type,
        "user_view_type": "public",
        "site_admin": False,
    }


def public_user_json(user: User, urls: Urls) -> Json:
    """``GET /user``: the user object with its public profile (GitHub's public-user shape).

    The stand-in keeps no profiles: they are empty, and the account dates from the epoch.
    """
    return {
        **user_json(user, urls),
        "name": user.name,
        "company": None,
        "blog": "",
        "location": None,
        "email": None,
        "hireable": None,
        "bio": None,
        "public_repos": 0,
        "public_gists": 0,
        "followers": 0,
        "following": 0,
        "created_at": iso(0),
        "updated_at": iso(0),
    }


# What each legacy base role may do, as a collaborator's ``permissions`` shows it.
_ROLE_RIGHTS: Final[dict[Permission, tuple[str, ...]]] = {
    "admin": ("pull", "triage", "push", "maintain", "admin"),
    "write": ("pull", "triage", "push"),
    "read": ("pull",),
    "none": (),
}


def collaborator_permission_json(user: User, permission: Permission, urls: Urls) -> Json:
    """``GET /repos/{owner}/{repo}/collaborators/{username}/permission``'s answer."""
    rights = _ROLE_RIGHTS[permission]
    everything = _ROLE_RIGHTS["admin"]
    collaborator = {
        **user_json(user, urls),
        "permissions": {right: right in rights for right in everything},
        "role_name": permission,
    }
    return {"permission": permission, "role_name": permission, "user": collaborator}


def label_json(label: Label, repo: Repo, urls: Urls) -> Json:
    return {
        "id": label.id,
        "node_id": node_id("LA", label.id),
        "url": f"{urls.api}/repos/{repo.full_name}/labels/{label.name.replace(' ', '%20')}",
        "name": label.name,
        "color": label.color,
        "default": label.default,
        "description": label.description,
        "archived_at": None,
        "archived_by": None,
    }


def reactions_json(url: str) -> Json:
    counts = dict.fromkeys(("+1", "-1", "laugh", "hooray", "confused", "heart", "rocket"), 0)
    return {"url": url, "total_count": 0, **counts, "eyes": 0}


def integration_json(app: App, urls: Urls) -> Json:
    return {
        "id": app.id,
        "client_id": app.client_id,
        "slug": app.slug,
        "node_id": node_id("A", app.id),
        "owner": user_json(app.owner, urls),
        "name": app.name,
        "description": "",
        "external_url": f"{urls.web}/{app.owner.login}/{app.slug}",
        "html_url": f"{urls.web}/apps/{app.slug}",
        "created_at": iso(app.created_at),
        "updated_at": iso(app.created_at),
        "permissions": dict(APP_PERMISSIONS),
        "events": list(APP_EVENTS),
    }


def issue_json(world: World, repo: Repo, issue: Issue, urls: Urls) -> Json:
    api = f"{urls.api}/repos/{repo.full_name}/issues/{issue.number}"
    kind = "pull" if issue.pull_request else "issues"
    html = f"{urls.web}/{repo.full_name}/{kind}/{issue.number}"
    body: Json = {
        "url": api,
        "repository_url": f"{urls.api}/repos/{repo.full_name}",
        "labels_url": f"{api}/labels{{/name}}",
        "comments_url": f"{api}/comments",
        "events_url": f"{api}/events",
        "html_url": html,
        "id": issue.id,
        "node_id": node_id("PR" if issue.pull_request else "I", issue.id),
        "number": issue.number,
        "title": issue.title,
        "user": user_json(issue.user, urls),
        "labels": [label_json(label, repo, urls) for label in issue.labels],
        "state": issue.state,
        "locked": False,
        "assignee": None,
        "assignees": [],
        "milestone": None,
        "comments": issue.comments,
        "created_at": iso(issue.created_at),
        "updated_at": iso(issue.updated_at),
        "closed_at": None if issue.closed_at is None else iso(issue.closed_at),
        "author_association": world.association(repo, issue.user),
        "type": None,
        "active_lock_reason": None,
        "body": issue.body,
        "reactions": reactions_json(f"{api}/reactions"),
        "timeline_url": f"{api}/timeline",
        "performed_via_github_app": None
        if issue.app is None
        else integration_json(issue.app, urls),
        "state_reason": None,
    }
    if issue.pull_request:
        pulls = f"{urls.api}/repos/{repo.full_name}/pulls/{issue.number}"
        body["draft"] = False
        body["pull_request"] = {
            "url": pulls,
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "merged_at": None,
        }
    return body


def comment_json(world: World, repo: Repo, comment: Comment, urls: Urls) -> Json:
    api = f"{urls.api}/repos/{repo.full_name}/issues/comments/{comment.id}"
    issue = repo.issues[comment.issue_number]
    kind = "pull" if issue.pull_request else "issues"
    return {
        "url": api,
        "html_url": f"{urls.web}/{repo.full_name}/{kind}/{issue.number}#issuecomment-{comment.id}",
        "issue_url": f"{urls.api}/repos/{repo.full_name}/issues/{issue.number}",
        "id": comment.id,
        "node_id": node_id("IC", comment.id),
        "user": user_json(comment.user, urls),
        "created_at": iso(comment.created_at),
        "updated_at": iso(comment.updated_at),
        "author_association": world.association(repo, comment.user),
        "body": comment.body,
        "reactions": reactions_json(f"{api}/reactions"),
        "performed_via_github_app": (
            None if comment.app is None else integration_json(comment.app, urls)
        ),
    }


def issue_event_json(world: World, repo: Repo, event: IssueEvent, urls: Urls) -> Json:
    """An entry of ``GET /repos/{owner}/{repo}/issues/events``: the label as it was when
    the event happened, the issue as it is now."""
    issue = repo.issues[event.issue_number]
    return {
        "id": event.id,
        "node_id": node_id("LE" if event.event == "labeled" else "UNLE", event.id),
        "url": f"{urls.api}/repos/{repo.full_name}/issues/events/{event.id}",
        "actor": user_json(event.actor, urls),
        "event": event.event,
        "commit_id": None,
        "commit_url": None,
        "created_at": iso(event.created_at),
        "label": {"name": event.label_name, "color": event.label_color},
        "performed_via_github_app": (
            None if event.app is None else integration_json(event.app, urls)
        ),
        "issue": issue_json(world, repo, issue, urls),
    }


_REPO_TEMPLATES: Final = {
    "forks_url": "/forks",
    "keys_url": "/keys{/key_id}",
    "collaborators_url": "/collaborators{/collaborator}",
    "teams_url": "/teams",
    "hooks_url": "/hooks",
    "issue_events_url": "/issues/events{/number}",
    "events_url": "/events",
    "assignees_url": "/assignees{/user}",
    "branches_url": "/branches{/branch}",
    "tags_url": "/tags",
    "blobs_url": "/git/blobs{/sha}",
    "git_tags_url": "/git/tags{/sha}",
    "git_refs_url": "/git/refs{/sha}",
    "trees_url": "/git/trees{/sha}",
    "statuses_url": "/statuses/{sha}",
    "languages_url": "/languages",
    "stargazers_url": "/stargazers",
    "contributors_url": "/contributors",
    "subscribers_url": "/subscribers",
    "subscription_url": "/subscription",
    "commits_url": "/commits{/sha}",
    "git_commits_url": "/git/commits{/sha}",
    "comments_url": "/comments{/number}",
    "issue_comment_url": "/issues/comments{/number}",
    "contents_url": "/contents/{+path}",
    "compare_url": "/compare/{base}...{head}",
    "merges_url": "/merges",
    "archive_url": "/{archive_format}{/ref}",
    "downloads_url": "/downloads",
    "issues_url": "/issues{/number}",
    "pulls_url": "/pulls{/number}",
    "milestones_url": "/milestones{/number}",
    "notifications_url": "/notifications{?since,all,participating}",
    "labels_url": "/labels{/name}",
    "releases_url": "/releases{/id}",
    "deployments_url": "/deployments",
}


def repository_json(repo: Repo, urls: Urls) -> Json:
    api = f"{urls.api}/repos/{repo.full_name}"
    html = f"{urls.web}/{repo.full_name}"
    host = urls.web.split("://", 1)[-1]
    open_issues = sum(issue.state == "open" for issue in repo.issues.values())
    return {
        "id": repo.id,
        "node_id": node_id("R", repo.id),
        "name": repo.name,
        "full_name": repo.full_name,
        "private": False,
        "owner": user_json(repo.owner, urls),
        "html_url": html,
        "description": None,
        "fork": False,
        "url": api,
        **{key: api + suffix for key, suffix in _REPO_TEMPLATES.items()},
        "created_at": iso(repo.created_at),
        "updated_at": iso(repo.pushed_at),
        "pushed_at": iso(repo.pushed_at),
        "git_url": f"git://{host}/{repo.full_name}.git",
        "ssh_url": f"git@{host}:{repo.full_name}.git",
        "clone_url": f"{html}.git",
        "svn_url": html,
        "homepage": None,
        "size": 0,
        "stargazers_count": 0,
        "watchers_count": 0,
        "language": "Python",
        "has_issues": True,
        "has_projects": True,
        "has_downloads": True,
        "has_wiki": True,
        "has_pages": False,
        "has_discussions": False,
        "forks_count": 0,
        "mirror_url": None,
        "archived": False,
        "disabled": False,
        "open_issues_count": open_issues,
        "license": None,
        "allow_forking": True,
        "is_template": False,
        "web_commit_signoff_required": False,
        "topics": [],
        "visibility": "public",
        "forks": 0,
        "open_issues": open_issues,
        "watchers": 0,
        "default_branch": repo.default_branch,
    }


def installation_json(installation: Installation, urls: Urls) -> Json:
    app = installation.app
    return {
        "id": installation.id,
        "client_id": app.client_id,
        "account": user_json(installation.account, urls),
        "repository_selection": "selected",
        "access_tokens_url": f"{urls.api}/app/installations/{installation.id}/access_tokens",
        "repositories_url": f"{urls.api}/installation/repositories",
        "html_url": f"{urls.web}/settings/installations/{installation.id}",
        "app_id": app.id,
        "app_slug": app.slug,
        "target_id": installation.account.id,
        "target_type": installation.account.type,
        "permissions": dict(APP_PERMISSIONS),
        "events": list(APP_EVENTS),
        "created_at": iso(installation.created_at),
        "updated_at": iso(installation.created_at),
        "single_file_name": None,
        "has_multiple_single_files": False,
        "single_file_paths": [],
        "suspended_by": None,
        "suspended_at": None,
    }


def installation_token_json(value: str, expires_at: float) -> Json:
    return {
        "token": value,
        "expires_at": iso(expires_at),
        "permissions": dict(APP_PERMISSIONS),
        "repository_selection": "selected",
    }


# -- git data -----------------------------------------------------------------------------


def ref_json(repo: Repo, ref: str, sha: str, urls: Urls) -> Json:
    api = f"{urls.api}/repos/{repo.full_name}/git"
    return {
        "ref": ref,
        "node_id": node_id("REF", int(sha[:12], 16)),
        "url": f"{api}/{ref}",
        "object": {"sha": sha, "type": "commit", "url": f"{api}/commits/{sha}"},
    }


def blob_json(repo: Repo, sha: str, data: bytes, urls: Urls) -> Json:
    encoded = base64.b64encode(data).decode("ascii")
    return {
        "sha": sha,
        "node_id": node_id("B", int(sha[:12], 16)),
        "size": len(data),
        "url": f"{urls.api}/repos/{repo.full_name}/git/blobs/{sha}",
        "content": "".join(line + "\n" for line in textwrap.wrap(encoded, 60)),
        "encoding": "base64",
    }


def tree_entry_json(repo: Repo, path: str, entry: TreeEntry, urls: Urls) -> Json:
    api = f"{urls.api}/repos/{repo.full_name}/git"
    item: Json = {"path": path, "mode": entry.mode, "type": entry.kind, "sha": entry.sha}
    if entry.kind == "blob":
        item["size"] = len(repo.store.body(entry.sha, "blob"))
        item["url"] = f"{api}/blobs/{entry.sha}"
    elif entry.kind == "tree":
        item["url"] = f"{api}/trees/{entry.sha}"
    return item


def tree_json(repo: Repo, sha: str, urls: Urls, *, recursive: bool) -> Json:
    store: ObjectStore = repo.store
    if recursive:
        items = [tree_entry_json(repo, path, entry, urls) for path, entry in store.walk(sha)]
    else:
        items = [tree_entry_json(repo, e.name, e, urls) for e in store.entries(sha)]
    return {
        "sha": sha,
        "url": f"{urls.api}/repos/{repo.full_name}/git/trees/{sha}",
        "tree": items,
        "truncated": False,
    }


def commit_json(repo: Repo, sha: str, urls: Urls) -> Json:
    commit = repo.store.commit(sha)
    api = f"{urls.api}/repos/{repo.full_name}/git"
    html = f"{urls.web}/{repo.full_name}/commit"

    def person(who: Signature) -> Json:
        date = datetime.fromtimestamp(who.timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"name": who.name, "email": who.email, "date": date}

    return {
        "sha": sha,
        "node_id": node_id("C", int(sha[:12], 16)),
        "url": f"{api}/commits/{sha}",
        "html_url": f"{html}/{sha}",
        "author": person(commit.author),
        "committer": person(commit.committer),
        "tree": {"sha": commit.tree, "url": f"{api}/trees/{commit.tree}"},
        "message": commit.message,
        "parents": [
            {"sha": p, "url": f"{api}/commits/{p}", "html_url": f"{html}/{p}"}
            for p in commit.parents
        ],
        "verification": {
            "verified": False,
            "reason": "unsigned",
            "signature": None,
            "payload": None,
            "verified_at": None,
        },
    }


# -- webhooks -----------------------------------------------------------------------------


def webhook_payload(world: World, happening: Happening, hook: Hook, urls: Urls) -> Json:
    """The payload ``hook`` receives for ``happening`` (shown as it is at this moment)."""
    repo, actor = happening.repo, happening.actor
    payload: Json = {"action": happening.action}
    if happening.changes is not None:
        payload["changes"] = dict(happening.changes)
    payload["issue"] = issue_json(world, repo, happening.issue, urls)
    if happening.comment is not None:
        payload["comment"] = comment_json(world, repo, happening.comment, urls)
    if happening.label is not None:
        payload["label"] = label_json(happening.label, repo, urls)
    payload["repository"] = repository_json(repo, urls)
    payload["sender"] = user_json(actor.user, urls)
    if hook.app is not None:
        installation = world.installation_for(hook.app, repo)
        if installation is not None:
            legacy_id = f"023:IntegrationInstallation{installation.id}".encode()
            payload["installation"] = {
                "id": installation.id,
                "node_id": base64.b64encode(legacy_id).decode("ascii"),
            }
    return payload


def ping_payload(hook: Hook, urls: Urls) -> Json:
    where = f"{urls.api}/app/hook" if hook.app is not None else f"{urls.api}/hooks/{hook.id}"
    config = {"content_type": "json", "insecure_ssl": "0", "url": hook.url}
    if hook.secret:
        config["secret"] = "********"  # noqa: S105 - the mask GitHub shows, not a secret
    body: Json = {
        "zen": ZEN,
        "hook_id": hook.id,
        "hook": {
            "type": "App" if hook.app is not None else "Repository",
            "id": hook.id,
            "name": "web",
            "active": True,
            "events": list(hook.events),
            "config": config,
            "updated_at": iso(hook.created_at),
            "created_at": iso(hook.created_at),
            "deliveries_url": f"{where}/deliveries",
            "last_response": {"code": None, "status": "unused", "message": None},
        },
    }
    if hook.app is not None:
        body["hook"]["app_id"] = hook.app.id
    else:
        body["hook"]["url"] = where
        body["hook"]["test_url"] = f"{where}/test"
        body["hook"]["ping_url"] = f"{where}/pings"
    return body


def delivery_item_json(delivery: Delivery) -> Json:
    return {
        "id": delivery.id,
        "guid": delivery.guid,
        "delivered_at": iso(delivery.delivered_at),
        "redelivery": delivery.redelivery,
        "duration": round(delivery.duration, 3),
        "status": delivery.status,
        "status_code": delivery.status_code,
        "event": delivery.event,
        "action": delivery.action,
        "installation_id": delivery.installation_id,
        "repository_id": delivery.repository_id,
        "throttled_at": None,
    }


def delivery_json(delivery: Delivery, urls: Urls) -> Json:
    return {
        **delivery_item_json(delivery),
        "url": f"{urls.api}/app/hook/deliveries/{delivery.id}",
        "request": {
            "headers": dict(delivery.request_headers),
            "payload": json.loads(delivery.body),
        },
        "response": {
            "headers": dict(delivery.response_headers),
            "payload": delivery.response_body,
        },
    }
