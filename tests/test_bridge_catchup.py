"""The catch-up: what was said on a linked issue while no webhook came becomes an act,
once; what was said before the link, or while the issue was unlinked, never does. A
kill label added or taken off while no webhook came kills or resumes the channel, by
the rules a webhook's label event follows, once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.js.errors import KeyNotFoundError

from agora.bridge.catchup import WATERMARK_MARGIN
from agora.bridge.github import from_stamp
from agora.bridge.links import watermark_key
from agora.bridge.streams import BRIDGE_BUCKET
from agora.core.envelope import Event, EventKind
from tests.bridge_harness import HUMAN, REPO, FakeClock, Loop, github_loop, until

QUIET = {"mirror": []}  # no status comments: only the inbound side at work
LINK = "agora:channel:secret-ops"
KILL = "agora:kill"
A_SECOND = 1.1  # GitHub's times are to the second


def said(loop: Loop) -> list[tuple[str, str]]:
    return [(act.channel, act.payload) for act in loop.host.acts_by("bridge")]


def refusals(loop: Loop) -> list[Event]:
    return [e for e in loop.host.events(EventKind.REFUSED) if e.actor == "bridge"]


def failed(loop: Loop, action: str) -> list[int]:
    """The status codes of the deliveries whose action is ``action``, oldest first."""
    return [d.status_code for d in loop.github.deliveries if d.action == action]


def event_listings(loop: Loop) -> int:
    """How many times the bridge has listed the repository's issue events."""
    return sum(r.path.endswith("/issues/events") for r in loop.github.request_log)


async def come_back(loop: Loop) -> None:
    """Start the bridge again and wait until it caught up and the host settled."""
    await loop.github.drain()
    await loop.restart_bridge()
    await loop.bridge.caught_up.wait()
    await loop.delivered()


async def test_a_comment_from_before_the_link_edited_while_down_is_not_injected(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        other = loop.github.create_issue(REPO, "Secrets", "", by=HUMAN)
        old = loop.github.comment(REPO, other, "history, before the link", by=HUMAN)
        await asyncio.sleep(A_SECOND)
        loop.github.add_label(REPO, other, LINK, by=HUMAN)
        await loop.delivered()
        await loop.stop_bridge()
        loop.github.edit_comment(REPO, old, "history, edited later", by=HUMAN)
        loop.github.comment(REPO, other, "said while down", by=HUMAN)
        await come_back(loop)
        assert said(loop) == [("secret-ops", "said while down")]


async def test_a_comment_made_while_the_issue_was_unlinked_is_not_injected_after_a_relink(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        other = loop.github.create_issue(REPO, "Secrets", "", by=HUMAN)
        loop.github.add_label(REPO, other, LINK, by=HUMAN)
        await loop.delivered()
        loop.github.remove_label(REPO, other, LINK, by=HUMAN)
        await loop.delivered()
        loop.github.comment(REPO, other, "said while unlinked: not for agents", by=HUMAN)
        await loop.delivered()
        await asyncio.sleep(A_SECOND)
        loop.github.add_label(REPO, other, LINK, by=HUMAN)
        await loop.delivered()
        await loop.stop_bridge()
        await come_back(loop)
        assert said(loop) == []


async def test_a_comment_from_before_the_link_delivered_late_is_not_injected(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        other = loop.github.create_issue(REPO, "Secrets", "", by=HUMAN)
        await loop.delivered()
        await loop.stop_bridge()
        loop.github.comment(REPO, other, "said on an unlinked issue", by=HUMAN)
        await loop.github.drain()
        [failed] = [d for d in loop.github.deliveries if d.status_code == 0]
        await come_back(loop)
        await asyncio.sleep(A_SECOND)
        loop.github.add_label(REPO, other, LINK, by=HUMAN)
        await loop.delivered()
        loop.github.redeliver(failed.id)  # the failed delivery, asked for again
        await loop.delivered()
        assert said(loop) == []
        loop.github.comment(REPO, other, "said after the link", by=HUMAN)
        await loop.delivered()
        assert said(loop) == [("secret-ops", "said after the link")]


async def test_a_linked_repository_github_no_longer_has_does_not_stop_the_catch_up(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    links = {"links": {"secret-ops": "octo/gone#5", "build-coord": f"{REPO}#1"}}
    async with github_loop(tmp_path, components, agents={}, bridge={**QUIET, **links}) as loop:
        assert loop.issue == 1
        await loop.bridge.caught_up.wait()
        await loop.stop_bridge()
        loop.github.comment(REPO, loop.issue, "said while down", by=HUMAN)
        await come_back(loop)
        assert said(loop) == [("build-coord", "said while down")]


async def test_a_comment_whose_webhook_never_came_is_caught_up_while_the_bridge_runs(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(
        tmp_path, components, agents={}, bridge=QUIET, catch_up_every_s=0.3
    ) as loop:
        await loop.bridge.caught_up.wait()
        loop.github.fail_deliveries(event="issue_comment")
        loop.github.comment(REPO, loop.issue, "said, never delivered", by=HUMAN)
        await loop.github.drain()
        assert failed(loop, "created") == [0]
        await until(lambda: bool(said(loop)), what="the comment caught up")
        await loop.host.settle()
        assert said(loop) == [("build-coord", "said, never delivered")]


async def test_the_watermark_moves_forward_while_the_bridge_runs(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    clock = FakeClock()
    async with github_loop(
        tmp_path, components, agents={}, bridge=QUIET, clock=clock, catch_up_every_s=0.2
    ) as loop:
        await loop.bridge.caught_up.wait()
        bucket = await loop.host.js.key_value(BRIDGE_BUCKET)
        key = watermark_key(REPO, loop.issue)

        async def watermark() -> datetime | None:
            try:
                return from_stamp(((await bucket.get(key)).value or b"").decode())
            except KeyNotFoundError:
                return None

        clock.now += 3600  # an hour of GitHub's time, and nothing said
        expected = datetime.fromtimestamp(int(clock.now), UTC) - WATERMARK_MARGIN
        deadline = asyncio.get_running_loop().time() + 20
        while (moved := await watermark()) is None or moved < expected:
            assert asyncio.get_running_loop().time() < deadline, f"the watermark is {moved}"
            await asyncio.sleep(0.1)
        assert moved - expected < timedelta(seconds=5)


# -- label events ------------------------------------------------------------------------


async def test_the_kill_label_added_while_the_bridge_is_down_kills_when_it_comes_back(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        await loop.bridge.caught_up.wait()
        await loop.stop_bridge()
        loop.github.add_label(REPO, loop.issue, KILL, by=HUMAN)
        await loop.github.drain()
        assert failed(loop, "labeled") == [0]
        await come_back(loop)
        await loop.host.running().killswitch.wait_for(lambda state: bool(state.stopped))
        [killed] = loop.host.events(EventKind.KILLED)
    assert (killed.actor, killed.reason, killed.channel) == ("bridge", "label", "build-coord")
    assert killed.data["login"] == HUMAN


async def test_the_kill_label_taken_off_while_the_bridge_is_down_resumes_when_it_comes_back(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        switch = loop.host.running().killswitch
        loop.github.add_label(REPO, loop.issue, KILL, by=HUMAN)
        await loop.delivered()
        await switch.wait_for(lambda state: bool(state.stopped))
        await loop.stop_bridge()
        loop.github.remove_label(REPO, loop.issue, KILL, by=HUMAN)
        await loop.github.drain()
        assert failed(loop, "unlabeled") == [0]
        await come_back(loop)
        await switch.wait_for(lambda state: not state.stopped)
        [resumed] = loop.host.events(EventKind.RESUMED)
        killed = loop.host.events(EventKind.KILLED)
    assert (resumed.actor, resumed.data["login"]) == ("bridge", HUMAN)
    assert len(killed) == 1  # the kill its webhook brought is not taken again


async def test_a_kill_label_added_without_write_access_while_the_bridge_is_down_is_refused(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        await loop.bridge.caught_up.wait()
        await loop.stop_bridge()
        loop.github.add_label(REPO, loop.issue, KILL, by="drive-by")
        await loop.github.drain()
        assert failed(loop, "labeled") == [0]
        await come_back(loop)
        await until(lambda: bool(refusals(loop)), what="the refusal")
        assert not loop.host.running().killswitch.state.stopped
        assert loop.host.events(EventKind.KILLED) == []
        [refused] = refusals(loop)
    assert (refused.reason, refused.channel) == ("not-allowed", "build-coord")
    assert (refused.data["login"], refused.data["label"]) == ("drive-by", KILL)
    assert refused.data["issue"] == f"{REPO}#{loop.issue}"
    assert "agora labels need write access" in refused.detail


async def test_a_kill_label_whose_webhook_failed_is_caught_up_while_the_bridge_runs(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(
        tmp_path, components, agents={}, bridge=QUIET, catch_up_every_s=0.3
    ) as loop:
        await loop.bridge.caught_up.wait()
        loop.github.fail_deliveries(event="issues", action="labeled")
        loop.github.add_label(REPO, loop.issue, KILL, by=HUMAN)
        await loop.github.drain()
        assert failed(loop, "labeled") == [0]
        switch = loop.host.running().killswitch
        await switch.wait_for(lambda state: bool(state.stopped), timeout_s=20)
        listed = event_listings(loop)
        await until(lambda: event_listings(loop) >= listed + 2, what="two passes more")
        await loop.host.settle()
        [killed] = loop.host.events(EventKind.KILLED)
    assert (killed.actor, killed.data["login"]) == ("bridge", HUMAN)


async def test_a_label_event_its_webhook_brought_is_not_judged_again_by_the_catch_up(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(
        tmp_path, components, agents={}, bridge=QUIET, catch_up_every_s=0.3
    ) as loop:
        await loop.bridge.caught_up.wait()
        loop.github.add_label(REPO, loop.issue, KILL, by="drive-by")
        await loop.delivered()
        await until(lambda: bool(refusals(loop)), what="the refusal")
        listed = event_listings(loop)
        await until(lambda: event_listings(loop) >= listed + 2, what="two passes more")
        await loop.host.settle()
        assert len(refusals(loop)) == 1


async def test_a_kill_label_added_again_within_a_second_whose_webhook_failed_is_caught_up(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # Added, taken off and added again by one person within one second of GitHub's
    # clock: the first and the last events say the same, and only the last one's
    # delivery failed. It is told apart from the first by being the second such event.
    clock = FakeClock()
    async with github_loop(
        tmp_path, components, agents={}, bridge=QUIET, clock=clock, catch_up_every_s=0.3
    ) as loop:
        switch = loop.host.running().killswitch
        await loop.bridge.caught_up.wait()
        for change, stopped in ((loop.github.add_label, True), (loop.github.remove_label, False)):
            change(REPO, loop.issue, KILL, by=HUMAN)
            await loop.delivered()
            await switch.wait_for(lambda state, stopped=stopped: bool(state.stopped) == stopped)
        loop.github.fail_deliveries(event="issues", action="labeled")
        loop.github.add_label(REPO, loop.issue, KILL, by=HUMAN)
        await loop.github.drain()
        assert failed(loop, "labeled") == [202, 0]
        await switch.wait_for(lambda state: bool(state.stopped), timeout_s=20)
        await loop.host.settle()
        assert len(loop.host.events(EventKind.KILLED)) == 2
