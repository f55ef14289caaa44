"""``GitHubStandIn``: a local GitHub on loopback, and the hands of the humans who use it.

Start it, point githubkit at ``base_url``, and act as people do on github.com: open
issues, comment, edit, delete, label. Those actions go through the same state
transitions and webhooks as the REST API's, but cost no rate limit and are not in the
request log (they come from the web, not from a token).

::

    async with GitHubStandIn() as github:
        github.add_user("alice", association="MEMBER")
        github.create_repo("acme/widgets")
        number = github.create_issue("acme/widgets", "channel: build-coord", by="alice")
        token = github.issue_token("alice")
        client = GitHub(TokenAuthStrategy(token), base_url=github.base_url)
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Final, Self

from aiohttp import web

from agora.bridge.standin import payloads
from agora.bridge.standin.app import build_app
from agora.bridge.standin.engine import DEFAULT_HOOK_EVENTS, Engine, RequestRecord
from agora.bridge.standin.faults import Fault
from agora.bridge.standin.hooks import Unreachable
from agora.bridge.standin.limits import (
    CREATIONS_PER_HOUR,
    CREATIONS_PER_MINUTE,
    INSTALLATION_LIMIT_PER_HOUR,
    USER_LIMIT_PER_HOUR,
    peak_per_window,
)
from agora.bridge.standin.state import (
    DEFAULT_TOKEN_LIFETIME_S,
    Actor,
    App,
    Association,
    Comment,
    Delivery,
    GitHubError,
    Repo,
    User,
    UserType,
    World,
)
from agora.host.tasks import cancel

README_TEMPLATE: Final = "# {name}\n"


class GitHubStandIn:
    """A stateful GitHub on loopback: REST for the bridge, methods for the people.

    ``clock`` (seconds since the epoch) drives token expiry, rate-limit windows and
    timestamps, so a test can move time instead of sleeping; App JWTs are still judged
    against it, so move it by less than their nine minutes when an app is in play.
    The limits default to GitHub's; lower them to reach them quickly.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        user_rate_limit: int = USER_LIMIT_PER_HOUR,
        installation_rate_limit: int = INSTALLATION_LIMIT_PER_HOUR,
        creations_per_minute: int = CREATIONS_PER_MINUTE,
        creations_per_hour: int = CREATIONS_PER_HOUR,
        installation_token_lifetime_s: float = DEFAULT_TOKEN_LIFETIME_S,
        hook_timeout_s: float = 10.0,
    ) -> None:
        self._engine = Engine(
            clock=clock,
            user_limit=user_rate_limit,
            installation_limit=installation_rate_limit,
            creations_per_minute=creations_per_minute,
            creations_per_hour=creations_per_hour,
            hook_timeout_s=hook_timeout_s,
        )
        self._token_lifetime_s = installation_token_lifetime_s
        self._runner: web.AppRunner | None = None
        self._sender: asyncio.Task[None] | None = None
        self.base_url = ""

    # -- life cycle ---------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port) and start sending webhooks."""
        if self._runner is not None:
            raise RuntimeError("the stand-in is already running")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{bound}"
        self._engine.urls = payloads.Urls(self.base_url, self.base_url)
        runner = web.AppRunner(build_app(self._engine), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self._sender = asyncio.create_task(self._engine.sender.run(), name="standin-webhooks")
        return self.base_url

    async def stop(self) -> None:
        """Stop serving and sending; undelivered webhooks are dropped. Raises what the
        sender failed with, if it did, once the server is stopped too."""
        sender, self._sender = self._sender, None
        try:
            await cancel(sender)
        finally:
            runner, self._runner = self._runner, None
            if runner is not None:
                await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def drain(self) -> None:
        """Wait until every webhook queued so far has been attempted (needs ``start``).
        Raises RuntimeError if the stand-in is not sending (never started, stopped, or
        its sender failed, with that failure as the cause), rather than wait for good."""
        sender = self._sender
        if sender is None:
            raise RuntimeError("the stand-in sends no webhooks: it is not started")
        drained = asyncio.ensure_future(self._engine.sender.drain())
        try:
            await asyncio.wait({drained, sender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()  # nothing if it is done
        if drained.done() and not drained.cancelled():
            return
        failure = None if sender.cancelled() else sender.exception()
        raise RuntimeError("the stand-in stopped sending webhooks") from failure

    # -- people, repositories, apps --------------------------------------------------------

    @property
    def world(self) -> World:
        return self._engine.world

    def add_user(
        self,
        login: str,
        *,
        type: UserType = "User",
        association: Association = "MEMBER",
        name: str | None = None,
    ) -> User:
        """A user whose ``author_association`` is ``association`` on every repository."""
        return self.world.add_user(login, type=type, association=association, name=name)

    def set_association(self, repo: str, login: str, association: Association) -> None:
        self.world.repo(repo).associations[self.world.user(login).login] = association

    def create_repo(self, full_name: str, *, files: Mapping[str, bytes] | None = None) -> Repo:
        """A repository with one commit on ``main`` (a README, or ``files``)."""
        name = full_name.partition("/")[2]
        initial = (
            files
            if files is not None
            else {"README.md": README_TEMPLATE.format(name=name).encode()}
        )
        return self.world.create_repo(full_name, now=self._engine.clock(), files=initial)

    def register_app(
        self,
        app_id: int,
        public_key_pem: bytes | str,
        *,
        slug: str = "agora-bridge",
        name: str | None = None,
        owner: str | None = None,
        token_lifetime_s: float | None = None,
    ) -> App:
        """A GitHub App whose JWTs verify with ``public_key_pem``; its bot is ``SLUG[bot]``."""
        pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        owner_user = self.world.user(owner) if owner else self._any_owner(slug)
        return self.world.register_app(
            app_id,
            pem,
            slug=slug,
            name=name or slug,
            owner=owner_user,
            now=self._engine.clock(),
            token_lifetime_s=token_lifetime_s or self._token_lifetime_s,
        )

    def _any_owner(self, slug: str) -> User:
        login = f"{slug}-owner"
        return self.world.users.get(login) or self.world.add_user(login, type="Organization")

    def install(self, app_id: int, repo: str) -> int:
        """Install the app on ``repo``; the installation's id."""
        app = self._app(app_id)
        return self.world.install(app, self.world.repo(repo), now=self._engine.clock()).id

    def _app(self, app_id: int) -> App:
        if app_id not in self.world.apps:
            raise GitHubError(404, f"no app {app_id}: register it with register_app first")
        return self.world.apps[app_id]

    def issue_token(self, owner: str | int, *, lifetime_s: float | None = None) -> str:
        """A token for a user (login) or an installation (id); ``lifetime_s`` None: no expiry.

        An installation token defaults to the app's token lifetime.
        """
        now = self._engine.clock()
        if isinstance(owner, int):
            installation = self.world.installations.get(owner)
            if installation is None:
                raise GitHubError(404, f"no installation {owner}")
            lifetime = lifetime_s if lifetime_s is not None else installation.app.token_lifetime_s
            return self.world.issue_token(
                installation=installation, now=now, lifetime_s=lifetime
            ).value
        return self.world.issue_token(
            user=self.world.user(owner), now=now, lifetime_s=lifetime_s
        ).value

    def set_webhook(
        self,
        url: str,
        secret: str,
        *,
        app_id: int | None = None,
        events: tuple[str, ...] = DEFAULT_HOOK_EVENTS,
    ) -> int:
        """Deliver events to ``url`` signed with ``secret``; sends a ``ping`` first.

        With ``app_id`` it is the app's webhook: it hears only about repositories the app
        is installed on, its payloads carry ``installation``, and its deliveries are
        listed by ``GET /app/hook/deliveries``. Without, it hears about every repository.
        """
        app = self._app(app_id) if app_id is not None else None
        return self._engine.add_hook(url, secret, events=events, app=app).id

    # -- acting as people on github.com --------------------------------------------------------

    def _actor(self, repo: Repo, by: str | None) -> Actor:
        return Actor(self.world.user(by) if by else repo.owner)

    def create_issue(
        self,
        repo: str,
        title: str,
        body: str | None = "",
        *,
        by: str | None = None,
        labels: tuple[str, ...] = (),
        pull_request: bool = False,
    ) -> int:
        """Open an issue (or a pull request) as ``by``; its number."""
        where = self.world.repo(repo)
        issue, happenings = self.world.create_issue(
            where,
            title=title,
            body=body,
            actor=self._actor(where, by),
            now=self._engine.clock(),
            labels=labels,
            pull_request=pull_request,
        )
        self._engine.publish(happenings)
        return issue.number

    def comment(self, repo: str, number: int, body: str, *, by: str | None = None) -> int:
        """Comment on an issue or pull request as ``by``; the comment's id."""
        where = self.world.repo(repo)
        issue = self.world.issue(where, number)
        comment, happenings = self.world.add_comment(
            where, issue, body=body, actor=self._actor(where, by), now=self._engine.clock()
        )
        self._engine.publish(happenings)
        return comment.id

    def edit_comment(self, repo: str, comment_id: int, body: str, *, by: str | None = None) -> None:
        where = self.world.repo(repo)
        comment = self.world.comment(where, comment_id)
        actor = self._actor(where, by or comment.user.login)
        self._engine.publish(
            self.world.edit_comment(
                where, comment, body=body, actor=actor, now=self._engine.clock()
            )
        )

    def delete_comment(self, repo: str, comment_id: int, *, by: str | None = None) -> None:
        where = self.world.repo(repo)
        comment = self.world.comment(where, comment_id)
        actor = self._actor(where, by or comment.user.login)
        self._engine.publish(self.world.delete_comment(where, comment, actor=actor))

    def add_label(self, repo: str, number: int, name: str, *, by: str | None = None) -> None:
        where = self.world.repo(repo)
        issue = self.world.issue(where, number)
        actor = self._actor(where, by)
        self._engine.publish(
            self.world.add_labels(where, issue, [name], actor=actor, now=self._engine.clock())
        )

    def remove_label(self, repo: str, number: int, name: str, *, by: str | None = None) -> None:
        where = self.world.repo(repo)
        issue = self.world.issue(where, number)
        actor = self._actor(where, by)
        self._engine.publish(
            self.world.remove_label(where, issue, name, actor=actor, now=self._engine.clock())
        )

    # -- looking at what happened ----------------------------------------------------------

    def comments(self, repo: str, number: int) -> list[Comment]:
        """The comments on an issue, oldest first."""
        full_name = self.world.repo(repo).full_name
        found = [
            c
            for c in self.world.comments.values()
            if c.repo == full_name and c.issue_number == number
        ]
        return sorted(found, key=lambda comment: comment.id)

    def labels(self, repo: str, number: int) -> list[str]:
        return [label.name for label in self.world.issue(self.world.repo(repo), number).labels]

    def head(self, repo: str, branch: str = "main") -> str:
        """The commit a branch points at."""
        where = self.world.repo(repo)
        ref = f"refs/heads/{branch}"
        if ref not in where.refs:
            raise GitHubError(404, f"{repo} has no branch {branch!r}")
        return where.refs[ref]

    def files_at(self, repo: str, ref: str = "main") -> dict[str, bytes]:
        """Every file in the tree of ``ref`` (a branch, ``refs/...`` or a commit id)."""
        where = self.world.repo(repo)
        sha = where.refs.get(ref) or where.refs.get(f"refs/heads/{ref}") or ref
        if where.store.kind(sha) != "commit":
            raise GitHubError(404, f"{repo} has no ref or commit {ref!r}")
        return where.store.files(where.store.commit(sha).tree)

    @property
    def request_log(self) -> list[RequestRecord]:
        return self._engine.log

    @property
    def deliveries(self) -> list[Delivery]:
        return self.world.deliveries

    def redeliver(self, delivery_id: int) -> None:
        """Send a recorded delivery again, under the same GUID (as the deliveries API does)."""
        found = [d for d in self.world.deliveries if d.id == delivery_id]
        if not found:
            raise GitHubError(404, f"no delivery {delivery_id}")
        self._engine.redeliver(found[0])

    def creations(self, caller: str | None = None) -> list[float]:
        """When content-creating requests were let through, of all callers or of one.

        A caller is its rate-limit bucket: ``"user:ID"`` or ``"installation:ID"``.
        """
        return [
            r.time
            for r in self._engine.log
            if r.creation and (caller is None or r.caller == caller)
        ]

    def peak_creations_per_minute(self, caller: str | None = None) -> int:
        return peak_per_window(self.creations(caller))

    # -- failures ---------------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Answer the next matching request(s) with ``fault`` instead of (or after) GitHub."""
        self._engine.faults.add(fault)

    def fail_deliveries(
        self, times: int = 1, *, event: str | None = None, action: str | None = None
    ) -> None:
        """The next ``times`` webhook deliveries of ``event`` with ``action`` (None: any)
        fail as if their target could not be reached, though it runs: recorded with
        status code 0, as GitHub records one, and never sent (GitHub does not retry
        them; :meth:`redeliver` sends one again)."""
        self._engine.sender.fail(Unreachable(event, action, times))

    @property
    def pending_faults(self) -> list[Fault]:
        return [fault for fault, _ in self._engine.faults.pending]
