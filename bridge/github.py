"""The bridge's hands on GitHub: githubkit, paced and retried by GitHub's own rules.

Every write waits for :class:`~agora.bridge.pacing.WritePacer` (80 a minute, 500 an
hour, or less if configured). A refused request (403, 429, 5xx) is retried after the
wait :func:`~agora.bridge.pacing.retry_delay` computes: ``retry-after``, then the
rate-limit reset, then at least a minute, doubling. githubkit's own retrying is off, so
these rules are the only ones.

Creating a comment is made safe to retry: each comment carries a hidden marker, and
after a failure whose outcome is unknown (a dropped connection, a 5xx) the issue's recent
comments are searched for the marker before anything is posted again, so a crash or a
retry never leaves a duplicate.

Authentication is a token, or a GitHub App: githubkit signs the App JWT and exchanges it
for an installation token, which it renews before it expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from githubkit import AppInstallationAuthStrategy, GitHub, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy
from githubkit.exception import RequestError, RequestFailed

from agora.bridge.config import BridgeConfig
from agora.bridge.pacing import WritePacer, retry_delay
from agora.core.errors import AgoraError

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ATTEMPTS: Final = 8
SEARCH_PAGES: Final = 3


class GitHubUnavailable(AgoraError):
    """GitHub refused a request for good (``status``), or kept refusing it."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PostedComment:
    id: int
    url: str


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def make_client(config: BridgeConfig) -> GitHub[Any]:
    auth: TokenAuthStrategy | AppInstallationAuthStrategy
    if config.app is not None:
        auth = AppInstallationAuthStrategy(
            str(config.app.app_id), config.app.private_key.reveal(), config.app.installation_id
        )
    elif config.token is not None:
        auth = TokenAuthStrategy(config.token.reveal())
    else:  # pragma: no cover - the configuration requires one of the two
        raise AgoraError("the bridge has neither a token nor an app to authenticate with")
    return GitHub(
        auth,
        base_url=config.api_url,
        auto_retry=False,
        http_cache=False,
        cache_strategy=MemCacheStrategy(),
        user_agent="agora-bridge",
        timeout=30.0,
    )


class GitHubWriter:
    def __init__(
        self,
        client: GitHub[Any],
        *,
        per_minute: int,
        per_hour: int,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._gh = client
        self._pacer = WritePacer(per_minute=per_minute, per_hour=per_hour)
        self._clock = clock
        self._sleep = sleep
        self.writes = 0
        self.retries = 0

    # -- writes -------------------------------------------------------------------------

    async def create_comment(self, repo: str, number: int, body: str, marker: str) -> PostedComment:
        """Post ``body`` (which must contain ``marker``) once, whatever fails on the way."""
        owner, name = repo.split("/", 1)

        async def post() -> PostedComment:
            response = await self._gh.rest.issues.async_create_comment(
                owner, name, number, body=body
            )
            data = response.parsed_data
            return PostedComment(data.id, data.html_url)

        async def already() -> PostedComment | None:
            return await self.find_comment(repo, number, marker)

        return await self._write(post, check_first=already)

    async def update_comment(self, repo: str, comment_id: int, body: str) -> None:
        owner, name = repo.split("/", 1)

        async def patch() -> None:
            await self._gh.rest.issues.async_update_comment(owner, name, comment_id, body=body)

        await self._write(patch)

    async def write(self, call: Callable[[], Awaitable[T]]) -> T:
        """Any other write, paced and retried (not for creations that must not repeat)."""
        return await self._write(call)

    async def read(self, call: Callable[[], Awaitable[T]]) -> T:
        """Any read, retried by GitHub's rules."""
        return await self._read(call)

    # -- reads --------------------------------------------------------------------------

    async def find_comment(self, repo: str, number: int, marker: str) -> PostedComment | None:
        """The newest comment on an issue carrying ``marker``, among its latest pages."""
        owner, name = repo.split("/", 1)

        async def search() -> PostedComment | None:
            found: PostedComment | None = None
            page = 1
            while page <= SEARCH_PAGES * 10:
                response = await self._gh.rest.issues.async_list_comments(
                    owner, name, number, per_page=100, page=page
                )
                comments: list[Any] = list(response.parsed_data)
                for comment in comments:
                    if marker in (comment.body or ""):
                        found = PostedComment(comment.id, comment.html_url)
                if len(comments) < 100:
                    return found
                page += 1
            return found

        return await self._read(search)

    async def issue(self, repo: str, number: int) -> Any:
        owner, name = repo.split("/", 1)
        response = await self._read(lambda: self._gh.rest.issues.async_get(owner, name, number))
        return response.parsed_data

    async def comments_since(self, repo: str, number: int, since: str | None) -> list[Any]:
        """Every comment on an issue updated at or after ``since`` (ISO 8601), oldest first."""
        owner, name = repo.split("/", 1)

        async def fetch() -> list[Any]:
            found: list[Any] = []
            page = 1
            while True:
                arguments: dict[str, Any] = {"per_page": 100, "page": page}
                if since is not None:
                    arguments["since"] = since
                response = await self._gh.rest.issues.async_list_comments(
                    owner, name, number, **arguments
                )
                batch: list[Any] = list(response.parsed_data)
                found.extend(batch)
                if len(batch) < 100:
                    return found
                page += 1

        return await self._read(fetch)

    # -- the rules ----------------------------------------------------------------------

    async def _write(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        check_first: Callable[[], Awaitable[T | None]] | None = None,
    ) -> T:
        unsure = False
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if unsure and check_first is not None:
                done = await check_first()
                if done is not None:
                    return done
            await self._paced()
            try:
                result = await call()
            except RequestFailed as exc:
                status = exc.response.status_code
                unsure = status >= 500
                await self._back_off(status, dict(exc.response.headers), attempt)
                continue
            except RequestError:
                unsure = True  # the connection dropped: it may have been applied
                await self._back_off(502, {}, attempt)
                continue
            self.writes += 1
            return result
        raise GitHubUnavailable(f"GitHub refused a write {MAX_ATTEMPTS} times; giving up")

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await call()
            except RequestFailed as exc:
                await self._back_off(exc.response.status_code, dict(exc.response.headers), attempt)
            except RequestError:
                await self._back_off(502, {}, attempt)
        raise GitHubUnavailable(f"GitHub refused a read {MAX_ATTEMPTS} times; giving up")

    async def _paced(self) -> None:
        while (wait := self._pacer.wait_s(self._clock())) > 0:
            await self._sleep(wait)
        self._pacer.record(self._clock())

    async def _back_off(self, status: int, headers: dict[str, str], attempt: int) -> None:
        delay = retry_delay(status, headers, failures=attempt, now_epoch_s=self._clock())
        if delay is None:
            raise GitHubUnavailable(f"GitHub answered {status}; not a request to retry", status)
        self.retries += 1
        log.warning("GitHub answered %d; retrying in %.0f s", status, delay)
        await self._sleep(delay)
