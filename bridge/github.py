"""The bridge's hands on GitHub: githubkit, paced and retried by GitHub's own rules.

Every write waits for :class:`~agora.bridge.pacing.WritePacer` (80 a minute, 500 an
hour, or less if configured). A rate limit (429, or a 403 that says it is one) blocks
every request, reads too, until the wait :func:`~agora.bridge.pacing.retry_delay`
computes is over: ``retry-after``, then the rate-limit reset, then at least a minute,
doubling. A 5xx or a dropped connection is retried after that wait by the request that
met it. Any other refusal (a 404, a 422, a 403 that is no rate limit) is final, and so is
the last of :data:`MAX_ATTEMPTS`: nothing waits after it. githubkit's own retrying is
off, so these rules are the only ones.

Creating a comment is made safe to retry: each comment carries a hidden marker, and
after a failure whose outcome is unknown (a dropped connection, a 5xx) the issue's
newest comments by the bridge itself are searched for the marker before anything is
posted again, so a crash or a retry never leaves a duplicate.

Authentication is a token, or a GitHub App: githubkit signs the App JWT and exchanges it
for an installation token, which it renews before it expires.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, TypeVar

import httpx
from githubkit import AppInstallationAuthStrategy, GitHub, Response, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy
from githubkit.exception import RequestError, RequestFailed

from agora.bridge.config import BridgeConfig
from agora.bridge.pacing import WritePacer, is_rate_limited, retry_delay
from agora.core.errors import AgoraError, InternalError

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ATTEMPTS: Final = 8
SEARCH_PAGES: Final = 3
MAX_LISTING_PAGES: Final = 100
STAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"
PER_PAGE: Final = 100
MESSAGE_CHARS: Final = 200
DROPPED: Final = 502  # a dropped connection is retried as a bad gateway is


class GitHubUnavailable(AgoraError):
    """GitHub refused a request for good (``status``, GitHub's ``reason``), or kept
    refusing it."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PostedComment:
    id: int
    url: str


@dataclass(frozen=True, slots=True)
class CommentPage:
    """A page of comments, and GitHub's clock when it answered (its ``Date``)."""

    comments: list[Any]
    github_time: datetime | None
    last: bool  # no page follows


@dataclass(frozen=True, slots=True)
class IssueEvents:
    """A repository's issue events back to a time, oldest first, and GitHub's clock when
    it answered the first page (its ``Date``)."""

    events: list[Any]
    github_time: datetime | None
    complete: bool  # every event back to that time is among them


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the bridge is on GitHub: its login, and its App if it acts as one."""

    login: str | None = None
    app_id: int | None = None

    def wrote(self, comment: Any) -> bool:
        """Whether a comment (githubkit's model) was written by the bridge itself."""
        user = getattr(comment, "user", None)
        if self.login is not None and getattr(user, "login", None) == self.login:
            return True
        app = getattr(comment, "performed_via_github_app", None)
        return self.app_id is not None and getattr(app, "id", None) == self.app_id


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    headers: dict[str, str]
    message: str

    @classmethod
    def of(cls, response: Response[Any, Any]) -> _Refusal:
        return cls(response.status_code, dict(response.headers), _message_of(response))


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
    """Every call the bridge makes to GitHub. ``clock`` is wall-clock time (seconds since
    the epoch, to read ``x-ratelimit-reset``); ``monotonic`` paces (by default the
    system's monotonic clock, or ``clock`` when a test supplies its own)."""

    def __init__(
        self,
        client: GitHub[Any],
        *,
        per_minute: int,
        per_hour: int,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        monotonic: Clock | None = None,
    ) -> None:
        self._gh = client
        self._pacer = WritePacer(per_minute=per_minute, per_hour=per_hour)
        self._clock = clock
        self._monotonic = monotonic or (time.monotonic if clock is time.time else clock)
        self._sleep = sleep
        self.writes = 0
        self.retries = 0

    # -- writes -------------------------------------------------------------------------

    async def create_comment(
        self, repo: str, number: int, body: str, marker: str, *, author: Identity
    ) -> PostedComment:
        """Post ``body`` (which must contain ``marker``) once, whatever fails on the way;
        ``author`` is the bridge, whose comments alone are looked at after a failure."""
        owner, name = repo.split("/", 1)

        async def post() -> PostedComment:
            response = await self._gh.rest.issues.async_create_comment(
                owner, name, number, body=body
            )
            data = response.parsed_data
            return PostedComment(data.id, data.html_url)

        async def already() -> PostedComment | None:
            return await self.find_comment(repo, number, marker, author=author)

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

    async def find_comment(
        self, repo: str, number: int, marker: str, *, author: Identity
    ) -> PostedComment | None:
        """The newest comment by ``author`` on an issue carrying ``marker``, among the
        issue's newest :data:`SEARCH_PAGES` pages (GitHub lists comments oldest first,
        so the search starts from the last page its ``Link`` header names)."""
        owner, name = repo.split("/", 1)

        def page(at: int) -> Callable[[], Awaitable[Response[Any, Any]]]:
            return lambda: self._gh.rest.issues.async_list_comments(
                owner, name, number, per_page=PER_PAGE, page=at
            )

        first = await self._read(page(1))
        last = _last_page(first)
        for at in range(last, max(last - SEARCH_PAGES, 0), -1):
            response = first if at == 1 else await self._read(page(at))
            for comment in reversed(list(response.parsed_data)):
                if marker in (comment.body or "") and author.wrote(comment):
                    return PostedComment(comment.id, comment.html_url)
        return None

    async def authenticated_login(self) -> str:
        """The login of the user whose token the bridge holds (an App's installation
        token is refused by GitHub here: the App is known from the configuration)."""
        response = await self._read(self._gh.rest.users.async_get_authenticated)
        return str(response.parsed_data.login)

    async def issue(self, repo: str, number: int) -> Any:
        owner, name = repo.split("/", 1)
        response = await self._read(lambda: self._gh.rest.issues.async_get(owner, name, number))
        return response.parsed_data

    async def github_time(self) -> datetime:
        """What time GitHub says it is (the ``Date`` of a ``/rate_limit`` read, which
        costs no rate limit); the local time if it does not say."""
        response = await self._read(self._gh.rest.rate_limit.async_get)
        return _date_of(response) or datetime.now(UTC)

    async def comment_pages(self, repo: str, since: datetime) -> AsyncIterator[CommentPage]:
        """The repository's issue comments updated at or after ``since``, least recently
        updated first, a page at a time, each comment once.

        Each request starts again from the last comment seen (``since`` moves up to its
        update time) rather than asking for the next page by number, so a comment
        deleted or edited meanwhile cannot shift another out of sight; only a full page
        updated within one second is followed by number. At most
        :data:`MAX_LISTING_PAGES` pages: the last one yielded then says ``last=False``.
        """
        owner, name = repo.split("/", 1)
        listed = self._gh.rest.issues.async_list_comments_for_repo
        cursor, number, seen = since, 1, set[int]()
        for _ in range(MAX_LISTING_PAGES):
            arguments: dict[str, Any] = {
                "sort": "updated",
                "direction": "asc",
                "since": to_stamp(cursor),  # as GitHub documents it: YYYY-MM-DDTHH:MM:SSZ
                "per_page": PER_PAGE,
                "page": number,
            }
            ask = functools.partial(listed, owner, name, **arguments)
            response = await self._read(ask)
            batch: list[Any] = list(response.parsed_data)
            full = len(batch) == PER_PAGE
            fresh = [comment for comment in batch if comment.id not in seen]
            seen.update(comment.id for comment in batch)
            yield CommentPage(fresh, _date_of(response), last=not full)
            if not full:
                return
            newest: datetime = batch[-1].updated_at
            cursor, number = (newest, 1) if newest > cursor else (cursor, number + 1)

    async def issue_events(self, repo: str, since: datetime) -> IssueEvents:
        """The repository's issue events (labels added and removed among them) created at
        or after ``since``, oldest first, each once.

        GitHub lists them newest first and takes no ``since``: pages are read until one
        reaches back past ``since``, or none follows (its ``Link`` header names no next
        page). An event made meanwhile pushes the others a place down, so one may be
        listed twice, never missed. At most :data:`MAX_LISTING_PAGES` pages: if the
        events reach back further, ``complete`` says False.
        """
        owner, name = repo.split("/", 1)
        listed = self._gh.rest.issues.async_list_events_for_repo
        found: dict[int, Any] = {}
        github_time: datetime | None = None
        for number in range(1, MAX_LISTING_PAGES + 1):
            ask = functools.partial(listed, owner, name, per_page=PER_PAGE, page=number)
            response = await self._read(ask)
            github_time = github_time or _date_of(response)
            batch: list[Any] = list(response.parsed_data)
            for event in batch:
                if event.created_at >= since:
                    found.setdefault(event.id, event)
            past = not batch or batch[-1].created_at < since
            if past or "next" not in response.raw_response.links:
                return IssueEvents(_oldest_first(found.values()), github_time, complete=True)
        return IssueEvents(_oldest_first(found.values()), github_time, complete=False)

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
            await self._turn(write=True)
            try:
                result = await call()
            except RequestFailed as exc:
                refusal = _Refusal.of(exc.response)
                unsure = unsure or refusal.status >= 500  # a later 429 changes nothing
            except RequestError:
                refusal = _Refusal(DROPPED, {}, "the connection dropped")
                unsure = True  # it may have been applied
            else:
                self.writes += 1
                return result
            await self._after(refusal, attempt, "write")
        raise InternalError("the last attempt raises")  # pragma: no cover

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            await self._turn(write=False)
            try:
                return await call()
            except RequestFailed as exc:
                refusal = _Refusal.of(exc.response)
            except RequestError:
                refusal = _Refusal(DROPPED, {}, "the connection dropped")
            await self._after(refusal, attempt, "read")
        raise InternalError("the last attempt raises")  # pragma: no cover

    async def _turn(self, *, write: bool) -> None:
        """Wait out a rate limit (any request) and the write windows (a write)."""
        while (wait := self._wait_s(write=write)) > 0:
            await self._sleep(wait)
        if write:
            self._pacer.record(self._monotonic())

    def _wait_s(self, *, write: bool) -> float:
        now = self._monotonic()
        return self._pacer.wait_s(now) if write else self._pacer.blocked_s(now)

    async def _after(self, refusal: _Refusal, attempt: int, what: str) -> None:
        """Wait as GitHub asks before the next attempt, or raise: a refusal for good, or
        the last attempt (after which nothing waits)."""
        status, message = refusal.status, refusal.message
        delay = retry_delay(
            status, refusal.headers, failures=attempt, now_epoch_s=self._clock(), message=message
        )
        if delay is None:
            raise GitHubUnavailable(
                f"GitHub answered {status} ({message}); not a request to retry", status, message
            )
        if attempt >= MAX_ATTEMPTS:
            raise GitHubUnavailable(
                f"GitHub refused a {what} {MAX_ATTEMPTS} times, the last with {status} "
                f"({message}); giving up",
                status,
                message,
            )
        self.retries += 1
        log.warning("GitHub answered %d (%s); retrying in %.0f s", status, message, delay)
        if is_rate_limited(status, refusal.headers, message):
            self._pacer.block(self._monotonic(), delay)  # every request waits, not only this
        else:
            await self._sleep(delay)


def _message_of(response: Response[Any, Any]) -> str:
    """GitHub's ``message`` in a refusal's body (it never holds a secret), on one line and
    cut short, or the status's reason phrase."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    text = " ".join(str(message or response.reason_phrase).split())
    return text[:MESSAGE_CHARS]


def to_stamp(when: datetime) -> str:
    """A time as GitHub writes one: UTC, to the second."""
    return when.astimezone(UTC).strftime(STAMP_FORMAT)


def from_stamp(text: str) -> datetime | None:
    """A time written as GitHub writes one (None if it is not one)."""
    try:
        return datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def _date_of(response: Response[Any, Any]) -> datetime | None:
    """GitHub's clock when it answered: the response's ``Date``, if it has a valid one."""
    try:
        return parsedate_to_datetime(response.headers.get("date", "")).astimezone(UTC)
    except (TypeError, ValueError, IndexError):
        return None


def _oldest_first(events: Iterable[Any]) -> list[Any]:
    """Issue events in the order they happened (GitHub's ids grow within a second)."""
    return sorted(events, key=lambda event: (event.created_at, event.id))


def _last_page(response: Response[Any, Any]) -> int:
    """The last page a list response's ``Link`` header names (1 when there is one page)."""
    last = response.raw_response.links.get("last", {}).get("url")
    if last is None:
        return 1
    try:
        return max(int(httpx.URL(last).params.get("page", "1")), 1)
    except ValueError:
        return 1
