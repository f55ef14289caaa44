"""Decisions and summaries out to the linked issue; one status comment edited in place."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import pytest

from agora.bridge.config import IssueRef
from agora.bridge.github import GitHubWriter, make_client
from agora.bridge.links import Links
from agora.bridge.mirror import Mirror, fact_marker, quoted, status_key, status_marker
from agora.bridge.standin import Fault
from agora.bridge.standin.state import Comment
from agora.cli.workspace import AgentPlan
from agora.core.acts import Performative
from agora.core.envelope import Act
from tests.bridge_harness import BOT, HUMAN, REPO, FakeClock, Loop, github_loop, mirrored

VOTERS = {
    "alice-voter": {"approve": "tests pass", "default": "reject"},
    "bob-voter": {"approve": "reviewed", "default": "accept"},
    "carol-voter": {"veto": "friday", "default": "accept"},
}
AGREEMENT = {
    "coordinator": AgentPlan(
        "coordinator",
        ("build-coord",),
        {"voters": ",".join(VOTERS), "quorum": "2", "deadline-ms": "30000"},
    ),
    **{n: AgentPlan("voter", ("build-coord",), rule) for n, rule in VOTERS.items()},
    "summarizer": AgentPlan("summarizer", ("build-coord",)),
}
FAST = {"pacing": {"status_every_s": 0.2}}
INFORM = Performative.INFORM


async def test_a_human_request_becomes_a_vote_whose_decision_lands_on_the_issue(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents=AGREEMENT, bridge=FAST) as loop:
        loop.github.comment(REPO, loop.issue, "/agora request ship v0.3: tests pass", by=HUMAN)
        await mirrored(loop)
        comments = loop.github.comments(REPO, loop.issue)
        ours = [c for c in comments if c.user.login == BOT]
        decision = loop.host.acts_by("coordinator")[-1]
        summary = loop.host.acts_by("summarizer")[-1]
        bodies = [c.body for c in ours]
        assert sum(fact_marker(decision.id) in b for b in bodies) == 1
        assert sum(fact_marker(summary.id) in b for b in bodies) == 1
        [status] = [b for b in bodies if status_marker("build-coord") in b]
        assert "Decision: “accepted”" in next(b for b in bodies if fact_marker(decision.id) in b)
        assert "Last decision: “accepted”" in status
        assert f"up to act `{summary.id}`" in status or summary.id in status
        # The bridge's own comments came back as webhooks and were not injected.
        assert {a.sender for a in loop.host.acts_by("bridge")} == {"bridge"}
        assert len(loop.host.acts_by("bridge")) == 1


async def test_the_status_comment_is_found_again_after_a_restart(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    chatty = {"synth-agent": AgentPlan("chatty", ("build-coord",))}
    async with github_loop(tmp_path, components, agents=chatty, bridge=FAST) as loop:
        loop.github.comment(REPO, loop.issue, "one", by=HUMAN)
        await mirrored(loop)
        bucket = await loop.host.js.key_value("agora-bridge")
        key = status_key(IssueRef(REPO, loop.issue), "build-coord")
        await bucket.delete(key)  # forget it: only the marker is left
        await loop.restart_bridge()
        loop.github.comment(REPO, loop.issue, "two", by=HUMAN)
        await mirrored(loop)
        statuses = [
            c
            for c in loop.github.comments(REPO, loop.issue)
            if status_marker("build-coord") in c.body
        ]
        assert len(statuses) == 1
        assert "4 acts" in statuses[0].body


async def test_a_burst_of_500_acts_is_mirrored_paced_and_complete(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    clock = FakeClock()
    announcer = {"coordinator": AGREEMENT["coordinator"]}  # an agent's key signs announcements
    async with github_loop(
        tmp_path, components, agents=announcer, bridge=FAST, clock=clock
    ) as loop:
        decisions = []
        for n in range(500):
            if n % 5 == 4:
                body = {
                    "kind": "decision",
                    "topic": f"t{n}",
                    "outcome": "accepted",
                    "votes": {},
                    "quorum": 1,
                }
                decisions.append(
                    await loop.host.inject(
                        "build-coord", json.dumps(body), act=INFORM, hops=1, sender="coordinator"
                    )
                )
            else:
                await loop.host.inject("build-coord", f"chatter {n}", act=INFORM, hops=1)
        await mirrored(loop, timeout_s=120)
        comments = loop.github.comments(REPO, loop.issue)
        writer = loop.bridge.writer
        assert writer is not None
    bodies = [c.body for c in comments]
    assert all(sum(fact_marker(d.id) in b for b in bodies) == 1 for d in decisions)
    [status] = [b for b in bodies if status_marker("build-coord") in b]
    assert "500 acts" in status
    assert loop.github.peak_creations_per_minute() <= 80
    assert clock.now - 1_800_000_000.0 >= 60  # 101 comments cannot go out in one minute
    assert writer.retries == 0  # GitHub never had to refuse a write


async def test_a_crash_between_posting_and_recording_leaves_no_duplicate(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    announcer = {"coordinator": AGREEMENT["coordinator"]}
    async with github_loop(tmp_path, components, agents=announcer, bridge=FAST) as loop:
        await loop.bridge.stop()  # the bridge is down while the decision is said
        body = {"kind": "decision", "topic": "t", "outcome": "accepted", "votes": {}, "quorum": 1}
        decision = await loop.host.inject(
            "build-coord", json.dumps(body), act=INFORM, hops=1, sender="coordinator"
        )
        await loop.host.settle()
        # What a crash right after GitHub accepted the comment leaves behind: the intent
        # is saved, the comment exists, its id was never recorded.
        bucket = await loop.host.js.key_value("agora-bridge")
        await bucket.put(f"posting.{decision.id}", b"1")
        loop.github.comment(
            REPO, loop.issue, f"{fact_marker(decision.id)}\nDecision: accepted", by=BOT
        )
        await loop.restart_bridge()
        await mirrored(loop)
        marked = [
            c for c in loop.github.comments(REPO, loop.issue) if fact_marker(decision.id) in c.body
        ]
        assert len(marked) == 1
        assert loop.bridge.mirror is not None and loop.bridge.mirror.posted == 0
        posted = await bucket.get(f"posted.{decision.id}")
        assert posted.value == str(marked[0].id).encode()


def test_agent_text_cannot_ping_embed_or_plant_a_marker() -> None:
    hostile = "ship @octo/security-team ![x](https://evil.example/p.png) <!-- agora:status -->"
    shown = quoted(hostile, limit=500)
    assert "@octo" not in shown and "@\u200bocto" in shown
    assert "![" not in shown and "](" not in shown
    assert "<!--" not in shown and "agora:status" in shown
    assert "\n" not in quoted("two\nlines\n\n# heading")


def test_agent_text_leaves_no_url_host_or_reference_for_github_to_link() -> None:
    said = "see https://evil.example/x, HTTP://evil.example, WWW.evil.example and gh-123"
    shown = quoted(said, limit=500)
    assert "://" not in shown
    assert "www." not in shown.lower()
    assert "gh-123" not in shown.lower()
    assert shown.replace("\u200b", "") == f"“{said}”"  # the same text on screen


def test_agent_text_cannot_end_the_bridges_quote_and_add_words_of_its_own() -> None:
    shown = quoted("x” (act 'act-real-1') signed by maintainer “y")
    assert shown == "“x\" (act 'act-real-1') signed by maintainer \"y”"


ANNOUNCER = {"coordinator": AGREEMENT["coordinator"]}  # an agent's key signs announcements
CHATTY = {"synth-agent": AgentPlan("chatty", ("build-coord",))}


async def decide(loop: Loop, topic: str) -> Act:
    body = {"kind": "decision", "topic": topic, "outcome": "accepted", "votes": {}, "quorum": 1}
    return await loop.host.inject(
        "build-coord", json.dumps(body), act=INFORM, hops=1, sender="coordinator"
    )


def marked(loop: Loop, marker: str, issue: int | None = None) -> list[Comment]:
    return [c for c in loop.github.comments(REPO, issue or loop.issue) if marker in c.body]


async def until(condition: Callable[[], bool], *, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.05)


def another_mirror(loop: Loop) -> Mirror:
    """A mirror as a second bridge process would run it: its own GitHub client."""
    config = loop.bridge.config
    return Mirror(
        js=loop.host.js,
        writer=GitHubWriter(make_client(config), per_minute=80, per_hour=500),
        links=Links(loop.host.js, config.links, set(loop.host.session.config.channels)),
        registry=loop.host.session.registry,
        config=config,
    )


async def test_two_bridges_post_each_announcement_and_the_status_once(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents=ANNOUNCER, bridge=FAST) as loop:
        await loop.bridge.stop()
        decisions = [await decide(loop, f"t{n}") for n in range(3)]
        await loop.host.settle()
        mirrors = [another_mirror(loop), another_mirror(loop)]
        try:
            await asyncio.gather(*(mirror.start() for mirror in mirrors))
            await until(lambda: all(marked(loop, fact_marker(d.id)) for d in decisions))
            await until(lambda: all(mirror.idle() for mirror in mirrors))
        finally:
            for mirror in mirrors:
                await mirror.stop()
        assert all(len(marked(loop, fact_marker(d.id))) == 1 for d in decisions)
        assert len(marked(loop, status_marker("build-coord"))) == 1
        assert sum(mirror.posted for mirror in mirrors) == len(decisions)


async def test_an_announcement_that_failed_is_posted_later_in_order_without_a_restart(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    quiet = {"pacing": {"status_every_s": 3600}}  # no status comment: only announcements
    async with github_loop(tmp_path, components, agents=ANNOUNCER, bridge=quiet) as loop:
        loop.github.inject(Fault(422, "Validation Failed", method="POST", path="/comments$"))
        first, second = [await decide(loop, topic) for topic in ("first", "second")]
        await until(lambda: len(marked(loop, fact_marker(second.id))) == 1)
        [said_first] = marked(loop, fact_marker(first.id))
        [said_second] = marked(loop, fact_marker(second.id))
        assert said_first.id < said_second.id  # in the order they were said
        assert loop.github.pending_faults == []  # the first try was refused indeed


async def test_a_relinked_channel_gets_a_status_comment_of_its_own(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents=CHATTY, bridge=FAST) as loop:
        loop.github.comment(REPO, loop.issue, "one", by=HUMAN)
        await mirrored(loop)
        second = loop.github.create_issue(REPO, "Coordination, again", by=HUMAN)
        links = MappingProxyType({"build-coord": IssueRef(REPO, second)})
        await loop.restart_bridge(links=links)
        await mirrored(loop)
        status = status_marker("build-coord")
        assert len(marked(loop, status, second)) == 1
        assert len(marked(loop, status)) == 1  # the first issue keeps its own


async def test_a_deleted_issue_is_left_alone_and_said_so_once(
    tmp_path: Path, components: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agora.bridge.mirror")
    async with github_loop(tmp_path, components, agents=CHATTY, bridge=FAST) as loop:
        loop.github.comment(REPO, loop.issue, "one", by=HUMAN)
        await mirrored(loop)
        deleted = rf"/issues/(comments/\d+|{loop.issue})(/|$)"  # the issue, its comments
        loop.github.inject(Fault(404, "Not Found", path=deleted, times=100_000))
        await loop.host.inject("build-coord", "after the issue was deleted", act=INFORM, hops=1)
        await asyncio.sleep(1.5)  # several status rounds
        asked = len(loop.github.request_log)
        await loop.host.inject("build-coord", "and later", act=INFORM, hops=1)
        await asyncio.sleep(1.5)
        assert len(loop.github.request_log) == asked  # nothing more asked of GitHub
    said = [r for r in caplog.records if "not mirrored there" in r.getMessage()]
    assert len(said) == 1
    assert not [r for r in caplog.records if r.exc_info and r.name == "agora.bridge.mirror"]
