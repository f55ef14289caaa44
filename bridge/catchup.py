"""Catching up: nothing said or labelled on a linked issue while the bridge was away is
lost, and nothing said before the issue was linked becomes an act.

At start, and then every :data:`CATCH_UP_EVERY_S` while it runs, the bridge reads, for
each repository with linked issues, what changed since the earliest of their
watermarks: GitHub never retries a delivery that failed (the bridge down or busy, NATS
out of reach), so this is how a missed one is found.

- The label events first (:meth:`~agora.bridge.github.GitHubWriter.issue_events`: one
  listing, newest first, read back to the watermark), so that a kill missed is in force
  before any comment caught up reaches its channel. Each kill label or link label added
  or removed on a linked issue at or after the link was made goes to the inbound worker,
  oldest first, and is judged exactly as its webhook would be
  (:meth:`~agora.bridge.inbound.InboundWorker.label_listed`): the sender's permission on
  their own event, the order by GitHub's clock, and once, whichever way it came. A link
  label on an issue not linked is not looked for.
- Then the comments updated since then
  (:meth:`~agora.bridge.github.GitHubWriter.comment_pages`: each request starts from
  the last comment seen, so a comment deleted meanwhile cannot shift another out of
  sight). Each comment made on a linked issue at or after the link was made
  (:class:`~agora.bridge.links.Link`) goes to the inbound worker exactly as a webhook
  would (:meth:`~agora.bridge.inbound.InboundWorker.comment_seen`); one already handled
  is recognised by its id, so nothing is injected twice, whichever way it came, and an
  old comment edited later is listed but never injected.

Then each issue's watermark moves up to GitHub's clock when the listings began, less
:data:`WATERMARK_MARGIN`, so the next pass reads only what changed since.

A repository or linked issue that GitHub answers 404 or 410 for (deleted, transferred)
is said once in the log and skipped; any other failure skips that repository for this
pass only. Neither stops the others.

With a GitHub App, at start it also asks GitHub to redeliver the deliveries that failed
while it was away, oldest first, so that comment edits and deletions are not lost
either, and a comment deleted while the bridge was away arrives after its creation. A
delivery any attempt of which succeeded is not asked again; a redelivery GitHub refuses
is logged and the others are still asked. A token cannot list an App's deliveries, so
with a token those edits and deletions are not caught up; comments and labels are.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from githubkit import AppAuthStrategy, GitHub
from githubkit.cache import MemCacheStrategy
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from agora.bridge.config import BridgeConfig, IssueRef
from agora.bridge.github import (
    CommentPage,
    GitHubUnavailable,
    GitHubWriter,
    IssueEvents,
    from_stamp,
    to_stamp,
)
from agora.bridge.inbound import InboundWorker, SeenComment, author_of, present
from agora.bridge.labels import LabelChange, Sender
from agora.bridge.links import Link, Links, watermark_key
from agora.bridge.streams import BRIDGE_BUCKET, DELIVERIES_BUCKET, Buckets
from agora.bridge.webhook import HANDLED_EVENTS

log = logging.getLogger(__name__)

CATCH_UP_EVERY_S: Final = 300.0
WATERMARK_MARGIN: Final = timedelta(minutes=5)  # a comment or event GitHub lists a little late
GONE: Final = frozenset({404, 410})
GHOST: Final = Sender("ghost", "User")  # GitHub's stand-in for a deleted account
REDELIVERY_WINDOW: Final = timedelta(days=3)
MAX_DELIVERY_PAGES: Final = 10
OK_STATUS: Final = range(200, 300)


@dataclass(frozen=True, slots=True)
class Start:
    """Where an issue's catch-up starts: the link's time, and its watermark."""

    linked_at: datetime
    since: datetime


@dataclass(slots=True)
class Listing:
    """What a listing of a repository's comments has shown so far."""

    since: datetime
    github_time: datetime | None = None  # GitHub's clock at the first page
    newest: datetime | None = None  # the latest update among the comments
    complete: bool = False

    def saw(self, page: CommentPage) -> None:
        self.github_time = self.github_time or page.github_time
        self.complete = page.last
        for comment in page.comments:
            updated: datetime = comment.updated_at
            self.newest = updated if self.newest is None else max(self.newest, updated)

    def watermark(self) -> datetime:
        """Up to when every comment is read: GitHub's clock at the start, less the
        margin, if every page was read; else the latest update seen."""
        if self.complete and self.github_time is not None:
            return self.github_time - WATERMARK_MARGIN
        return self.newest or self.since


@dataclass(slots=True)
class Pass:
    """One pass over a repository: which issues are pull requests, which are gone."""

    pull_requests: dict[int, bool] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)


class CatchUp:
    """The label events and comments made while no webhook came, handed to the worker."""

    def __init__(
        self, *, js: JetStreamContext, writer: GitHubWriter, links: Links, worker: InboundWorker
    ) -> None:
        self._buckets = Buckets(js)
        self._writer = writer
        self._links = links
        self._worker = worker
        self._said_gone: set[str] = set()

    async def run(self) -> int:
        """One pass over every repository with linked issues; how many label events and
        comments were handed to the worker."""
        by_repo: dict[str, list[Link]] = {}
        for link in await self._links.linked():
            by_repo.setdefault(link.issue.repo.lower(), []).append(link)
        handed = 0
        for links in by_repo.values():
            handed += await self._repository_or_skip(links)
        return handed

    async def _repository_or_skip(self, links: list[Link]) -> int:
        repo = links[0].issue.repo
        try:
            return await self._repository(repo, links)
        except GitHubUnavailable as exc:
            if exc.status not in GONE:
                log.warning("catch-up: %s skipped this time: %s", repo, exc)
            else:
                self._say_gone(repo, exc)
        except Exception as exc:
            log.warning("catch-up: %s skipped this time: %s", repo, exc, exc_info=True)
        return 0

    async def _repository(self, repo: str, links: list[Link]) -> int:
        starts = {link.issue.number: await self._start(link) for link in links}
        listing = Listing(min(start.since for start in starts.values()))
        events = await self._writer.issue_events(repo, listing.since)
        handed = await self._hand_labels(repo, events, starts)
        this_pass = Pass()
        async for page in self._writer.comment_pages(repo, listing.since):
            listing.saw(page)
            for comment in page.comments:
                number = _issue_number(comment)
                start = starts.get(number)
                if start is None or comment.created_at < start.linked_at:
                    continue  # not on a linked issue, or made before it was linked
                handed += await self._hand(IssueRef(repo, number), comment, this_pass)
        mark = min(listing.watermark(), _labels_read_up_to(repo, events, listing.since))
        for link in links:  # a gone issue's too: nothing of it is listed any more
            await self._advance(link.issue, starts[link.issue.number], mark)
        return handed

    async def _hand_labels(self, repo: str, events: IssueEvents, starts: dict[int, Start]) -> int:
        """Hand the worker each kill or link label event on a linked issue made at or
        after its link, oldest first, counting the events alike (a label added, removed
        and added again within a second), as the worker judges each once; how many."""
        alike: Counter[str] = Counter()
        handed = 0
        for event in events.events:
            change = _label_change(repo, event)
            start = None if change is None else starts.get(change.number)
            if change is None or start is None or change.at < start.linked_at:
                continue  # no label change, not on a linked issue, or before its link
            if not self._worker.acts_on_label(change.label):
                continue
            alike[change.alike] += 1
            await self._worker.label_listed(change, occurrence=alike[change.alike])
            handed += 1
        return handed

    async def _start(self, link: Link) -> Start:
        watermark = await self._watermark(link.issue)
        linked_at = link.linked_at
        if linked_at is None:  # a configured link seen for the first time (or before
            # links kept their time: its watermark was set when it was first seen)
            first_seen = watermark or await self._writer.github_time()
            linked_at = await self._links.configured_seen(link, first_seen)
        return Start(linked_at, linked_at if watermark is None else max(watermark, linked_at))

    async def _hand(self, issue: IssueRef, comment: Any, this_pass: Pass) -> int:
        on_pull_request = await self._pull_request(issue, this_pass)
        if on_pull_request is None:
            return 0
        seen = SeenComment(
            repo=issue.repo,
            number=issue.number,
            comment_id=comment.id,
            body=comment.body or "",
            url=comment.html_url,
            author=author_of(comment),
            on_pull_request=on_pull_request,
            created_at=comment.created_at,
        )
        await self._worker.comment_seen(seen, delivery="catch-up")
        return 1

    async def _pull_request(self, issue: IssueRef, this_pass: Pass) -> bool | None:
        """Whether the issue is a pull request; None if GitHub has it no more."""
        if issue.number in this_pass.gone:
            return None
        known = this_pass.pull_requests.get(issue.number)
        if known is not None:
            return known
        try:
            found = await self._writer.issue(issue.repo, issue.number)
        except GitHubUnavailable as exc:
            if exc.status not in GONE:
                raise
            self._say_gone(str(issue), exc)
            this_pass.gone.add(issue.number)
            return None
        this_pass.pull_requests[issue.number] = present(getattr(found, "pull_request", None))
        return this_pass.pull_requests[issue.number]

    def _say_gone(self, what: str, exc: GitHubUnavailable) -> None:
        if what not in self._said_gone:
            self._said_gone.add(what)
            log.warning(
                "catch-up: GitHub answered %s for %s (deleted, or out of reach): skipped "
                "until it comes back",
                exc.status,
                what,
            )

    async def _watermark(self, issue: IssueRef) -> datetime | None:
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        try:
            entry = await bucket.get(watermark_key(issue.repo, issue.number))
        except KeyNotFoundError:
            return None
        return from_stamp((entry.value or b"").decode())

    async def _advance(self, issue: IssueRef, start: Start, mark: datetime) -> None:
        """Move the issue's watermark up to ``mark`` (never back)."""
        if mark > start.since:
            bucket = await self._buckets.get(BRIDGE_BUCKET)
            await bucket.put(watermark_key(issue.repo, issue.number), to_stamp(mark).encode())


def _label_change(repo: str, event: Any) -> LabelChange | None:
    """The label change an entry of GitHub's issue events listing (githubkit's
    ``IssueEvent``) records, as its webhook would have said it; None if it records none,
    or one on a pull request (GitHub announces that as a ``pull_request`` event, which
    the bridge does not act on)."""
    label, issue, actor = event.label, event.issue, event.actor
    if event.event not in ("labeled", "unlabeled") or not present(label) or not present(issue):
        return None
    if present(getattr(issue, "pull_request", None)):
        return None
    return LabelChange(
        label=str(label.name or ""),
        repo=repo,
        number=issue.number,
        added=event.event == "labeled",
        sender=Sender(actor.login, str(actor.type)) if actor is not None else GHOST,
        # with an "_", as no delivery id has: the fact ids made from it are this event's
        delivery=f"event_{event.id}",
        at=event.created_at,
    )


def _labels_read_up_to(repo: str, events: IssueEvents, since: datetime) -> datetime:
    """Up to when every label event is read: GitHub's clock when the listing began, less
    the margin, if it reached back to ``since``; else from the oldest event it holds on
    (older ones are left unread, and the log says so)."""
    if events.complete:
        return since if events.github_time is None else events.github_time - WATERMARK_MARGIN
    oldest: datetime = events.events[0].created_at if events.events else since
    log.warning(
        "catch-up: %s has more issue events since %s than one listing reads; label "
        "changes before %s are not caught up",
        repo,
        to_stamp(since),
        to_stamp(oldest),
    )
    return oldest


def _issue_number(comment: Any) -> int:
    """The number of the issue a comment is on (its ``issue_url`` ends with it)."""
    try:
        return int(str(comment.issue_url).rstrip("/").rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return 0


# -- failed deliveries, asked again -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failed:
    """A delivery none of whose attempts succeeded: its oldest attempt."""

    guid: str
    attempt_id: int
    delivered_at: datetime


async def redeliver_failed(
    *, js: JetStreamContext, config: BridgeConfig, writer: GitHubWriter
) -> int:
    """Ask GitHub to redeliver the App's failed deliveries not yet handled, oldest first;
    how many were asked."""
    if config.app is None:
        return 0
    app = GitHub(
        AppAuthStrategy(str(config.app.app_id), config.app.private_key.reveal()),
        base_url=config.api_url,
        auto_retry=False,
        http_cache=False,
        cache_strategy=MemCacheStrategy(),
    )
    handled = await js.key_value(DELIVERIES_BUCKET)
    asked = 0
    for failed in await _failed_deliveries(app, writer):
        with contextlib.suppress(KeyNotFoundError):
            await handled.get(failed.guid)
            continue  # handled since (a catch-up found its comment, say)
        redeliver = app.rest.apps.async_redeliver_webhook_delivery
        try:
            await writer.write(functools.partial(redeliver, failed.attempt_id))
        except GitHubUnavailable as exc:
            log.warning("GitHub would not redeliver delivery %s: %s", failed.guid, exc)
            continue
        asked += 1
    return asked


async def _failed_deliveries(app: GitHub[Any], writer: GitHubWriter) -> list[Failed]:
    """The deliveries of the last three days none of whose attempts succeeded, oldest
    first (GitHub lists every attempt, newest first, through the writer's rate limits)."""
    horizon = datetime.now(UTC) - REDELIVERY_WINDOW
    attempts: list[Any] = []
    cursor: str | None = None
    for _ in range(MAX_DELIVERY_PAGES):
        arguments: dict[str, Any] = {"per_page": 100}
        if cursor is not None:
            arguments["cursor"] = cursor
        listed = functools.partial(app.rest.apps.async_list_webhook_deliveries, **arguments)
        response = await writer.read(listed)
        page = [d for d in response.parsed_data if d.delivered_at >= horizon]
        attempts += page
        cursor = _next_cursor(response.headers.get("link", ""))
        if len(page) < len(response.parsed_data) or not page or cursor is None:
            break
    return _oldest_first(attempts)


def _oldest_first(attempts: list[Any]) -> list[Failed]:
    """One entry per delivery that never succeeded and that the bridge handles, at the
    time of its first attempt, oldest first."""
    succeeded = {a.guid for a in attempts if a.status_code in OK_STATUS}
    failed: dict[str, Failed] = {}
    for attempt in attempts:
        if attempt.guid in succeeded or attempt.event not in HANDLED_EVENTS:
            continue
        earlier = failed.get(attempt.guid)
        if earlier is None or (attempt.delivered_at, attempt.id) < (
            earlier.delivered_at,
            earlier.attempt_id,
        ):
            failed[attempt.guid] = Failed(attempt.guid, attempt.id, attempt.delivered_at)
    return sorted(failed.values(), key=lambda f: (f.delivered_at, f.attempt_id))


def _next_cursor(link: str) -> str | None:
    for part in link.split(","):
        if 'rel="next"' in part and "cursor=" in part:
            return part.split("cursor=", 1)[1].split("&", 1)[0].split(">", 1)[0]
    return None
