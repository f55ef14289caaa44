"""Catching up after downtime: nothing said while the bridge was down is lost.

On start, for every linked issue, the bridge lists the comments updated since its
watermark for that issue and hands each to the inbound worker exactly as a webhook
would (:meth:`~agora.bridge.inbound.InboundWorker.comment_seen`). A comment already
handled is recognised by its id, so nothing is injected twice, whichever way it came.

With a GitHub App, it also asks GitHub to redeliver the deliveries that failed while
it was away (GitHub never retries them by itself), so edits and labels are not lost
either; a token cannot list an App's deliveries, so with a token only comments are
caught up.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from githubkit import AppAuthStrategy, GitHub
from githubkit.cache import MemCacheStrategy
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from agora.bridge.config import BridgeConfig
from agora.bridge.github import GitHubWriter
from agora.bridge.inbound import InboundWorker, SeenComment, author_of, present
from agora.bridge.links import Links, watermark_key
from agora.bridge.streams import BRIDGE_BUCKET, DELIVERIES_BUCKET
from agora.bridge.webhook import HANDLED_EVENTS

log = logging.getLogger(__name__)

REDELIVERY_WINDOW: Final = timedelta(days=3)
MAX_DELIVERY_PAGES: Final = 10
OK_STATUS: Final = range(200, 300)


async def catch_up_comments(
    *, js: JetStreamContext, writer: GitHubWriter, links: Links, worker: InboundWorker
) -> int:
    """Hand every comment made since each issue's watermark to the worker; how many."""
    bucket = await js.key_value(BRIDGE_BUCKET)
    handed = 0
    for issue in (await links.issues()).values():
        key = watermark_key(issue.repo, issue.number)
        since: str | None = None
        with contextlib.suppress(KeyNotFoundError):
            since = ((await bucket.get(key)).value or b"").decode() or None
        if since is None:
            # A link seen for the first time: catch up from now on, never on its history.
            await links.start_watermark(issue.repo, issue.number)
            continue
        on_pull_request = await _is_pull_request(writer, issue.repo, issue.number)
        latest = since
        for comment in await writer.comments_since(issue.repo, issue.number, since):
            await worker.comment_seen(
                SeenComment(
                    repo=issue.repo,
                    number=issue.number,
                    comment_id=comment.id,
                    body=comment.body or "",
                    url=comment.html_url,
                    author=author_of(comment),
                    on_pull_request=on_pull_request,
                ),
                delivery="catch-up",
            )
            handed += 1
            stamp = _iso(comment.updated_at)
            latest = stamp if latest is None or stamp > latest else latest
        if latest is not None:
            await bucket.put(key, latest.encode())
    return handed


async def _is_pull_request(writer: GitHubWriter, repo: str, number: int) -> bool:
    issue = await writer.issue(repo, number)
    return present(getattr(issue, "pull_request", None))


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


async def redeliver_failed(
    *, js: JetStreamContext, config: BridgeConfig, writer: GitHubWriter
) -> int:
    """Ask GitHub to redeliver the App's failed deliveries not yet handled; how many."""
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
    horizon = datetime.now(UTC) - REDELIVERY_WINDOW
    asked = 0
    seen: set[str] = set()
    cursor: str | None = None
    for _ in range(MAX_DELIVERY_PAGES):
        arguments: dict[str, Any] = {"per_page": 100}
        if cursor is not None:
            arguments["cursor"] = cursor
        response = await app.rest.apps.async_list_webhook_deliveries(**arguments)
        deliveries = list(response.parsed_data)
        for delivery in deliveries:
            if delivery.delivered_at < horizon:
                return asked
            if (
                delivery.status_code in OK_STATUS
                or delivery.guid in seen
                or delivery.event not in HANDLED_EVENTS
            ):
                continue
            seen.add(delivery.guid)
            try:
                await handled.get(delivery.guid)
            except KeyNotFoundError:
                await writer.write(
                    functools.partial(app.rest.apps.async_redeliver_webhook_delivery, delivery.id)
                )
                asked += 1
        cursor = _next_cursor(response.headers.get("link", ""))
        if not deliveries or cursor is None:
            break
    return asked


def _next_cursor(link: str) -> str | None:
    for part in link.split(","):
        if 'rel="next"' in part and "cursor=" in part:
            return part.split("cursor=", 1)[1].split("&", 1)[0].split(">", 1)[0]
    return None
