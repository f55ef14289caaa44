"""The GitHub stand-in, driven through githubkit over real HTTP, with githubkit's own models.

Every REST answer is read through ``parsed_data`` (githubkit validates it against the
models generated from GitHub's description), and every webhook is received by a real
aiohttp server, its signature checked, and parsed by ``githubkit.webhooks.parse``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from githubkit import AppAuthStrategy, AppInstallationAuthStrategy, GitHub, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy
from githubkit.exception import (
    PrimaryRateLimitExceeded,
    RequestError,
    RequestFailed,
    SecondaryRateLimitExceeded,
)
from githubkit.webhooks import parse as parse_webhook

from agora.bridge.standin import Fault, GitHubStandIn
from agora.bridge.standin.auth import credential
from agora.bridge.standin.git import Change, ObjectStore, object_id
from agora.bridge.standin.hooks import HookSender
from agora.bridge.standin.state import GitHubError

REPO = "acme/widgets"
OWNER, NAME = REPO.split("/")
SECRET = "hook-secret"  # noqa: S105 - a throwaway secret for the test hook
APP_ID = 424242


class Clock:
    """A clock the test moves by hand (starts at the real time, for JWTs)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Received:
    event: str
    guid: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook endpoint: answers ``status`` and queues what it receives."""

    url: str = ""
    status: int = 200
    queue: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        await self.queue.put(
            Received(
                request.headers["X-GitHub-Event"],
                request.headers["X-GitHub-Delivery"],
                dict(request.headers),
                body,
            )
        )
        return web.Response(status=self.status)

    async def next(self, event: str | None = None) -> Received:
        while True:
            got = await asyncio.wait_for(self.queue.get(), timeout=5)
            if event is None or got.event == event:
                return got


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def serve_receiver(receiver: Receiver, port: int) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{port}/hook"
    return runner


@pytest.fixture(scope="module")
def app_key() -> tuple[str, str]:
    """A fresh RSA key: (private PEM for githubkit, public PEM for the stand-in)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def github(clock: Clock) -> AsyncIterator[GitHubStandIn]:
    standin = GitHubStandIn(clock=clock, installation_token_lifetime_s=600)
    await standin.start()
    standin.add_user("alice", association="MEMBER")
    standin.add_user("bob", association="NONE")
    standin.create_repo(REPO)
    try:
        yield standin
    finally:
        await standin.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    runner = await serve_receiver(receiver, free_port())
    try:
        yield receiver
    finally:
        await runner.cleanup()


def client(github: GitHubStandIn, login: str = "alice", **options: Any) -> GitHub[Any]:
    token = github.issue_token(login)
    return GitHub(TokenAuthStrategy(token), base_url=github.base_url, auto_retry=False, **options)


def app_client(
    github: GitHubStandIn, private_pem: str, installation_id: int | None = None
) -> GitHub[Any]:
    """Each client gets its own cache: githubkit caches JWTs and tokens per app id."""
    cache = MemCacheStrategy()
    if installation_id is None:
        return GitHub(
            AppAuthStrategy(APP_ID, private_pem),
            base_url=github.base_url,
            auto_retry=False,
            cache_strategy=cache,
        )
    return GitHub(
        AppInstallationAuthStrategy(APP_ID, private_pem, installation_id),
        base_url=github.base_url,
        auto_retry=False,
        cache_strategy=cache,
    )


def check_signature(received: Received) -> None:
    expected = "sha256=" + hmac.new(SECRET.encode(), received.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(received.headers["X-Hub-Signature-256"], expected)


# -- git objects -----------------------------------------------------------------------------


def git(cwd: Path, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, input=stdin, capture_output=True, check=True, env=env
    )
    return result.stdout.decode().strip()


def test_blob_ids_are_what_git_hash_object_prints(tmp_path: Path) -> None:
    for data in (b"", b"hello\n", bytes(range(256)) * 3):
        assert object_id("blob", data) == git(tmp_path, "hash-object", "--stdin", stdin=data)


def test_trees_hash_as_git_write_tree_writes_them(tmp_path: Path) -> None:
    store = ObjectStore()
    files = {"b.txt": b"b\n", "a/x.txt": b"x\n", "a.txt": b"a\n", "a-b/y": b"y\n"}
    changes = [Change(path, "100644", store.put("blob", data)) for path, data in files.items()]
    tree = store.build_tree(None, changes)
    git(tmp_path, "init", "-q")
    for path, data in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    git(tmp_path, "add", ".")
    assert tree == git(tmp_path, "write-tree")
    assert store.files(tree) == files


# -- issues and comments -------------------------------------------------------------------------


async def test_comments_are_created_read_edited_and_deleted(github: GitHubStandIn) -> None:
    number = github.create_issue(REPO, "channel: build-coord", "mirror", by="alice")
    async with client(github) as gh:
        created = await gh.rest.issues.async_create_comment(OWNER, NAME, number, body="hello")
        comment = created.parsed_data
        assert created.status_code == 201
        assert (comment.body, comment.user and comment.user.login) == ("hello", "alice")
        assert comment.author_association == "MEMBER"
        read = await gh.rest.issues.async_get_comment(OWNER, NAME, comment.id)
        assert read.parsed_data.html_url.endswith(f"#issuecomment-{comment.id}")
        edited = await gh.rest.issues.async_update_comment(OWNER, NAME, comment.id, body="bye")
        assert edited.parsed_data.body == "bye"
        deleted = await gh.rest.issues.async_delete_comment(OWNER, NAME, comment.id)
        assert deleted.status_code == 204
        with pytest.raises(RequestFailed) as missing:
            await gh.rest.issues.async_get_comment(OWNER, NAME, comment.id)
    assert missing.value.response.status_code == 404
    assert set(missing.value.response.json()) >= {"message", "documentation_url"}
    assert github.comments(REPO, number) == []


async def test_comment_lists_paginate_with_a_link_header(github: GitHubStandIn) -> None:
    number = github.create_issue(REPO, "channel: release")
    for index in range(7):
        github.comment(REPO, number, f"comment {index}", by="bob")
    async with client(github) as gh:
        first = await gh.rest.issues.async_list_comments(OWNER, NAME, number, per_page=3)
        assert [c.body for c in first.parsed_data] == ["comment 0", "comment 1", "comment 2"]
        assert 'rel="next"' in first.headers["link"]
        assert 'page=3>; rel="last"' in first.headers["link"]
        every = [
            c.body
            async for c in gh.rest.paginate(
                gh.rest.issues.async_list_comments,
                owner=OWNER,
                repo=NAME,
                issue_number=number,
                per_page=3,
            )
        ]
    assert every == [f"comment {index}" for index in range(7)]


async def test_comment_lists_honour_since(github: GitHubStandIn, clock: Clock) -> None:
    number = github.create_issue(REPO, "channel: release")
    github.comment(REPO, number, "old", by="alice")
    clock.advance(120)
    cut = datetime.fromtimestamp(int(clock()), UTC)
    github.comment(REPO, number, "new", by="alice")
    async with client(github) as gh:
        listed = await gh.rest.issues.async_list_comments(OWNER, NAME, number, since=cut)
        by_repo = await gh.rest.issues.async_list_comments_for_repo(OWNER, NAME, since=cut)
    assert [c.body for c in listed.parsed_data] == ["new"]
    assert [c.body for c in by_repo.parsed_data] == ["new"]


async def test_issues_are_listed_by_label_and_state_including_pull_requests(
    github: GitHubStandIn,
) -> None:
    channel = github.create_issue(REPO, "channel: a", by="alice", labels=("agora",))
    github.create_issue(REPO, "unrelated", by="bob")
    pull = github.create_issue(REPO, "a pull request", by="alice", pull_request=True)
    github.add_label(REPO, pull, "agora", by="alice")
    async with client(github) as gh:
        created = await gh.rest.issues.async_create(
            OWNER, NAME, title="channel: b", labels=["agora"]
        )
        listed = await gh.rest.issues.async_list_for_repo(OWNER, NAME, labels="agora", per_page=2)
        rest = await gh.rest.issues.async_list_for_repo(
            OWNER, NAME, labels="agora", page=2, per_page=2
        )
        closed = await gh.rest.issues.async_list_for_repo(OWNER, NAME, state="closed")
    numbers = [i.number for i in listed.parsed_data] + [i.number for i in rest.parsed_data]
    assert numbers == [created.parsed_data.number, pull, channel]
    assert [bool(i.pull_request) for i in listed.parsed_data] == [False, True]
    assert 'rel="next"' in listed.headers["link"]
    assert closed.parsed_data == []


async def test_labels_are_added_listed_and_removed(github: GitHubStandIn) -> None:
    number = github.create_issue(REPO, "channel: build-coord")
    async with client(github) as gh:
        added = await gh.rest.issues.async_add_labels(
            OWNER, NAME, number, labels=["agora", "agora:kill"]
        )
        assert [label.name for label in added.parsed_data] == ["agora", "agora:kill"]
        removed = await gh.rest.issues.async_remove_label(OWNER, NAME, number, "agora:kill")
        assert [label.name for label in removed.parsed_data] == ["agora"]
        listed = await gh.rest.issues.async_list_labels_on_issue(OWNER, NAME, number)
        assert [label.name for label in listed.parsed_data] == ["agora"]
        with pytest.raises(RequestFailed) as absent:
            await gh.rest.issues.async_remove_label(OWNER, NAME, number, "agora:kill")
    assert absent.value.response.status_code == 404
    assert github.labels(REPO, number) == ["agora"]


async def test_label_changes_are_issue_events_listed_newest_first_in_githubkits_model(
    github: GitHubStandIn, clock: Clock
) -> None:
    number = github.create_issue(REPO, "channel: build-coord", by="alice")
    pull = github.create_issue(REPO, "a pull request", by="alice", pull_request=True)
    github.add_label(REPO, number, "agora:kill", by="alice")
    clock.advance(60)
    async with client(github) as gh:
        await gh.rest.issues.async_remove_label(OWNER, NAME, number, "agora:kill")
        clock.advance(60)
        github.add_label(REPO, pull, "agora:kill", by="bob")
        first = await gh.rest.issues.async_list_events_for_repo(OWNER, NAME, per_page=2)
        rest = await gh.rest.issues.async_list_events_for_repo(OWNER, NAME, per_page=2, page=2)
    events = [*first.parsed_data, *rest.parsed_data]  # each validated by githubkit
    assert [
        (e.event, e.label and e.label.name, e.actor and e.actor.login, e.issue and e.issue.number)
        for e in events
    ] == [
        ("labeled", "agora:kill", "bob", pull),
        ("unlabeled", "agora:kill", "alice", number),
        ("labeled", "agora:kill", "alice", number),
    ]
    assert events[0].created_at - events[1].created_at == timedelta(seconds=60)
    assert events[0].issue and events[0].issue.pull_request is not None
    assert events[2].label and events[2].label.color == "ededed"
    assert 'page=2>; rel="next"' in first.headers["link"]
    assert "next" not in rest.headers.get("link", "")


async def test_bad_input_gets_422_and_changes_nothing(github: GitHubStandIn) -> None:
    number = github.create_issue(REPO, "channel: x")
    async with client(github) as gh:
        with pytest.raises(RequestFailed) as empty:
            await gh.rest.issues.async_create_comment(OWNER, NAME, number, body="  ")
    assert empty.value.response.status_code == 422
    assert empty.value.response.json()["message"] == "Validation Failed"
    assert github.comments(REPO, number) == []


async def test_a_comment_longer_than_github_allows_is_refused(github: GitHubStandIn) -> None:
    number = github.create_issue(REPO, "channel: x")
    async with client(github) as gh:
        with pytest.raises(RequestFailed) as too_long:
            await gh.rest.issues.async_create_comment(OWNER, NAME, number, body="x" * 65537)
        fits = await gh.rest.issues.async_create_comment(OWNER, NAME, number, body="x" * 65536)
    assert too_long.value.response.status_code == 422
    assert [c.id for c in github.comments(REPO, number)] == [fits.parsed_data.id]


# -- git data --------------------------------------------------------------------------------


async def test_git_data_commits_a_tree_on_top_of_the_branch(github: GitHubStandIn) -> None:
    async with client(github) as gh:
        git_api = gh.rest.git
        head = (await git_api.async_get_ref(OWNER, NAME, "heads/main")).parsed_data.object_.sha
        base = (await git_api.async_get_commit(OWNER, NAME, head)).parsed_data.tree.sha
        log = await git_api.async_create_blob(
            OWNER, NAME, content=base64.b64encode(b'{"index":0}\n').decode(), encoding="base64"
        )
        tree = await git_api.async_create_tree(
            OWNER,
            NAME,
            base_tree=base,
            tree=[
                {
                    "path": "facts/log.jsonl",
                    "mode": "100644",
                    "type": "blob",
                    "sha": log.parsed_data.sha,
                },
                {
                    "path": "facts/checkpoints/1.note",
                    "mode": "100644",
                    "type": "blob",
                    "content": "note\n",
                },
                {"path": "README.md", "mode": "100644", "type": "blob", "sha": None},
            ],
        )
        commit = await git_api.async_create_commit(
            OWNER, NAME, message="facts: 1 entry", tree=tree.parsed_data.sha, parents=[head]
        )
        moved = await git_api.async_update_ref(
            OWNER, NAME, "heads/main", sha=commit.parsed_data.sha
        )
        listed = await git_api.async_get_tree(OWNER, NAME, "main", recursive="1")
        blob = await git_api.async_get_blob(OWNER, NAME, log.parsed_data.sha)
    assert moved.parsed_data.object_.sha == commit.parsed_data.sha == github.head(REPO)
    assert [p.sha for p in commit.parsed_data.parents] == [head]
    assert commit.parsed_data.author.name == "alice"
    assert github.files_at(REPO, "main") == {
        "facts/log.jsonl": b'{"index":0}\n',
        "facts/checkpoints/1.note": b"note\n",
    }
    paths = [item.path for item in listed.parsed_data.tree]
    assert paths == ["facts", "facts/checkpoints", "facts/checkpoints/1.note", "facts/log.jsonl"]
    assert base64.b64decode(blob.parsed_data.content) == b'{"index":0}\n'
    assert log.parsed_data.sha == object_id("blob", b'{"index":0}\n')


async def test_a_commit_id_is_what_git_commit_tree_gives(
    github: GitHubStandIn, tmp_path: Path
) -> None:
    when = "2026-01-02T03:04:05+02:00"
    who = {"name": "Agora Bridge", "email": "bridge@example.com", "date": when}
    async with client(github) as gh:
        tree = await gh.rest.git.async_create_tree(
            OWNER,
            NAME,
            tree=[{"path": "f.txt", "mode": "100644", "type": "blob", "content": "f\n"}],
        )
        commit = await gh.rest.git.async_create_commit(
            OWNER, NAME, message="root\n", tree=tree.parsed_data.sha, author=who, committer=who
        )
    git(tmp_path, "init", "-q")
    (tmp_path / "f.txt").write_bytes(b"f\n")
    git(tmp_path, "add", ".")
    assert git(tmp_path, "write-tree") == tree.parsed_data.sha
    env = {
        "GIT_AUTHOR_NAME": "Agora Bridge",
        "GIT_AUTHOR_EMAIL": "bridge@example.com",
        "GIT_AUTHOR_DATE": when,
        "GIT_COMMITTER_NAME": "Agora Bridge",
        "GIT_COMMITTER_EMAIL": "bridge@example.com",
        "GIT_COMMITTER_DATE": when,
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    expected = git(tmp_path, "commit-tree", tree.parsed_data.sha, "-m", "root", env=env)
    assert commit.parsed_data.sha == expected


async def test_a_ref_moves_only_forward_unless_forced(github: GitHubStandIn) -> None:
    head = github.head(REPO)
    async with client(github) as gh:
        tree = (await gh.rest.git.async_get_commit(OWNER, NAME, head)).parsed_data.tree.sha
        orphan = await gh.rest.git.async_create_commit(OWNER, NAME, message="orphan", tree=tree)
        with pytest.raises(RequestFailed) as refused:
            await gh.rest.git.async_update_ref(
                OWNER, NAME, "heads/main", sha=orphan.parsed_data.sha
            )
        assert github.head(REPO) == head
        forced = await gh.rest.git.async_update_ref(
            OWNER, NAME, "heads/main", sha=orphan.parsed_data.sha, force=True
        )
        created = await gh.rest.git.async_create_ref(OWNER, NAME, ref="refs/heads/facts", sha=head)
    assert refused.value.response.status_code == 422
    assert refused.value.response.json()["message"] == "Update is not a fast forward"
    assert forced.parsed_data.object_.sha == orphan.parsed_data.sha
    assert created.parsed_data.ref == "refs/heads/facts"


# -- authentication --------------------------------------------------------------------------


async def test_an_expired_token_gets_401(github: GitHubStandIn, clock: Clock) -> None:
    token = github.issue_token("alice", lifetime_s=60)
    async with GitHub(TokenAuthStrategy(token), base_url=github.base_url, auto_retry=False) as gh:
        ok = await gh.rest.issues.async_list_for_repo(OWNER, NAME)
        assert ok.status_code == 200
        clock.advance(61)
        with pytest.raises(RequestFailed) as expired:
            await gh.rest.issues.async_list_for_repo(OWNER, NAME, state="all")
    assert expired.value.response.status_code == 401
    assert expired.value.response.json()["message"] == "Bad credentials"


async def test_an_app_jwt_buys_an_installation_token_that_writes_as_the_bot(
    github: GitHubStandIn, app_key: tuple[str, str]
) -> None:
    private, public = app_key
    github.register_app(APP_ID, public, slug="agora-bridge")
    installation_id = github.install(APP_ID, REPO)
    number = github.create_issue(REPO, "channel: build-coord")
    async with app_client(github, private) as app:
        found = await app.rest.apps.async_get_repo_installation(OWNER, NAME)
        assert found.parsed_data.id == installation_id
        token = await app.rest.apps.async_create_installation_access_token(installation_id)
        assert token.parsed_data.expires_at.endswith("Z")
    async with app_client(github, private, installation_id) as bot:
        made = await bot.rest.issues.async_create_comment(OWNER, NAME, number, body="[agora] hi")
    comment = made.parsed_data
    assert comment.user is not None
    assert (comment.user.login, comment.user.type) == ("agora-bridge[bot]", "Bot")
    assert comment.performed_via_github_app is not None
    assert comment.performed_via_github_app.id == APP_ID


async def test_a_jwt_that_lives_too_long_is_refused(
    github: GitHubStandIn, app_key: tuple[str, str]
) -> None:
    private, public = app_key
    github.register_app(APP_ID, public)
    now = int(time.time())
    forged = jwt.encode({"iss": str(APP_ID), "iat": now, "exp": now + 3600}, private, "RS256")
    async with GitHub(TokenAuthStrategy(forged), base_url=github.base_url, auto_retry=False) as gh:
        with pytest.raises(RequestFailed) as refused:
            await gh.rest.apps.async_get_repo_installation(OWNER, NAME)
    assert refused.value.response.status_code == 401
    assert "too far in the future" in refused.value.response.json()["message"]


async def test_an_installation_sees_only_its_repositories(
    github: GitHubStandIn, app_key: tuple[str, str]
) -> None:
    private, public = app_key
    github.register_app(APP_ID, public)
    github.create_repo("acme/other")
    installation_id = github.install(APP_ID, REPO)
    async with app_client(github, private, installation_id) as bot:
        with pytest.raises(RequestFailed) as hidden:
            await bot.rest.issues.async_list_for_repo("acme", "other")
    assert hidden.value.response.status_code == 404


async def test_a_users_permission_on_a_repository_is_answered_in_githubkits_model(
    github: GitHubStandIn,
) -> None:
    async with client(github) as gh:
        owner = await gh.rest.repos.async_get_collaborator_permission_level(OWNER, NAME, OWNER)
        member = await gh.rest.repos.async_get_collaborator_permission_level(OWNER, NAME, "alice")
        stranger = await gh.rest.repos.async_get_collaborator_permission_level(OWNER, NAME, "bob")
        with pytest.raises(RequestFailed) as nobody:
            await gh.rest.repos.async_get_collaborator_permission_level(OWNER, NAME, "nobody")
    assert [r.parsed_data.permission for r in (owner, member, stranger)] == [
        "admin",
        "write",
        "read",
    ]
    user = member.parsed_data.user
    assert user is not None and user.login == "alice" and user.role_name == "write"
    assert user.permissions and user.permissions.push and not user.permissions.admin
    assert nobody.value.response.status_code == 404


async def test_a_repositorys_name_is_not_case_sensitive(github: GitHubStandIn) -> None:
    number = github.create_issue(REPO, "channel: x", by="alice")
    async with client(github) as gh:
        issue = await gh.rest.issues.async_get(OWNER.upper(), NAME.title(), number)
    assert issue.parsed_data.number == number
    with pytest.raises(GitHubError, match="already exists"):
        github.create_repo(REPO.upper())


def test_a_token_is_taken_from_token_or_bearer_headers() -> None:
    assert credential("token ghp_abc") == credential("Bearer ghp_abc") == "ghp_abc"
    assert credential(None) is None
    with pytest.raises(GitHubError, match="Bad credentials"):
        credential("Basic dXNlcjpwYXNz")


async def test_app_endpoints_answer_in_githubkits_models(
    github: GitHubStandIn, app_key: tuple[str, str]
) -> None:
    private, public = app_key
    github.register_app(APP_ID, public, slug="agora-bridge")
    github.install(APP_ID, REPO)
    github.set_webhook("http://127.0.0.1:9/unreachable", SECRET, app_id=APP_ID)
    await github.drain()
    async with app_client(github, private) as app:
        me = await app.rest.apps.async_get_authenticated()
        listed = await app.rest.apps.async_list_webhook_deliveries()
        one = await app.rest.apps.async_get_webhook_delivery(listed.parsed_data[0].id)
        again = await app.rest.apps.async_redeliver_webhook_delivery(listed.parsed_data[0].id)
    assert me.parsed_data is not None
    assert me.parsed_data.slug == "agora-bridge"
    assert one.parsed_data.event == "ping"
    assert one.parsed_data.request.headers is not None
    assert again.status_code == 202
    again.parsed_data  # noqa: B018 - validating the body is the point


# -- rate limits and faults ------------------------------------------------------------------


async def test_a_spent_primary_limit_gets_403_until_the_reset(
    clock: Clock,
) -> None:
    async with GitHubStandIn(clock=clock, user_rate_limit=2) as github:
        github.add_user("alice")
        github.create_repo(REPO)
        async with client(github, http_cache=False) as gh:
            await gh.rest.issues.async_list_for_repo(OWNER, NAME)
            last = await gh.rest.issues.async_list_for_repo(OWNER, NAME)
            with pytest.raises(PrimaryRateLimitExceeded) as spent:
                await gh.rest.issues.async_list_for_repo(OWNER, NAME)
            clock.advance(3600)
            fresh = await gh.rest.issues.async_list_for_repo(OWNER, NAME)
    assert last.headers["x-ratelimit-remaining"] == "0"
    assert spent.value.response.headers["x-ratelimit-remaining"] == "0"
    assert "API rate limit exceeded for user ID" in spent.value.response.json()["message"]
    assert fresh.headers["x-ratelimit-remaining"] == "1"


async def test_every_response_carries_rate_limit_headers_and_a_304_is_free(
    github: GitHubStandIn,
) -> None:
    number = github.create_issue(REPO, "channel: x")
    async with client(github) as gh:
        first = await gh.rest.issues.async_get(OWNER, NAME, number)
        again = await gh.rest.issues.async_get(OWNER, NAME, number)
    assert again.parsed_data.number == number
    assert first.headers["x-ratelimit-limit"] == "5000"
    assert first.headers["x-ratelimit-resource"] == "core"
    assert int(first.headers["x-ratelimit-reset"]) > time.time()
    assert [r.status for r in github.request_log] == [200, 304]
    assert again.headers["x-ratelimit-used"] == first.headers["x-ratelimit-used"] == "1"


async def test_more_than_80_creations_a_minute_hit_the_secondary_limit(
    github: GitHubStandIn,
) -> None:
    number = github.create_issue(REPO, "channel: flood")
    async with client(github, http_cache=False) as gh:
        for index in range(80):
            await gh.rest.issues.async_create_comment(OWNER, NAME, number, body=f"{index}")
        with pytest.raises(SecondaryRateLimitExceeded) as limited:
            await gh.rest.issues.async_create_comment(OWNER, NAME, number, body="one too many")
    assert limited.value.response.status_code == 403
    assert 0 < limited.value.retry_after.total_seconds() <= 60
    assert "secondary rate limit" in limited.value.response.json()["message"]
    assert len(github.comments(REPO, number)) == 80
    assert github.peak_creations_per_minute() == 80


async def test_injected_rate_limits_and_server_errors_are_answered_in_order(
    github: GitHubStandIn,
) -> None:
    number = github.create_issue(REPO, "channel: faults")
    github.inject(Fault.secondary_rate_limit(retry_after=7, method="POST"))
    github.inject(Fault.too_many_requests(retry_after=3, method="POST"))
    github.inject(Fault.primary_rate_limit(reset_in_s=30, method="POST"))
    github.inject(Fault.server_error(503, method="POST"))
    async with client(github) as gh:
        create = gh.rest.issues.async_create_comment
        with pytest.raises(SecondaryRateLimitExceeded) as secondary:
            await create(OWNER, NAME, number, body="a")
        with pytest.raises(SecondaryRateLimitExceeded) as too_many:
            await create(OWNER, NAME, number, body="b")
        with pytest.raises(PrimaryRateLimitExceeded) as primary:
            await create(OWNER, NAME, number, body="c")
        with pytest.raises(RequestFailed) as unavailable:
            await create(OWNER, NAME, number, body="d")
        ok = await create(OWNER, NAME, number, body="e")
    assert secondary.value.retry_after.total_seconds() == 7
    assert too_many.value.response.status_code == 429
    assert 25 <= primary.value.retry_after.total_seconds() <= 30
    assert unavailable.value.response.status_code == 503
    assert [c.body for c in github.comments(REPO, number)] == [ok.parsed_data.body]


async def test_a_crash_after_apply_keeps_the_write_but_loses_the_answer(
    github: GitHubStandIn, receiver: Receiver
) -> None:
    number = github.create_issue(REPO, "channel: crash")
    github.set_webhook(receiver.url, SECRET)
    github.inject(Fault.crash_after_apply(path=r"/issues/\d+/comments$"))
    async with client(github) as gh:
        with pytest.raises(RequestError):
            await gh.rest.issues.async_create_comment(OWNER, NAME, number, body="did it land?")
    assert [c.body for c in github.comments(REPO, number)] == ["did it land?"]
    announced = parse_webhook("issue_comment", (await receiver.next("issue_comment")).body)
    assert announced.comment.body == "did it land?"


# -- webhooks -------------------------------------------------------------------------------


async def test_each_webhook_kind_is_signed_and_parsed_by_githubkit(
    github: GitHubStandIn, receiver: Receiver
) -> None:
    github.set_webhook(receiver.url, SECRET)
    ping = await receiver.next("ping")
    check_signature(ping)
    assert parse_webhook("ping", ping.body).hook_id == int(ping.headers["X-GitHub-Hook-ID"])
    number = github.create_issue(REPO, "channel: hooks", "body", by="alice")
    comment_id = github.comment(REPO, number, "hello", by="bob")
    github.edit_comment(REPO, comment_id, "hello again")
    github.add_label(REPO, number, "agora:kill", by="alice")
    github.remove_label(REPO, number, "agora:kill", by="alice")
    github.delete_comment(REPO, comment_id, by="alice")
    seen = []
    for _ in range(6):
        got = await receiver.next()
        check_signature(got)
        assert got.headers["User-Agent"].startswith("GitHub-Hookshot/")
        event = parse_webhook(got.event, got.body)
        seen.append((got.event, event.action))
        if got.event == "issue_comment" and event.action == "edited":
            assert event.changes.body.from_ == "hello"
            assert event.comment.author_association == "NONE"
        if got.event == "issues" and event.action == "labeled":
            assert event.label.name == "agora:kill"
            assert event.sender.login == "alice"
    assert seen == [
        ("issues", "opened"),
        ("issue_comment", "created"),
        ("issue_comment", "edited"),
        ("issues", "labeled"),
        ("issues", "unlabeled"),
        ("issue_comment", "deleted"),
    ]


async def test_the_bots_own_comment_and_pull_request_comments_are_announced(
    github: GitHubStandIn, receiver: Receiver, app_key: tuple[str, str]
) -> None:
    private, public = app_key
    github.register_app(APP_ID, public, slug="agora-bridge")
    installation_id = github.install(APP_ID, REPO)
    github.set_webhook(receiver.url, SECRET, app_id=APP_ID)
    await receiver.next("ping")
    pull = github.create_issue(REPO, "a pull request", by="alice", pull_request=True)
    async with app_client(github, private, installation_id) as bot:
        await bot.rest.issues.async_create_comment(OWNER, NAME, pull, body="[agora] mirrored")
    got = await receiver.next("issue_comment")
    check_signature(got)
    event = parse_webhook("issue_comment", got.body)
    assert event.sender.type == "Bot"
    assert event.sender.login == "agora-bridge[bot]"
    assert event.comment.performed_via_github_app is not None
    assert event.comment.performed_via_github_app.id == APP_ID
    assert event.issue.pull_request is not None
    assert event.installation is not None
    assert event.installation.id == installation_id


async def test_a_failed_delivery_is_listed_and_redelivered_under_the_same_guid(
    github: GitHubStandIn, app_key: tuple[str, str]
) -> None:
    private, public = app_key
    github.register_app(APP_ID, public)
    github.install(APP_ID, REPO)
    port = free_port()  # nothing listens here yet: the bridge is down
    github.set_webhook(f"http://127.0.0.1:{port}/hook", SECRET, app_id=APP_ID)
    github.comment(REPO, github.create_issue(REPO, "channel: down"), "while you were out")
    await github.drain()
    receiver = Receiver()
    runner = await serve_receiver(receiver, port)
    try:
        async with app_client(github, private) as app:
            failed = await app.rest.apps.async_list_webhook_deliveries(status="failure")
            missed = [d for d in failed.parsed_data if d.event == "issue_comment"]
            assert [(d.action, d.status_code, d.redelivery) for d in missed] == [
                ("created", 0, False)
            ]
            await app.rest.apps.async_redeliver_webhook_delivery(missed[0].id)
            got = await receiver.next("issue_comment")
            assert got.guid == missed[0].guid
            check_signature(got)
            assert parse_webhook("issue_comment", got.body).comment.body == "while you were out"
            await github.drain()
            listed = await app.rest.apps.async_list_webhook_deliveries(per_page=2)
    finally:
        await runner.cleanup()
    newest = listed.parsed_data[0]
    assert (newest.guid, newest.redelivery, newest.status_code) == (missed[0].guid, True, 200)
    assert 'rel="next"' in listed.headers["link"]


async def test_a_delivery_made_to_fail_is_recorded_failed_and_never_sent(
    github: GitHubStandIn, receiver: Receiver
) -> None:
    github.set_webhook(receiver.url, SECRET)
    await receiver.next("ping")
    number = github.create_issue(REPO, "channel: down", by="alice")
    await receiver.next("issues")
    github.fail_deliveries(event="issues", action="labeled")
    github.add_label(REPO, number, "agora:kill", by="alice")
    github.remove_label(REPO, number, "agora:kill", by="alice")
    await github.drain()
    got = await receiver.next()
    assert (got.event, parse_webhook("issues", got.body).action) == ("issues", "unlabeled")
    failed, sent = github.deliveries[-2:]
    assert (failed.action, failed.status_code, failed.status) == (
        "labeled",
        0,
        "failed to connect to host",
    )
    assert (sent.action, sent.status_code) == ("unlabeled", 200)
    github.redeliver(failed.id)
    again = await receiver.next()
    assert again.guid == failed.guid


async def test_drain_says_the_sender_failed_rather_than_wait_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(self: HookSender, session: object, job: object) -> None:
        raise RuntimeError("the sender broke")

    monkeypatch.setattr(HookSender, "_deliver", broken)
    standin = GitHubStandIn()
    with pytest.raises(RuntimeError, match="not started"):
        await standin.drain()
    await standin.start()
    standin.create_repo(REPO)
    standin.add_user("alice")
    standin.set_webhook("http://127.0.0.1:9/unreachable", SECRET)  # its ping is queued
    standin.create_issue(REPO, "hello", "", by="alice")  # and the issue's event
    with pytest.raises(RuntimeError, match="stopped sending webhooks") as stopped:
        await asyncio.wait_for(standin.drain(), 10)
    assert "the sender broke" in str(stopped.value.__cause__)
    with pytest.raises(RuntimeError, match="the sender broke"):  # a stop says so too
        await standin.stop()
