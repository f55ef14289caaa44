"""The outbound mirror: selected channels, as comments on their linked issues.

For each mirrored channel, the bridge keeps one *status comment* on the linked issue,
edited in place with the conversation's current state (found again after a restart by
its hidden marker, among the bridge's own comments), and posts a new comment for each
decision and each summary an agent announces. Every comment names the act (and so the
fact) it comes from.

However fast the agents talk, the status comment is edited at most once every
``pacing.status_every_s``: many acts coalesce into one edit, none is dropped. New
comments go through the paced writer (:mod:`agora.bridge.github`).

Each post is safe against crashes and against a second bridge process: the right to
post is claimed with a compare-and-set create in the ``agora-bridge`` bucket
(``posting.<act>``, ``status-posting/<owner>/<repo>/<number>/<channel>``), renewed while
the post is on its way, and the comment's id is saved after (``posted.<act>``,
``status/<owner>/<repo>/<number>/<channel>``). A bridge that finds the claim held leaves
the post to its holder and looks for the saved id later. A claim of this process's, one
given up after a failure or a stop, or one not renewed for :data:`CLAIM_STALE_S` (its
holder crashed) is taken over with a compare-and-set, and the comment's marker is looked
for before anything is posted again, so no comment is ever duplicated.

An announcement that cannot be posted (GitHub refused it, NATS was away) is kept and
tried again, from 2 s doubling to 5 minutes, without a restart; a channel's
announcements go out in the order they were said, so the ones after it wait for it. An
issue GitHub answers 404 or 410 for is left alone (logged once) until the channel is
linked to another issue; the status comment is kept per issue, so a relinked channel
gets a status comment of its own on its new issue.

On start the mirror replays each mirrored channel from the beginning (an ordered
consumer), which rebuilds the status and posts whatever was not posted yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from agora.bridge.config import BridgeConfig, IssueRef
from agora.bridge.github import GitHubUnavailable, GitHubWriter, Identity, PostedComment
from agora.bridge.links import Links
from agora.bridge.streams import BRIDGE_BUCKET, Buckets
from agora.core.admission import admit
from agora.core.envelope import Act
from agora.core.errors import AgoraError, InputError
from agora.core.keys import KeyRegistry, Role
from agora.core.spine import STREAM, channel_of, channel_subject
from agora.host.tasks import cancel, cancel_all

log = logging.getLogger(__name__)

RECENT_SHOWN: Final = 5
GONE: Final = frozenset({404, 410})  # what GitHub answers for an issue or comment deleted
PAYLOAD_SHOWN: Final = 160
CLAIM_RENEW_S: Final = 30.0
CLAIM_STALE_S: Final = 120.0  # a claim not renewed for this long was left by a crash
RETRY_FIRST_S: Final = 2.0
RETRY_MAX_S: Final = 300.0


def status_marker(channel: str) -> str:
    return f"<!-- agora:status channel={channel} -->"


def fact_marker(act_id: str) -> str:
    return f"<!-- agora:fact {act_id} -->"


def status_key(issue: IssueRef, channel: str) -> str:
    """Where the id of a channel's status comment on an issue is kept (GitHub's names
    are not case sensitive: the repository's, in lower case)."""
    return f"status/{issue.repo.lower()}/{issue.number}/{channel}"


def status_claim_key(issue: IssueRef, channel: str) -> str:
    return f"status-posting/{issue.repo.lower()}/{issue.number}/{channel}"


@dataclass(slots=True)
class ChannelView:
    """What the status comment shows about one channel."""

    channel: str
    acts: int = 0
    by_act: Counter[str] = field(default_factory=Counter)
    participants: set[str] = field(default_factory=set)
    recent: deque[Act] = field(default_factory=lambda: deque(maxlen=RECENT_SHOWN))
    decisions: list[tuple[str, str, str]] = field(default_factory=list)  # topic, outcome, act

    def add(self, act: Act) -> None:
        self.acts += 1
        self.by_act[act.act.value] += 1
        self.participants.add(act.sender)
        self.recent.append(act)


def announcement(act: Act) -> dict[str, object] | None:
    """The decision or summary an act announces, if it is one."""
    if not act.payload.startswith("{"):
        return None
    try:
        body = json.loads(act.payload)
    except json.JSONDecodeError:
        return None
    if isinstance(body, dict) and body.get("kind") in ("decision", "summary"):
        return body
    return None


def render_status(view: ChannelView) -> str:
    lines = [
        status_marker(view.channel),
        f"### agora: #{view.channel}",
        "",
        f"{view.acts} acts from {len(view.participants)} participants "
        f"({', '.join(f'{n} {a}' for a, n in sorted(view.by_act.items()))}).",
    ]
    if view.decisions:
        topic, outcome, ident = view.decisions[-1]
        lines.append(f"Last decision: {quoted(outcome)} on {quoted(topic)} (act `{ident}`).")
    if view.recent:
        lines += ["", "Latest:", ""]
        lines += [
            f"- `{a.sender}` {a.act.value}: {quoted(a.payload)} (act `{a.id}`)" for a in view.recent
        ]
    last = view.recent[-1].id if view.recent else "none"
    lines += ["", f"<sub>Edited in place by the agora bridge; up to act `{last}`.</sub>"]
    return "\n".join(lines)


def render_announcement(act: Act, body: dict[str, object]) -> str:
    marker = fact_marker(act.id)
    source = (
        f"<sub>From act `{act.id}` by `{act.sender}` on #{act.channel}, "
        "a signed fact in the agora log.</sub>"
    )
    if body.get("kind") == "decision":
        votes = body.get("votes")
        cast = (
            ", ".join(
                f"{quoted(str(name))}: {quoted(str(vote))}" for name, vote in sorted(votes.items())
            )
            if isinstance(votes, dict) and votes
            else "none"
        )
        text = (
            f"### Decision: {quoted(str(body.get('outcome', '')))}\n\n"
            f"Topic: {quoted(str(body.get('topic', '')))}\n\n"
            f"Votes: {cast} (quorum {quoted(str(body.get('quorum', '')))})."
        )
    else:
        text = f"### Summary\n\n{quoted(str(body.get('text', '')), limit=2000)}"
    return f"{marker}\n{text}\n\n{source}"


_DEFUSED: Final = str.maketrans(
    {
        "<": "&lt;",
        ">": "&gt;",
        "&": "&amp;",
        "`": "'",
        "[": "&#91;",
        "]": "&#93;",
        "!": "&#33;",
        "*": "&#42;",
        "_": "&#95;",
        "#": "&#35;",
        "|": "&#124;",
        "\\": "&#92;",
        # the bridge's own quotation marks: text that could close its quote could go
        # on after it with words that read as the bridge's
        "“": '"',
        "”": '"',
    }
)
ZERO_WIDTH_SPACE: Final = "\u200b"
# What GitHub links as it renders, whatever the markup around it, mentions aside: a
# URL's "://", a "www." host, a GH-123 reference. A zero-width space inside leaves the
# same text on screen and nothing for GitHub to match.
_AUTOLINKED: Final = re.compile(r"://|www\.|\bgh-(?=\d)", re.IGNORECASE)


def _unlinked(found: re.Match[str]) -> str:
    return found[0][0] + ZERO_WIDTH_SPACE + found[0][1:]


def quoted(text: str, *, limit: int = PAYLOAD_SHOWN) -> str:
    """Agent text shown on GitHub: cut, on one line, between quotation marks it cannot
    close, with markup, links and mentions defused (no ping, no image, no hidden marker
    can be planted, and no bare URL, ``www.`` host or ``GH-123`` becomes a link)."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[:limit] + "..."
    flat = flat.translate(_DEFUSED).replace("@", "@" + ZERO_WIDTH_SPACE)
    return f"“{_AUTOLINKED.sub(_unlinked, flat)}”"


@dataclass(frozen=True, slots=True)
class Post:
    """A comment to post once: where its claim and its id are kept, how it is found."""

    issue: IssueRef
    marker: str
    body: str
    claim_key: str
    done_key: str
    search_first: bool  # look for the marker even on a fresh claim (an id lost, say)


@dataclass(slots=True)
class Claim:
    """The right to post one comment, held in the bucket at ``revision``."""

    key: str
    revision: int
    inherited: bool  # held before (a crash, a try that failed): it may be on GitHub


@dataclass(frozen=True, slots=True)
class Announcement:
    act: Act
    body: str


@dataclass(slots=True)
class Backoff:
    """When to try again after failures in a row: from ``first_s``, doubling, to ``max_s``."""

    first_s: float
    max_s: float
    failures: int = 0
    due: float = 0.0

    def failed(self, now: float) -> float:
        self.failures += 1
        delay = min(self.first_s * 2.0 ** (self.failures - 1), self.max_s)
        self.due = now + delay
        return delay


@dataclass(slots=True)
class Held:
    """A channel's announcements held back after one could not be posted, in order."""

    items: deque[Announcement]
    backoff: Backoff = field(default_factory=lambda: Backoff(RETRY_FIRST_S, RETRY_MAX_S))


class Mirror:
    def __init__(
        self,
        *,
        js: JetStreamContext,
        writer: GitHubWriter,
        links: Links,
        registry: KeyRegistry,
        config: BridgeConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._buckets = Buckets(js)
        self._writer = writer
        self._links = links
        self._registry = registry
        self._config = config
        self._clock = clock  # wall-clock time, which every bridge process shares
        self._instance = secrets.token_hex(8)  # this process, in the claims it writes
        self._identity: Identity | None = None
        self.views: dict[str, ChannelView] = {c: ChannelView(c) for c in config.mirror}
        self._dirty: set[str] = set()
        self._held: dict[str, Held] = {}
        self._status_retry: dict[str, Backoff] = {}
        self._gone: dict[str, IssueRef] = {}  # channel -> its issue, which GitHub lost
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[object] = []
        self.posted = 0
        self.status_edits = 0

    async def start(self) -> None:
        for channel in self._config.mirror:
            self._subscriptions.append(
                await self._js.subscribe(
                    channel_subject(channel),
                    stream=STREAM,
                    ordered_consumer=True,
                    idle_heartbeat=1.0,  # a lost server is noticed in three heartbeats
                    deliver_policy=DeliverPolicy.ALL,
                    config=ConsumerConfig(),
                    cb=self._queue.put,
                )
            )
        self._tasks = [
            asyncio.create_task(self._consume(), name="bridge-mirror"),
            asyncio.create_task(self._refresh(), name="bridge-status"),
        ]

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()  # type: ignore[attr-defined]
        await cancel_all(self._tasks)

    def idle(self) -> bool:
        return self._queue.empty() and not self._dirty and not self._held

    # -- acts in, announcements out -----------------------------------------------------

    async def _consume(self) -> None:
        while True:
            message = await self._next_message()
            if message is not None:
                try:
                    await self._take(message)
                except Exception:
                    log.exception("mirror: could not mirror a message on %s", message.subject)
            await self._retry_held()

    async def _next_message(self) -> Msg | None:
        """The next message; None when held announcements are due to be tried first."""
        with contextlib.suppress(asyncio.QueueEmpty):
            return self._queue.get_nowait()
        due = min((held.backoff.due for held in self._held.values()), default=None)
        if due is None:
            return await self._queue.get()
        try:
            async with asyncio.timeout(max(due - _monotonic(), 0)):
                return await self._queue.get()
        except TimeoutError:
            return None

    async def _take(self, message: Msg) -> None:
        try:
            channel = channel_of(message.subject)
            verified = admit(message.data, self._registry, channel=channel)
        except InputError:
            return  # not a fact: the recorder records the refusal
        fact = verified.fact
        if not isinstance(fact, Act) or channel not in self.views:
            return
        self.views[channel].add(fact)
        self._dirty.add(channel)
        # Only an agent announces decisions and summaries: JSON typed by a person (and
        # injected by the bridge) is just text.
        body = announcement(fact) if verified.signer.role is Role.AGENT else None
        if body is None:
            return
        if body.get("kind") == "decision":
            self.views[channel].decisions.append(
                (str(body.get("topic", "")), str(body.get("outcome", "")), fact.id)
            )
        await self._announce(channel, Announcement(fact, render_announcement(fact, body)))

    async def _announce(self, channel: str, item: Announcement) -> None:
        held = self._held.get(channel)
        if held is not None:
            held.items.append(item)  # behind those held back: in the order they were said
            return
        self._held[channel] = Held(deque([item]))
        await self._post_held(channel)

    async def _retry_held(self) -> None:
        now = _monotonic()
        for channel in [c for c, held in self._held.items() if held.backoff.due <= now]:
            await self._post_held(channel)

    async def _post_held(self, channel: str) -> None:
        """Post a channel's held announcements in order, up to the first that cannot go."""
        held = self._held[channel]
        while held.items:
            act = held.items[0].act
            try:
                done = await self._post_announcement(channel, held.items[0])
            except Exception as exc:
                delay = held.backoff.failed(_monotonic())
                log.warning(
                    "mirror: the announcement in act %s on %s was not posted (%s); "
                    "trying again in %.0f s",
                    act.id,
                    channel,
                    exc,
                    delay,
                    exc_info=_unexpected(exc),
                )
                return
            if not done:  # another bridge is posting it, or its issue is gone
                held.backoff.failed(_monotonic())
                return
            held.items.popleft()
            held.backoff = Backoff(RETRY_FIRST_S, RETRY_MAX_S)
        del self._held[channel]

    async def _post_announcement(self, channel: str, item: Announcement) -> bool:
        """Post one announcement to its channel's issue; False: not now (held back)."""
        issue = await self._links_issue(channel)
        if issue is None:
            return True  # linked to no issue: nothing to post
        if self._is_gone(channel, issue):
            return False
        ident = item.act.id
        post = Post(
            issue, fact_marker(ident), item.body, f"posting.{ident}", f"posted.{ident}", False
        )
        try:
            posted = await self._post_once(post)
        except GitHubUnavailable as exc:
            if exc.status not in GONE:
                raise
            self._mark_gone(channel, issue, exc)
            return False
        if posted is None:
            return False
        if posted[1]:
            self.posted += 1
        return True

    async def _links_issue(self, channel: str) -> IssueRef | None:
        return (await self._links.issues()).get(channel)

    def _is_gone(self, channel: str, issue: IssueRef) -> bool:
        gone = self._gone.get(channel)
        if gone is not None and not _same_issue(gone, issue):
            del self._gone[channel]  # linked to another issue since
            log.info("mirror: %s is linked to %s now; mirrored there", channel, issue)
            return False
        return gone is not None

    def _mark_gone(self, channel: str, issue: IssueRef, exc: GitHubUnavailable) -> None:
        gone = self._gone.get(channel)
        if gone is None or not _same_issue(gone, issue):
            log.warning(
                "mirror: GitHub answered %s for %s (deleted, or out of reach): %s is not "
                "mirrored there until it is linked to another issue",
                exc.status,
                issue,
                channel,
            )
        self._gone[channel] = issue

    # -- posting once, whoever else is posting ------------------------------------------

    async def _post_once(self, post: Post) -> tuple[int, bool] | None:
        """The comment's id and whether it was posted now; None when another bridge
        holds the claim (its id is looked for later)."""
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        done = await _saved_id(bucket, post.done_key)
        if done is not None:
            return done, False
        claim = await self._claim(bucket, post.claim_key)
        if claim is None:
            return None
        try:
            async with self._renewing(bucket, claim):
                found, created = await self._find_or_create(post, search=claim.inherited)
                await bucket.put(post.done_key, str(found.id).encode())
        except BaseException:
            await self._abandon(bucket, claim)
            raise
        with contextlib.suppress(APIError):  # renewed or taken over meanwhile: left as is
            await bucket.delete(claim.key, last=claim.revision)
        return found.id, created

    async def _find_or_create(self, post: Post, *, search: bool) -> tuple[PostedComment, bool]:
        """The comment, looked for first if it may be there; and whether it is new."""
        repo, number = post.issue.repo, post.issue.number
        author = await self._author()
        if post.search_first or search:
            found = await self._writer.find_comment(repo, number, post.marker, author=author)
            if found is not None:
                return found, False
        posted = await self._writer.create_comment(
            repo, number, post.body, post.marker, author=author
        )
        return posted, True

    async def _abandon(self, bucket: KeyValue, claim: Claim) -> None:
        """Leave a claim whose post failed or was stopped, the comment perhaps on GitHub:
        whoever comes next (this process too) takes it over at once, and looks first."""
        abandoned = json.dumps({"by": self._instance, "at": 0}).encode()
        with contextlib.suppress(Exception):
            await bucket.update(claim.key, abandoned, last=claim.revision)

    async def _claim(self, bucket: KeyValue, key: str) -> Claim | None:
        """The right to post, claimed by compare-and-set; None if another bridge has it."""
        mine = self._claim_value()
        try:
            return Claim(key, await bucket.create(key, mine), inherited=False)
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await bucket.get(key)
        except KeyNotFoundError:
            return None  # released just now: its id is saved
        if not self._may_take_over(entry.value or b""):
            return None
        try:
            revision = await bucket.update(key, mine, last=entry.revision)
        except KeyWrongLastSequenceError:
            return None  # another bridge took it over first
        return Claim(key, revision, inherited=True)

    def _claim_value(self) -> bytes:
        return json.dumps({"by": self._instance, "at": self._clock()}).encode()

    def _may_take_over(self, value: bytes) -> bool:
        """A claim is this process's own (a try that failed), names no holder and time
        (left by an older bridge), or was not renewed in time (its holder crashed)."""
        try:
            holder = json.loads(value)
            by, at = str(holder["by"]), float(holder["at"])
        except (ValueError, KeyError, TypeError):
            return True
        return by == self._instance or self._clock() - at > CLAIM_STALE_S

    @contextlib.asynccontextmanager
    async def _renewing(self, bucket: KeyValue, claim: Claim) -> AsyncIterator[None]:
        """Keep a claim fresh while its post is on the way (pacing may hold it long)."""
        task = asyncio.create_task(self._renew(bucket, claim), name="bridge-claim")
        try:
            yield
        finally:
            await cancel(task)

    async def _renew(self, bucket: KeyValue, claim: Claim) -> None:
        while True:
            await asyncio.sleep(CLAIM_RENEW_S)
            try:
                claim.revision = await bucket.update(
                    claim.key, self._claim_value(), last=claim.revision
                )
            except KeyWrongLastSequenceError:
                log.warning("mirror: another bridge took over %s", claim.key)
                return
            except Exception as exc:  # NATS away for a while: the post goes on
                log.warning("mirror: %s not renewed (%s)", claim.key, exc)

    async def _author(self) -> Identity:
        """The bridge on GitHub, whose comments alone are looked at for a marker."""
        if self._identity is None:
            app = self._config.app
            login, app_id = self._config.login, (None if app is None else app.app_id)
            if login is None and app_id is None:
                login = await self._writer.authenticated_login()
            self._identity = Identity(login=login, app_id=app_id)
        return self._identity

    # -- the status comment -------------------------------------------------------------

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._config.status_every_s)
            for channel in sorted(self._dirty):
                backoff = self._status_retry.get(channel)
                if backoff is not None and backoff.due > _monotonic():
                    continue
                self._dirty.discard(channel)
                try:
                    await self._edit_status(channel)
                except Exception as exc:
                    self._dirty.add(channel)
                    backoff = self._status_retry.setdefault(
                        channel, Backoff(self._config.status_every_s, RETRY_MAX_S)
                    )
                    delay = backoff.failed(_monotonic())
                    log.warning(
                        "mirror: the status of %s was not updated (%s); trying again in %.0f s",
                        channel,
                        exc,
                        delay,
                        exc_info=_unexpected(exc),
                    )
                else:
                    self._status_retry.pop(channel, None)

    async def _edit_status(self, channel: str) -> None:
        issue = await self._links_issue(channel)
        if issue is None:
            return
        if self._is_gone(channel, issue):
            self._dirty.add(channel)  # looked at again once linked to another issue
            return
        try:
            await self._write_status(issue, channel, render_status(self.views[channel]))
        except GitHubUnavailable as exc:
            if exc.status not in GONE:
                raise
            self._mark_gone(channel, issue, exc)
            self._dirty.add(channel)

    async def _write_status(self, issue: IssueRef, channel: str, body: str) -> None:
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        key = status_key(issue, channel)
        comment_id = await _saved_id(bucket, key)
        if comment_id is None:
            claim_key = status_claim_key(issue, channel)
            posted = await self._post_once(
                Post(issue, status_marker(channel), body, claim_key, key, search_first=True)
            )
            if posted is None:
                self._dirty.add(channel)  # another bridge is posting it: edited next time
                return
            comment_id, created = posted
            if created:
                self.status_edits += 1
                return
        try:
            await self._writer.update_comment(issue.repo, comment_id, body)
        except GitHubUnavailable as exc:
            if exc.status not in GONE:
                raise
            await _forget(bucket, key, comment_id)  # someone deleted it: a new one next time
            self._dirty.add(channel)
            return
        self.status_edits += 1


async def _saved_id(bucket: KeyValue, key: str) -> int | None:
    """The comment id saved under ``key``, or None."""
    try:
        entry = await bucket.get(key)
    except KeyNotFoundError:
        return None
    try:
        return int((entry.value or b"").decode())
    except ValueError:
        return None


async def _forget(bucket: KeyValue, key: str, comment_id: int) -> None:
    """Delete ``key`` if it still holds ``comment_id`` (another bridge may have moved on)."""
    with contextlib.suppress(KeyNotFoundError):
        entry = await bucket.get(key)
        if (entry.value or b"") == str(comment_id).encode():
            with contextlib.suppress(APIError):
                await bucket.delete(key, last=entry.revision)


def _same_issue(one: IssueRef, other: IssueRef) -> bool:
    return one.number == other.number and one.repo.lower() == other.repo.lower()


def _monotonic() -> float:
    return asyncio.get_running_loop().time()


def _unexpected(exc: BaseException) -> bool:
    """Whether a failure deserves its stack trace in the log (ours, not GitHub's or NATS's)."""
    return not isinstance(exc, AgoraError | NatsError | OSError | TimeoutError)
