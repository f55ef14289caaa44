"""The outbound mirror: selected channels, as comments on their linked issues.

For each mirrored channel, the bridge keeps one *status comment* on the linked issue,
edited in place with the conversation's current state (found again after a restart by
its hidden marker), and posts a new comment for each decision and each summary an
agent announces. Every comment names the act (and so the fact) it comes from.

However fast the agents talk, the status comment is edited at most once every
``pacing.status_every_s``: many acts coalesce into one edit, none is dropped. New
comments go through the paced writer (:mod:`agora.bridge.github`).

Each post is crash-safe: an intent is saved before posting and the comment's id after;
an intent without an id (a crash in between) makes the bridge look for the comment's
marker before it posts again, so no comment is ever duplicated.

On start the mirror replays each mirrored channel from the beginning (an ordered
consumer), which rebuilds the status and posts whatever was not posted yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Final

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError

from agora.bridge.config import BridgeConfig, IssueRef
from agora.bridge.github import GitHubUnavailable, GitHubWriter
from agora.bridge.links import Links
from agora.bridge.streams import BRIDGE_BUCKET, Buckets
from agora.core.admission import admit
from agora.core.envelope import Act
from agora.core.errors import InputError
from agora.core.keys import KeyRegistry, Role
from agora.core.spine import STREAM, channel_of, channel_subject

log = logging.getLogger(__name__)

RECENT_SHOWN: Final = 5
NOT_FOUND: Final = 404
PAYLOAD_SHOWN: Final = 160


def status_marker(channel: str) -> str:
    return f"<!-- agora:status channel={channel} -->"


def fact_marker(act_id: str) -> str:
    return f"<!-- agora:fact {act_id} -->"


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
    }
)


def quoted(text: str, *, limit: int = PAYLOAD_SHOWN) -> str:
    """Agent text shown on GitHub: cut, on one line, with markup, links and mentions
    defused (no ping, no image, no hidden marker can be planted)."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[:limit] + "..."
    flat = flat.translate(_DEFUSED).replace("@", "@\u200b")
    return f"“{flat}”"


class Mirror:
    def __init__(
        self,
        *,
        js: JetStreamContext,
        writer: GitHubWriter,
        links: Links,
        registry: KeyRegistry,
        config: BridgeConfig,
    ) -> None:
        self._js = js
        self._buckets = Buckets(js)
        self._writer = writer
        self._links = links
        self._registry = registry
        self._config = config
        self.views: dict[str, ChannelView] = {c: ChannelView(c) for c in config.mirror}
        self._dirty: set[str] = set()
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
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def idle(self) -> bool:
        return self._queue.empty() and not self._dirty

    async def _consume(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self._take(message)
            except Exception:
                log.exception("mirror: could not mirror a message on %s", message.subject)

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
        issue = await self._links_issue(channel)
        if issue is not None:
            await self._post_once(issue, fact, render_announcement(fact, body))

    async def _links_issue(self, channel: str) -> IssueRef | None:
        return (await self._links.issues()).get(channel)

    async def _post_once(self, issue: IssueRef, act: Act, body: str) -> None:
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        posted_key, intent_key = f"posted.{act.id}", f"posting.{act.id}"
        with contextlib.suppress(KeyNotFoundError):
            await bucket.get(posted_key)
            return
        found = None
        with contextlib.suppress(KeyNotFoundError):
            await bucket.get(intent_key)  # a crash came between posting and recording
            found = await self._writer.find_comment(issue.repo, issue.number, fact_marker(act.id))
        if found is None:
            await bucket.put(intent_key, b"1")
            found = await self._writer.create_comment(
                issue.repo, issue.number, body, fact_marker(act.id)
            )
            self.posted += 1
        await bucket.put(posted_key, str(found.id).encode())

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._config.status_every_s)
            for channel in sorted(self._dirty):
                self._dirty.discard(channel)
                try:
                    await self._edit_status(channel)
                except Exception:
                    self._dirty.add(channel)
                    log.exception("mirror: the status of %s was not updated", channel)

    async def _edit_status(self, channel: str) -> None:
        issue = await self._links_issue(channel)
        if issue is None:
            return
        body = render_status(self.views[channel])
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        key = f"status.{channel}"
        comment_id: int | None = None
        with contextlib.suppress(KeyNotFoundError):
            entry = await bucket.get(key)
            comment_id = int((entry.value or b"0").decode())
        if comment_id is None:
            found = await self._writer.find_comment(
                issue.repo, issue.number, status_marker(channel)
            )
            if found is None:
                found = await self._writer.create_comment(
                    issue.repo, issue.number, body, status_marker(channel)
                )
                await bucket.put(key, str(found.id).encode())
                self.status_edits += 1
                return
            comment_id = found.id
            await bucket.put(key, str(comment_id).encode())
        try:
            await self._writer.update_comment(issue.repo, comment_id, body)
        except GitHubUnavailable as exc:
            if exc.status != NOT_FOUND:
                raise
            await bucket.delete(key)  # someone deleted it: post a new one next time
            self._dirty.add(channel)
            return
        self.status_edits += 1
