"""The GitHub writer against the stand-in over real HTTP: pacing, GitHub's retry order,
no duplicate after a crash, tokens that expire, and listings that hold still.

The stand-in and the writer share a fake clock: waiting a minute costs nothing, and the
stand-in's own rate limiter judges the writer by the same minutes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from githubkit import AppInstallationAuthStrategy, GitHub, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy

from agora.bridge.github import (
    MAX_ATTEMPTS,
    PER_PAGE,
    SEARCH_PAGES,
    GitHubUnavailable,
    GitHubWriter,
    Identity,
)
from agora.bridge.standin import Fault, GitHubStandIn

REPO = "octo/repo"
BOT = "agora-bridge[bot]"
ME = Identity(login=BOT)


class FakeClock:
    """Time that passes only when someone waits. ``meanwhile`` runs once, at the first
    wait, before the time has passed: what another task does while one is waiting."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.slept: list[float] = []
        self.meanwhile: Callable[[], Awaitable[None]] | None = None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            await meanwhile()
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def github(clock: FakeClock) -> AsyncIterator[tuple[GitHubStandIn, str, int]]:
    standin = GitHubStandIn(clock=clock)
    url = await standin.start()
    standin.add_user("mona", association="OWNER")
    standin.add_user("agora-bridge[bot]", type="Bot", association="NONE")
    standin.create_repo(REPO)
    issue = standin.create_issue(REPO, "Coordination", "", by="mona")
    try:
        yield standin, url, issue
    finally:
        await standin.stop()


def writer_for(
    standin: GitHubStandIn, url: str, clock: FakeClock, *, token: str | None = None
) -> GitHubWriter:
    client = GitHub(
        TokenAuthStrategy(token or standin.issue_token("agora-bridge[bot]")),
        base_url=url,
        auto_retry=False,
        http_cache=False,
        cache_strategy=MemCacheStrategy(),
    )
    return GitHubWriter(client, per_minute=80, per_hour=500, clock=clock, sleep=clock.sleep)


def marked(standin: GitHubStandIn, issue: int, marker: str) -> int:
    return sum(marker in c.body for c in standin.comments(REPO, issue))


async def test_a_burst_is_paced_to_80_a_minute_and_500_an_hour(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    writer = writer_for(standin, url, clock)
    for n in range(520):
        await writer.create_comment(
            REPO, issue, f"note {n} <!-- m{n} -->", f"<!-- m{n} -->", author=ME
        )
    assert len(standin.comments(REPO, issue)) == 520  # nothing lost
    assert standin.peak_creations_per_minute() <= 80
    created = sorted(standin.creations())
    assert all(sum(1 for t in created if start <= t < start + 3600) <= 500 for start in created)
    assert clock.now - created[0] >= 3600  # the 501st had to wait for the hour to turn
    assert writer.retries == 0  # never refused: the pacer kept under GitHub's limits


async def test_403_with_retry_after_is_honoured(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    standin.inject(Fault.secondary_rate_limit(retry_after=30, method="POST"))
    writer = writer_for(standin, url, clock)
    await writer.create_comment(REPO, issue, "hello <!-- a -->", "<!-- a -->", author=ME)
    assert clock.slept == [30.0]
    assert marked(standin, issue, "<!-- a -->") == 1


async def test_a_spent_rate_limit_waits_for_its_reset(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    standin.inject(Fault.primary_rate_limit(reset_in_s=300, method="POST"))
    writer = writer_for(standin, url, clock)
    await writer.create_comment(REPO, issue, "later <!-- b -->", "<!-- b -->", author=ME)
    assert 300 <= clock.slept[0] <= 302
    assert marked(standin, issue, "<!-- b -->") == 1


async def test_5xx_backs_off_at_least_a_minute_doubling(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    standin.inject(Fault.server_error(502, method="POST", times=2))
    writer = writer_for(standin, url, clock)
    await writer.create_comment(REPO, issue, "steady <!-- c -->", "<!-- c -->", author=ME)
    assert clock.slept[:2] == [60.0, 120.0]
    assert marked(standin, issue, "<!-- c -->") == 1


@pytest.mark.parametrize("drop", [True, False])
async def test_a_crash_after_github_applied_a_post_leaves_no_duplicate(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock, drop: bool
) -> None:
    standin, url, issue = github
    standin.inject(Fault.crash_after_apply(method="POST", drop=drop))
    writer = writer_for(standin, url, clock)
    posted = await writer.create_comment(REPO, issue, "decided <!-- d -->", "<!-- d -->", author=ME)
    assert marked(standin, issue, "<!-- d -->") == 1
    assert posted.id == next(c.id for c in standin.comments(REPO, issue) if "<!-- d -->" in c.body)


async def test_an_expired_token_is_not_retried_forever(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    token = standin.issue_token("agora-bridge[bot]", lifetime_s=10)
    clock.now += 60
    writer = writer_for(standin, url, clock, token=token)
    with pytest.raises(GitHubUnavailable, match="401"):
        await writer.create_comment(REPO, issue, "x <!-- e -->", "<!-- e -->", author=ME)


async def test_an_app_installation_token_is_renewed_before_it_expires() -> None:
    standin = GitHubStandIn(installation_token_lifetime_s=61)  # githubkit renews 60 s early
    url = await standin.start()
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        standin.add_user("mona", association="OWNER")
        standin.create_repo(REPO)
        issue = standin.create_issue(REPO, "Coordination", "", by="mona")
        standin.register_app(4242, public)
        installation = standin.install(4242, REPO)
        client = GitHub(
            AppInstallationAuthStrategy("4242", pem, installation),
            base_url=url,
            auto_retry=False,
            http_cache=False,
            cache_strategy=MemCacheStrategy(),
        )
        writer = GitHubWriter(client, per_minute=80, per_hour=500)
        await writer.create_comment(REPO, issue, "one <!-- f1 -->", "<!-- f1 -->", author=ME)
        await asyncio.sleep(1.5)  # the first installation token is now past its renewal
        await writer.create_comment(REPO, issue, "two <!-- f2 -->", "<!-- f2 -->", author=ME)
        assert len(standin.comments(REPO, issue)) == 2
        exchanges = [r for r in standin.request_log if r.path.endswith("/access_tokens")]
        assert len(exchanges) >= 2
    finally:
        await standin.stop()


async def test_a_403_that_is_no_rate_limit_fails_at_once(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    refusal = Fault(403, "Resource not accessible by integration", method="POST", times=100)
    standin.inject(refusal)
    writer = writer_for(standin, url, clock)
    with pytest.raises(GitHubUnavailable, match="403 \\(Resource not accessible by integration"):
        await writer.create_comment(REPO, issue, "x <!-- h -->", "<!-- h -->", author=ME)
    assert [r.method for r in standin.request_log] == ["POST"]
    assert clock.slept == []


async def test_nothing_waits_after_the_last_attempt(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    comment = standin.comment(REPO, issue, "status", by=BOT)
    standin.inject(Fault.server_error(503, method="PATCH", times=MAX_ATTEMPTS))
    writer = writer_for(standin, url, clock)
    with pytest.raises(GitHubUnavailable, match=f"{MAX_ATTEMPTS} times, the last with 503"):
        await writer.update_comment(REPO, comment, "edited")
    assert len(clock.slept) == MAX_ATTEMPTS - 1


async def test_a_rate_limit_holds_back_every_request_not_only_the_refused_one(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    standin.inject(Fault.secondary_rate_limit(retry_after=30, method="POST"))
    writer = writer_for(standin, url, clock)
    waited: list[float] = []

    async def read_meanwhile() -> None:  # another task reads while the post waits
        before = len(clock.slept)
        await writer.issue(REPO, issue)
        waited.extend(clock.slept[before:])

    clock.meanwhile = read_meanwhile
    await writer.create_comment(REPO, issue, "x <!-- g -->", "<!-- g -->", author=ME)
    assert waited == [30.0]
    refused = next(r for r in standin.request_log if r.status == 403)
    read = next(r for r in standin.request_log if r.method == "GET")
    assert read.time >= refused.time + 30


async def test_the_marker_is_looked_for_among_the_bridges_own_comments_only(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    marker = "<!-- agora:fact act-1 -->"
    writer = writer_for(standin, url, clock)
    standin.comment(REPO, issue, f"quoting {marker}", by="mona")
    assert await writer.find_comment(REPO, issue, marker, author=ME) is None
    ours = standin.comment(REPO, issue, f"{marker} decided", by=BOT)
    standin.comment(REPO, issue, f"{marker} planted later", by="mona")
    found = await writer.find_comment(REPO, issue, marker, author=ME)
    assert found is not None and found.id == ours


async def test_the_marker_is_looked_for_on_the_newest_pages(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    for n in range(3100):  # GitHub lists comments oldest first, 100 to a page
        standin.comment(REPO, issue, f"chatter {n}", by="mona")
    ours = standin.comment(REPO, issue, "<!-- m --> the newest", by=BOT)
    writer = writer_for(standin, url, clock)
    found = await writer.find_comment(REPO, issue, "<!-- m -->", author=ME)
    assert found is not None and found.id == ours
    assert len(standin.request_log) <= 1 + SEARCH_PAGES  # the first page, then the last ones


async def test_the_bridge_learns_its_login_from_its_token(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, _ = github
    assert await writer_for(standin, url, clock).authenticated_login() == BOT


async def test_a_post_after_an_unsure_attempt_looks_first_even_after_a_rate_limit(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    standin.inject(Fault.server_error(502, method="POST"))  # it may have landed
    standin.inject(Fault.too_many_requests(retry_after=1, method="POST"))
    writer = writer_for(standin, url, clock)
    await writer.create_comment(REPO, issue, "x <!-- i -->", "<!-- i -->", author=ME)
    methods = [r.method for r in standin.request_log]
    assert methods == ["POST", "GET", "POST", "GET", "POST"]  # a look before every post


async def test_a_comment_deleted_between_pages_hides_no_other(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    since = datetime.fromtimestamp(int(clock.now), UTC)
    made: list[int] = []
    for n in range(250):  # one a second: GitHub's times are to the second
        made.append(standin.comment(REPO, issue, f"chatter {n}", by="mona"))
        clock.now += 1
    writer = writer_for(standin, url, clock)
    listed: list[int] = []
    async for page in writer.comment_pages(REPO, since):
        listed += [comment.id for comment in page.comments]
        if len(listed) == PER_PAGE:  # someone deletes one of the first page meanwhile
            standin.delete_comment(REPO, made[10], by="mona")
    assert listed[:PER_PAGE] == made[:PER_PAGE]
    assert listed[PER_PAGE:] == made[PER_PAGE:]  # each once, none shifted out of sight


async def test_githubs_time_is_the_date_it_answers_with(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, _ = github
    clock.now += 3600.7
    said = await writer_for(standin, url, clock).github_time()
    assert said == datetime.fromtimestamp(int(clock.now), UTC)
