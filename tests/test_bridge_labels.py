"""Labels in: who may kill, resume and link, and a kill that never waits on GitHub."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agora.bridge.config import IssueRef
from agora.bridge.standin import Fault
from agora.bridge.standin.state import Delivery
from agora.core.envelope import Event, EventKind
from tests.bridge_harness import HUMAN, REPO, FakeClock, Loop, github_loop, until

QUIET = {"mirror": []}  # no status comments: only the inbound side at work
KILL = "agora:kill"


async def _changed_while_down(
    loop: Loop,
    clock: FakeClock,
    issue: int,
    label: str,
    changes: tuple[tuple[bool, str], ...],
) -> list[Delivery]:
    """With the bridge down, ``label`` added (True) or removed (False) on ``issue`` by
    each login in turn, seconds apart by GitHub's clock; their deliveries, all failed."""
    await loop.bridge.caught_up.wait()
    await loop.stop_bridge()
    before = len(loop.github.deliveries)
    for added, by in changes:
        clock.now += 5  # people act seconds apart
        change = loop.github.add_label if added else loop.github.remove_label
        change(REPO, issue, label, by=by)
    await loop.github.drain()
    return loop.github.deliveries[before:]


async def _delivered_late(loop: Loop, late: list[Delivery], order: str) -> None:
    """The bridge back, and GitHub asked to deliver ``late`` again, in ``order``."""
    await loop.restart_bridge()
    await loop.bridge.caught_up.wait()
    for delivery in late if order == "as-they-happened" else reversed(late):
        loop.github.redeliver(delivery.id)
        await loop.delivered()


def _refusals(loop: Loop) -> list[Event]:
    return [e for e in loop.host.events(EventKind.REFUSED) if e.actor == "bridge"]


async def test_a_bot_adding_the_kill_label_kills_nothing(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        loop.github.add_user("labeller[bot]", type="Bot", association="COLLABORATOR")
        loop.github.add_label(REPO, loop.issue, KILL, by="labeller[bot]")
        await loop.delivered()
        await until(lambda: bool(_refusals(loop)), what="the refusal")
        assert not loop.host.running().killswitch.state.stopped
        assert loop.host.events(EventKind.KILLED) == []
        [refused] = _refusals(loop)
    assert (refused.reason, refused.data["login"]) == ("bot-author", "labeller[bot]")
    assert refused.channel == "build-coord"


async def test_someone_without_write_access_cannot_resume_or_link_by_label(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        switch = loop.host.running().killswitch
        loop.github.add_label(REPO, loop.issue, KILL, by=HUMAN)
        await loop.delivered()
        await switch.wait_for(lambda state: bool(state.stopped))
        loop.github.remove_label(REPO, loop.issue, KILL, by="drive-by")
        other = loop.github.create_issue(REPO, "Secrets", "", by=HUMAN)
        loop.github.add_label(REPO, other, "agora:channel:secret-ops", by="drive-by")
        await loop.delivered()
        await until(lambda: len(_refusals(loop)) == 2, what="both refusals")
        assert switch.state.stopped  # still killed
        assert loop.bridge.links is not None
        assert await loop.bridge.links.channel_for(REPO, other) is None
        refused = _refusals(loop)
    assert [(e.reason, e.data["login"]) for e in refused] == [("not-allowed", "drive-by")] * 2
    assert "agora labels need write access" in refused[0].detail


@pytest.mark.parametrize("order", ["as-they-happened", "reversed"])
async def test_the_switch_follows_the_latest_permitted_label_event_in_any_order(
    tmp_path: Path, components: dict[str, Path], order: str
) -> None:
    # The bridge is down while a writer takes the kill label off, puts it back, and
    # someone without write access takes it off again (refused). However the late
    # deliveries come, the writer's last word holds: killed. Neither the labels on the
    # issue now (off, by that refused removal) nor a late "labeled" event may say else.
    clock = FakeClock()
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET, clock=clock) as loop:
        switch = loop.host.running().killswitch
        loop.github.add_label(REPO, loop.issue, KILL, by=HUMAN)
        await loop.delivered()
        await switch.wait_for(lambda state: bool(state.stopped))
        changes = ((False, HUMAN), (True, HUMAN), (False, "drive-by"))
        late = await _changed_while_down(loop, clock, loop.issue, KILL, changes)
        assert [d.action for d in late] == ["unlabeled", "labeled", "unlabeled"]
        await _delivered_late(loop, late, order)
        await until(lambda: bool(_refusals(loop)), what="the removal's refusal")
        assert switch.state.stopped  # still killed
    [refused] = _refusals(loop)
    assert (refused.reason, refused.data["login"]) == ("not-allowed", "drive-by")


async def test_a_label_added_removed_and_added_again_in_one_second_stays_killed(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # The first and the last deliveries are the very same bytes (GitHub's clock counts
    # seconds): neither may be taken for a replay of the other.
    clock = FakeClock()
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET, clock=clock) as loop:
        switch = loop.host.running().killswitch
        for change, stopped in (
            (loop.github.add_label, True),
            (loop.github.remove_label, False),
            (loop.github.add_label, True),
        ):
            change(REPO, loop.issue, KILL, by=HUMAN)
            await loop.delivered()
            await switch.wait_for(lambda state, stopped=stopped: bool(state.stopped) == stopped)
        first, _, last = [d for d in loop.github.deliveries if d.event == "issues"]
        assert first.body == last.body


@pytest.mark.parametrize("order", ["as-they-happened", "reversed"])
async def test_a_link_follows_the_latest_permitted_label_event_in_any_order(
    tmp_path: Path, components: dict[str, Path], order: str
) -> None:
    # A writer unlinks an issue while the bridge is down, and someone without write
    # access puts the label back (refused): the issue stays unlinked.
    clock = FakeClock()
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET, clock=clock) as loop:
        links = loop.bridge.links
        assert links is not None
        other = loop.github.create_issue(REPO, "Secrets", "", by=HUMAN)
        loop.github.add_label(REPO, other, "agora:channel:secret-ops", by=HUMAN)
        await loop.delivered()
        assert await links.channel_for(REPO, other) == "secret-ops"
        changes = ((False, HUMAN), (True, "drive-by"))
        late = await _changed_while_down(loop, clock, other, "agora:channel:secret-ops", changes)
        assert [d.action for d in late] == ["unlabeled", "labeled"]
        await _delivered_late(loop, late, order)
        await until(lambda: bool(_refusals(loop)), what="the label's refusal")
        links = loop.bridge.links
        assert links is not None
        assert await links.channel_for(REPO, other) is None
    [refused] = _refusals(loop)
    assert (refused.reason, refused.data["login"]) == ("not-allowed", "drive-by")


async def test_a_login_on_the_allow_list_may_kill_without_write_access(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    speakers = {"speakers": {"logins": ["drive-by"]}}
    async with github_loop(tmp_path, components, agents={}, bridge={**QUIET, **speakers}) as loop:
        loop.github.add_label(REPO, loop.issue, KILL, by="drive-by")
        await loop.delivered()
        await loop.host.running().killswitch.wait_for(lambda state: bool(state.stopped))
        [killed] = loop.host.events(EventKind.KILLED)
    assert killed.data["login"] == "drive-by"


async def test_a_kill_takes_effect_promptly_while_github_does_not_answer(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        await loop.bridge.caught_up.wait()
        # Every read of the issue's labels and of the sender's permission fails: retried
        # by GitHub's rules, each would wait a minute and more.
        for path in (r"/issues/\d+$", r"/collaborators/"):
            loop.github.inject(Fault.server_error(502, method="GET", path=path, times=1000))
        loop.github.add_label(REPO, loop.issue, KILL, by=HUMAN)
        await loop.github.drain()
        async with asyncio.timeout(20):
            await loop.host.running().killswitch.wait_for(
                lambda state: bool(state.stopped), timeout_s=20
            )
        await loop.host.settle()
        [killed] = loop.host.events(EventKind.KILLED)
    assert (killed.channel, killed.data["login"]) == ("build-coord", HUMAN)


async def test_a_second_link_label_is_refused_not_written_over(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        first = loop.github.create_issue(REPO, "Secrets", "", by=HUMAN)
        second = loop.github.create_issue(REPO, "More secrets", "", by=HUMAN)
        loop.github.add_label(REPO, first, "agora:channel:secret-ops", by=HUMAN)
        await loop.delivered()
        loop.github.add_label(REPO, second, "agora:channel:secret-ops", by=HUMAN)
        loop.github.add_label(REPO, first, "agora:channel:build-coord", by=HUMAN)
        await loop.delivered()
        loop.github.comment(REPO, second, "heard?", by=HUMAN)
        loop.github.comment(REPO, first, "heard here", by=HUMAN)
        await loop.delivered()
        assert loop.bridge.links is not None
        issues = await loop.bridge.links.issues()
        acts = loop.host.acts_by("bridge")
        refused = _refusals(loop)
    assert issues["secret-ops"] == IssueRef(REPO, first)
    assert issues["build-coord"] == IssueRef(REPO, loop.issue)
    assert [(a.channel, a.payload) for a in acts] == [("secret-ops", "heard here")]
    assert [e.reason for e in refused] == ["bad-link", "bad-link"]
    assert "already linked to octo/repo#" in refused[0].detail
    assert f"octo/repo#{first} is already linked to channel 'secret-ops'" in refused[1].detail
