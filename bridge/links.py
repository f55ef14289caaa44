"""Which issue each channel is linked to: from the configuration, and from labels.

A link from ``agora.yaml`` (``bridge.links``) always holds. A maintainer can link more
by labelling an issue ``agora:channel:<name>``; those live in the ``agora-bridge``
bucket (``link/<owner>/<repo>/<number>``), so every bridge process sees them and they
survive restarts. Only channels declared in the configuration can be linked.
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
    return f"{LINK_PREFIX}{repo}/{number}"


def watermark_key(repo: str, number: int) -> str:
    """Where the catch-up keeps the time of the last comment it saw on an issue."""
    return f"watermark/{repo}/{number}"


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Links:
    def __init__(
        self, js: JetStreamContext, configured: Mapping[str, IssueRef], channels: set[str]
    ) -> None:
        self._js = js
        self._buckets = Buckets(js)
        self._by_issue = {(ref.repo, ref.number): channel for channel, ref in configured.items()}
        self._channels = channels

    async def channel_for(self, repo: str, number: int) -> str | None:
        configured = self._by_issue.get((repo, number))
        if configured is not None:
            return configured
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        with contextlib.suppress(KeyNotFoundError):
            entry = await bucket.get(_key(repo, number))
            return (entry.value or b"").decode() or None
        return None

    async def link(self, repo: str, number: int, channel: str) -> None:
        if channel not in self._channels:
            raise InputError(f"channel {channel!r} is not declared in the configuration")
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        await bucket.put(_key(repo, number), channel.encode())

    async def start_watermark(self, repo: str, number: int) -> None:
        """Catch up on this issue from now on, not from its first comment."""
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        with contextlib.suppress(KeyWrongLastSequenceError):
            await bucket.create(watermark_key(repo, number), utc_now_iso().encode())

    async def unlink(self, repo: str, number: int, channel: str) -> None:
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        with contextlib.suppress(KeyNotFoundError):
            entry = await bucket.get(_key(repo, number))
            if (entry.value or b"").decode() == channel:
                await bucket.delete(_key(repo, number))

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
