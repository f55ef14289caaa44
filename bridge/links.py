"""Which issue each channel is linked to, and since when: from the configuration, and
from labels.

A link from ``agora.yaml`` (``bridge.links``) always holds. A maintainer can link more
by labelling an issue ``agora:channel:<name>``; those live in a bucket of their own,
``agora-links`` (one key per issue, ``<owner>/<repo>/<number>``), so every bridge process
sees them, they survive restarts, and listing them reads nothing else. Only channels
declared in the configuration, and granted to the bridge's key, can be linked, and a
link is one to one: a channel has at
most one issue and an issue at most one channel (a second link label is refused, never
written over the first).

Every link keeps when it was made, by GitHub's clock: a label's link, the time of the
``labeled`` event (the issue's ``updated_at`` in its payload); a configured link, when
the bridge first saw it (GitHub's ``Date``; kept in the same bucket, marked as the
configuration's). The catch-up injects only comments created at or after that time, so
neither an issue's history nor what was said on it while it was unlinked becomes an act.

GitHub's repository names are not case sensitive, and a webhook spells a name as GitHub
does, which need not be how ``agora.yaml`` spells it: every key and lookup uses the name
in lower case.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from agora.bridge.config import IssueRef
from agora.bridge.github import from_stamp, to_stamp
from agora.bridge.streams import BRIDGE_BUCKET, LINKS_BUCKET, Buckets
from agora.core.errors import InputError
from agora.core.spine import bucket_keys, bucket_values

BY_LABEL: Final = "label"
BY_CONFIGURATION: Final = "configuration"
LEGACY_PREFIX: Final = "link/"  # where links were kept, in agora-bridge, before agora-links
LEGACY_MOVED: Final = "links-moved"  # set in agora-bridge once they were moved


def link_key(repo: str, number: int) -> str:
    return f"{repo.lower()}/{number}"


def watermark_key(repo: str, number: int) -> str:
    """Where the catch-up keeps the time up to which it has read an issue's comments."""
    return f"watermark/{repo.lower()}/{number}"


@dataclass(frozen=True, slots=True)
class Link:
    """A channel's issue, and since when it is linked (None: a configured link the
    catch-up has not seen yet)."""

    channel: str
    issue: IssueRef
    linked_at: datetime | None


@dataclass(frozen=True, slots=True)
class _Record:
    """What ``agora-links`` keeps for an issue."""

    channel: str
    issue: IssueRef
    linked_at: datetime
    by: str  # BY_LABEL or BY_CONFIGURATION

    def encode(self) -> bytes:
        return json.dumps(
            {
                "channel": self.channel,
                "repo": self.issue.repo,
                "number": self.issue.number,
                "linked_at": to_stamp(self.linked_at),
                "by": self.by,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> _Record | None:
        try:
            value = json.loads(data)
            linked_at = from_stamp(str(value["linked_at"]))
            issue = IssueRef(str(value["repo"]), int(value["number"]))
            channel, by = str(value["channel"]), str(value["by"])
        except (ValueError, KeyError, TypeError):
            return None
        return None if linked_at is None else cls(channel, issue, linked_at, by)


Replaceable = Callable[[_Record], bool]  # whether a record kept already may give way


class Links:
    def __init__(
        self,
        js: JetStreamContext,
        configured: Mapping[str, IssueRef],
        channels: set[str],
        *,
        granted: Callable[[str], bool] = lambda _: True,
    ) -> None:
        """``channels``: those declared; ``granted``: whether the bridge's key may speak
        on a channel (a host refuses what it says anywhere else)."""
        self._js = js
        self._granted = granted
        self._buckets = Buckets(js)
        self._configured = {
            (ref.repo.lower(), ref.number): (channel, ref) for channel, ref in configured.items()
        }
        self._channels = channels

    async def channel_for(self, repo: str, number: int) -> str | None:
        link = await self.link_of(repo, number)
        return None if link is None else link.channel

    async def link_of(self, repo: str, number: int) -> Link | None:
        """The issue's link, with when a label made it, or None if the issue is not
        linked. A configured link's time is None here: it holds from the bridge's first
        start, and when the catch-up first saw it is a moment of no meaning to a webhook
        (it may even come after a comment made once the bridge was up)."""
        configured = self._configured.get((repo.lower(), number))
        if configured is not None:
            channel, ref = configured
            return Link(channel, ref, None)
        record = await self._record(repo, number)
        if record is None or record.by != BY_LABEL:
            return None
        return Link(record.channel, record.issue, record.linked_at)

    async def link(self, repo: str, number: int, channel: str, *, at: datetime) -> bool:
        """Link the issue to ``channel`` as of ``at``; False if it is so already. Raises
        InputError for an undeclared channel, an issue linked to another channel, or a
        channel linked to another issue (nothing is changed then)."""
        if channel not in self._channels:
            raise InputError(f"channel {channel!r} is not declared in the configuration")
        if not self._granted(channel):
            raise InputError(
                f"the bridge's key is not granted channel {channel!r} in the key registry: "
                "every act it brought from the issue would be refused"
            )
        issue = IssueRef(repo, number)
        current = await self.channel_for(repo, number)
        if current == channel:
            return False
        if current is not None:
            raise InputError(
                f"{issue} is already linked to channel {current!r}: remove that link "
                "first (an issue speaks for one channel)"
            )
        taken = (await self.issues()).get(channel)
        if taken is not None:
            raise InputError(
                f"channel {channel!r} is already linked to {taken}: remove that link "
                "first (a channel has one issue)"
            )
        if not await self._write(_Record(channel, issue, at, BY_LABEL), over=_not_a_label):
            raise InputError(f"{issue} was linked by another bridge meanwhile")
        return True

    async def unlink(self, repo: str, number: int, channel: str) -> bool:
        """Remove the label's link of the issue to ``channel``; False if there was none
        (a link from the configuration always holds)."""
        bucket = await self._buckets.get(LINKS_BUCKET)
        try:
            entry = await bucket.get(link_key(repo, number))
        except KeyNotFoundError:
            return False
        record = _Record.decode(entry.value or b"")
        if record is None or record.by != BY_LABEL or record.channel != channel:
            return False
        try:
            await bucket.delete(link_key(repo, number), last=entry.revision)
        except KeyWrongLastSequenceError:
            return False  # changed by another bridge meanwhile
        return True

    async def configured_seen(self, link: Link, at: datetime) -> datetime:
        """When the configured ``link`` was first seen: the time kept for it, else ``at``
        (kept now)."""
        record = _Record(link.channel, link.issue, at, BY_CONFIGURATION)
        if await self._write(record, over=lambda old: old.channel != link.channel):
            return at
        kept = await self._record(link.issue.repo, link.issue.number)
        return kept.linked_at if kept is not None else at

    async def issues(self) -> dict[str, IssueRef]:
        """Every linked channel and its issue (configured and labelled)."""
        return {link.channel: link.issue for link in await self.linked()}

    async def linked(self) -> list[Link]:
        """Every link, configured ones first, with when it was made."""
        records = await self._records()
        found: dict[str, Link] = {}
        for channel, ref in self._configured.values():
            record = records.get(link_key(ref.repo, ref.number))
            at = record.linked_at if record is not None and record.channel == channel else None
            found.setdefault(channel, Link(channel, ref, at))
        for record in records.values():
            if record.by == BY_LABEL and not self._is_configured(record.issue):
                found.setdefault(
                    record.channel, Link(record.channel, record.issue, record.linked_at)
                )
        return list(found.values())

    async def prepare(self) -> None:
        """At start: move the links kept the old way, and forget when the issues no
        longer configured were first seen (their watermarks too), so configuring one
        again starts afresh rather than from its old time."""
        await self._move_legacy_links()
        bridge = await self._buckets.get(BRIDGE_BUCKET)
        links = await self._buckets.get(LINKS_BUCKET)
        for key, record in (await self._records()).items():
            issue = record.issue
            if record.by == BY_CONFIGURATION and not self._is_configured(issue):
                await links.delete(key)
                await bridge.delete(watermark_key(issue.repo, issue.number))

    def _is_configured(self, issue: IssueRef) -> bool:
        return (issue.repo.lower(), issue.number) in self._configured

    async def _move_legacy_links(self) -> None:
        """Move the links labelled before they had a bucket of their own (``link/...``
        in ``agora-bridge``) into ``agora-links``, once: the only scan of that bucket."""
        bridge = await self._buckets.get(BRIDGE_BUCKET)
        with contextlib.suppress(KeyNotFoundError):
            await bridge.get(LEGACY_MOVED)
            return
        for key in await bucket_keys(self._js, BRIDGE_BUCKET):
            if key.startswith(LEGACY_PREFIX):
                await self._move_legacy(bridge, key)
        await bridge.put(LEGACY_MOVED, b"1")

    # -- the bucket ---------------------------------------------------------------------

    async def _record(self, repo: str, number: int) -> _Record | None:
        bucket = await self._buckets.get(LINKS_BUCKET)
        try:
            entry = await bucket.get(link_key(repo, number))
        except KeyNotFoundError:
            return None
        return _Record.decode(entry.value or b"")

    async def _records(self) -> dict[str, _Record]:
        """Every record (a key deleted, or unlinked meanwhile, is simply not among them)."""
        decoded = {
            key: _Record.decode(value)
            for key, value in (await bucket_values(self._js, LINKS_BUCKET)).items()
        }
        return {key: record for key, record in decoded.items() if record is not None}

    async def _write(self, record: _Record, *, over: Replaceable) -> bool:
        """Keep ``record`` for its issue, by compare-and-set: if there is none, or the one
        there is unreadable or one ``over`` says may be replaced. False if another stays."""
        bucket = await self._buckets.get(LINKS_BUCKET)
        key = link_key(record.issue.repo, record.issue.number)
        with contextlib.suppress(KeyWrongLastSequenceError):
            await bucket.create(key, record.encode())
            return True
        try:
            entry = await bucket.get(key)
        except KeyNotFoundError:
            return False  # deleted meanwhile: the caller's next try finds it free
        old = _Record.decode(entry.value or b"")
        if old is not None and not over(old):
            return False
        try:
            await bucket.update(key, record.encode(), last=entry.revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def _move_legacy(self, bridge: KeyValue, key: str) -> None:
        try:
            owner, name, number = key.removeprefix(LEGACY_PREFIX).split("/")
            issue = IssueRef(f"{owner}/{name}", int(number))
            entry = await bridge.get(key)
        except (ValueError, KeyNotFoundError):
            return
        channel = (entry.value or b"").decode()
        # its watermark was set when it was linked, then moved past what was caught up
        since = await _stamp_at(bridge, watermark_key(issue.repo, issue.number))
        record = _Record(channel, issue, since or datetime.now(UTC), BY_LABEL)
        await self._write(record, over=lambda _: False)
        await bridge.delete(key)


def _not_a_label(old: _Record) -> bool:
    """A configured link's time, left from when the issue was configured, may give way."""
    return old.by != BY_LABEL


async def _stamp_at(bucket: KeyValue, key: str) -> datetime | None:
    try:
        entry = await bucket.get(key)
    except KeyNotFoundError:
        return None
    return from_stamp((entry.value or b"").decode())
