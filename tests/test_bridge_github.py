"""The GitHub writer against the stand-in over real HTTP: pacing, GitHub's retry order,
no duplicate after a crash, and tokens that expire.

The stand-in and the writer share a fake clock: waiting a minute costs nothing, and the
stand-in's own rate limiter judges the writer by the same minutes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from githubkit import AppInstallationAuthStrategy, GitHub, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy

from agora.bridge.github import GitHubUnavailable, GitHubWriter
from agora.bridge.standin import Fault, GitHubStandIn

REPO = "octo/repo"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
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
        await writer.create_comment(REPO, issue, f"note {n} <!-- m{n} -->", f"<!-- m{n} -->")
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
    await writer.create_comment(REPO, issue, "hello <!-- a -->", "<!-- a -->")
    assert clock.slept == [30.0]
    assert marked(standin, issue, "<!-- a -->") == 1


async def test_a_spent_rate_limit_waits_for_its_reset(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    standin.inject(Fault.primary_rate_limit(reset_in_s=300, method="POST"))
    writer = writer_for(standin, url, clock)
    await writer.create_comment(REPO, issue, "later <!-- b -->", "<!-- b -->")
    assert 300 <= clock.slept[0] <= 302
    assert marked(standin, issue, "<!-- b -->") == 1


async def test_5xx_backs_off_at_least_a_minute_doubling(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock
) -> None:
    standin, url, issue = github
    standin.inject(Fault.server_error(502, method="POST", times=2))
    writer = writer_for(standin, url, clock)
    await writer.create_comment(REPO, issue, "steady <!-- c -->", "<!-- c -->")
    assert clock.slept[:2] == [60.0, 120.0]
    assert marked(standin, issue, "<!-- c -->") == 1


@pytest.mark.parametrize("drop", [True, False])
async def test_a_crash_after_github_applied_a_post_leaves_no_duplicate(
    github: tuple[GitHubStandIn, str, int], clock: FakeClock, drop: bool
) -> None:
    standin, url, issue = github
    standin.inject(Fault.crash_after_apply(method="POST", drop=drop))
    writer = writer_for(standin, url, clock)
    posted = await writer.create_comment(REPO, issue, "decided <!-- d -->", "<!-- d -->")
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
        await writer.create_comment(REPO, issue, "x <!-- e -->", "<!-- e -->")


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
        await writer.create_comment(REPO, issue, "one <!-- f1 -->", "<!-- f1 -->")
        await asyncio.sleep(1.5)  # the first installation token is now past its renewal
        await writer.create_comment(REPO, issue, "two <!-- f2 -->", "<!-- f2 -->")
        assert len(standin.comments(REPO, issue)) == 2
        exchanges = [r for r in standin.request_log if r.path.endswith("/access_tokens")]
        assert len(exchanges) >= 2
    finally:
        await standin.stop()
