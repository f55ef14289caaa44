"""Which issue each channel is linked to: from the configuration, and from labels.

A link from ``agora.yaml`` (``bridge.links``) always holds. A maintainer can link more
by labelling an issue ``agora:channel:<name>``; those live in the ``agora-bridge``
bucket (``link/<owner>/<repo>/<number>``), so every bridge process sees them and they
survive restarts. Only channels declared in the configuration can be linked, and a
link is one to one: a channel has at most one issue and an issue at most one channel (a
second link label is refused, never written over the first).

GitHub's repository names are not case sensitive, and a webhook spells a name as GitHub
does, which need not be how ``agora.yaml`` spells it: every key and lookup uses the name
in lower case.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError

from agora.bridge.config import IssueRef
from agora.bridge.streams import BRIDGE_BUCKET, Buckets
from agora.core.errors import InputError

LINK_PREFIX = "link/"


def _key(repo: str, number: int) -> str:
    return f"{LINK_PREFIX}{repo.lower()}/{number}"


def _legacy_key(repo: str, number: int) -> str:
    """Where a link was kept before names were kept in lower case."""
    return f"{LINK_PREFIX}{repo}/{number}"


def watermark_key(repo: str, number: int) -> str:
    """Where the catch-up keeps the time of the last comment it saw on an issue."""
    return f"watermark/{repo.lower()}/{number}"


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Links:
    def __init__(
        self, js: JetStreamContext, configured: Mapping[str, IssueRef], channels: set[str]
    ) -> None:
        self._js = js
        self._buckets = Buckets(js)
        self._by_issue = {
            (ref.repo.lower(), ref.number): channel for channel, ref in configured.items()
        }
        self._channels = channels

    async def channel_for(self, repo: str, number: int) -> str | None:
        configured = self._by_issue.get((repo.lower(), number))
        if configured is not None:
            return configured
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        keys = dict.fromkeys((_key(repo, number), _legacy_key(repo, number)))
        for key in keys:  # a link labelled before names were kept in lower case
            with contextlib.suppress(KeyNotFoundError):
                entry = await bucket.get(key)
                return (entry.value or b"").decode() or None
        return None

    async def link(self, repo: str, number: int, channel: str) -> bool:
        """Link the issue to ``channel``; False if it is so already. Raises InputError for
        an undeclared channel, an issue linked to another channel, or a channel linked
        to another issue (nothing is changed then)."""
        if channel not in self._channels:
            raise InputError(f"channel {channel!r} is not declared in the configuration")
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
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        try:
            await bucket.create(_key(repo, number), channel.encode())
        except KeyWrongLastSequenceError:
            raise InputError(f"{issue} was linked by another bridge meanwhile") from None
        return True

    async def start_watermark(self, repo: str, number: int) -> None:
        """Catch up on this issue from now on, not from its first comment."""
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        with contextlib.suppress(KeyWrongLastSequenceError):
            await bucket.create(watermark_key(repo, number), utc_now_iso().encode())

    async def unlink(self, repo: str, number: int, channel: str) -> bool:
        """Remove the label's link of the issue to ``channel``; False if there was none
        (a link from the configuration always holds)."""
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        for key in dict.fromkeys((_key(repo, number), _legacy_key(repo, number))):
            with contextlib.suppress(KeyNotFoundError):
                entry = await bucket.get(key)
                if (entry.value or b"").decode() == channel:
                    await bucket.delete(key)
                    return True
        return False

    async def issues(self) -> dict[str, IssueRef]:
        """Every linked channel and its issue (configured and labelled)."""
        found = {
            channel: IssueRef(repo, number) for (repo, number), channel in self._by_issue.items()
        }
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        try:
            keys = await bucket.keys()
        except NoKeysError:
            keys = []
        for key in keys:
            if not key.startswith(LINK_PREFIX):
                continue
            owner, name, number = key.removeprefix(LINK_PREFIX).split("/")
            entry = await bucket.get(key)
            channel = (entry.value or b"").decode()
            found.setdefault(channel, IssueRef(f"{owner}/{name}", int(number)))
        return found
