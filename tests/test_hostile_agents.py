"""Hostile agents, one rule broken at a time: the host stops each, records why, and the
well-behaved agent beside it goes on.

The ``hostile`` component (tests/agents/hostile) misbehaves as its ``mode`` setting says.
Each test runs it next to a chatty ``synth-agent`` on the same channel.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path

import pytest

from agora.cli.workspace import AgentPlan
from agora.core.acts import Performative
from agora.core.envelope import Act, EventKind
from agora.core.signing import MAX_ENVELOPE_BYTES
from agora.core.spine import CONTROL_BUCKET
from agora.host import service
from agora.host.record_store import MAX_OUTBOX_PARTS
from agora.host.runner import MIN_WAKE_MS
from tests.harness import Harness, running_host

FAST = {"timeout_ms": 300, "memory_mb": 32}
# for a mode whose one call does real work (10,000 messages, a megabyte of text): on a
# loaded machine it must meet the control under test, not the time budget
ROOMY = {"timeout_ms": 10_000, "memory_mb": 32}


def agents(mode: str, limits: dict[str, int] = FAST) -> dict[str, AgentPlan]:
    return {
        "hostile-agent": AgentPlan("hostile", ("build-coord",), {"mode": mode}, limits),
        "synth-agent": AgentPlan("chatty", ("build-coord",)),
    }


async def provoke(harness: Harness, hops: int = 2) -> Act:
    seed = await harness.inject("build-coord", "please answer", hops=hops)
    await harness.settle()
    return seed


def witness_went_on(harness: Harness, seed: Act) -> None:
    replies = [a for a in harness.acts_by("synth-agent") if a.in_reply_to == seed.id]
    assert len(replies) == 1


@pytest.mark.parametrize(
    ("mode", "fault"),
    [("loop", {"timeout", "fuel"}), ("membomb", {"memory"}), ("trap", {"trap"})],
)
async def test_a_faulting_agent_is_quarantined_and_the_others_go_on(
    tmp_path: Path, components: dict[str, Path], mode: str, fault: set[str]
) -> None:
    async with running_host(tmp_path, components, agents=agents(mode)) as h:
        seed = await provoke(h)
        host = h.running()
        assert host.runners["hostile-agent"].counters["faults"] == 1
        stopped = host.killswitch.state.stopped["agent.hostile-agent"]
        assert stopped.kind is EventKind.QUARANTINED
        assert stopped.reason in fault
        # Quarantined: the next message is refused for it, delivered to the other.
        later = await provoke(h)
        assert later.id not in {a.id for a in h.delivered_to("hostile-agent")}
        assert host.runners["hostile-agent"].counters["quarantined"] >= 1
        witness_went_on(h, seed)
        witness_went_on(h, later)
        assert not h.acts_by("hostile-agent")
    [recorded] = h.events(EventKind.FAULT, agent="hostile-agent")
    assert recorded.reason in fault
    if mode == "trap":
        assert "ValueError" in recorded.detail or "RuntimeError" in recorded.detail
    assert len(h.events(EventKind.QUARANTINED, agent="hostile-agent")) == 1


async def test_an_agent_whose_sandbox_cannot_be_made_is_quarantined_and_the_others_go_on(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not a fault of wasmtime's (which the sandbox names) but anything else that goes
    # wrong making the store: the agent's loop must not end with it, unseen.
    made = service.Sandbox

    def sandbox(**arguments: object) -> object:
        if arguments["agent"] == "hostile-agent":
            raise RuntimeError("no store today")
        return made(**arguments)  # type: ignore[arg-type]

    monkeypatch.setattr(service, "Sandbox", sandbox)
    async with running_host(tmp_path, components, agents=agents("print")) as h:
        seed = await provoke(h)
        host = h.running()
        stopped = host.killswitch.state.stopped["agent.hostile-agent"]
        assert (stopped.kind, stopped.reason) == (EventKind.QUARANTINED, "start")
        assert not host.runners["hostile-agent"].counters["loop-failed"]
        witness_went_on(h, seed)
    [fault] = h.events(EventKind.FAULT, agent="hostile-agent")
    assert fault.reason == "start"
    assert "RuntimeError: no store today" in fault.detail


async def test_a_quarantined_agent_runs_again_after_resume(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents=agents("trap")) as h:
        await provoke(h)
        await h.switch(EventKind.RESUMED, agent="hostile-agent")
        host = h.running()
        await host.killswitch.wait_for(lambda s: not s.blocks_agent("hostile-agent"))
        await provoke(h)
        # A fresh sandbox ran the call (and trapped again: it is still hostile).
        assert host.runners["hostile-agent"].counters["faults"] == 2


async def test_an_agent_blocked_in_a_host_call_is_given_up_on_and_holds_one_thread_at_most(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # A sleep blocks inside WASI, where the epoch deadline cannot reach it: the watchdog
    # gives up on the call and the agent is quarantined; its thread stays held.
    async with running_host(tmp_path, components, agents=agents("sleep")) as h:
        seed = await provoke(h)
        host = h.running()
        stopped = host.killswitch.state.stopped["agent.hostile-agent"]
        assert (stopped.kind, stopped.reason) == (EventKind.QUARANTINED, "blocked")
        witness_went_on(h, seed)
        held = agent_threads("hostile-agent")
        assert held >= 1
        # Resumed while its thread is still held, it is not started a second time.
        await h.switch(EventKind.RESUMED, agent="hostile-agent")
        await host.killswitch.wait_for(lambda s: not s.blocks_agent("hostile-agent"))
        later = await provoke(h)
        witness_went_on(h, later)
        assert host.killswitch.state.blocks_agent("hostile-agent")
        assert agent_threads("hostile-agent") == held
    first, second = h.events(EventKind.FAULT, agent="hostile-agent")
    assert (first.reason, second.reason) == ("blocked", "blocked")
    assert "blocked in a host call" in first.detail
    assert "still holds its thread" in second.detail
    assert not h.acts_by("hostile-agent")


async def test_an_agent_cannot_keep_a_conversation_going_on_its_own(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # It asks to be woken at once and speaks on every call, in reply and not: each
    # message spends a hop of what it draws on, and timer calls come no faster than
    # MIN_WAKE_MS apart, so it soon has nothing left to spend.
    plan = AgentPlan("hostile", ("build-coord",), {"mode": "spin"})
    async with running_host(tmp_path, components, agents={"hostile-agent": plan}) as h:
        seed = await h.inject("build-coord", "please answer", hops=3)
        runner = h.running().runners["hostile-agent"]
        for _ in range(400):  # the first call may wait for the component's compilation
            if runner.counters["hops-spent"] >= 2:
                break
            await asyncio.sleep(0.05)
        calls = runner.counters["calls"]
        await asyncio.sleep(1.0)
        assert 1 <= runner.counters["calls"] - calls <= 1000 / MIN_WAKE_MS + 1
        # With every channel it was granted killed, it is not woken at all.
        await h.switch(EventKind.KILLED, channel="build-coord")
        await h.running().killswitch.wait_for(lambda s: s.blocks("hostile-agent", "build-coord"))
        calls = runner.counters["calls"]
        await asyncio.sleep(1.0)
        assert runner.counters["calls"] == calls
    spoken = h.acts_by("hostile-agent")
    # 3 hops on the seed: 2 replies to it (2 and 1 hops left), 1 more with 0; the
    # same again drawing on the conversation.
    assert sorted(a.hops for a in spoken if a.in_reply_to == seed.id) == [0, 1, 2]
    assert sorted(a.hops for a in spoken if a.in_reply_to is None) == [0, 1, 2]
    # what each call had no budget left for is one fact per call, not one per message
    spent = [e for e in h.events(EventKind.REFUSED) if e.reason == "hops-spent"]
    assert len(spent) <= runner.counters["calls"] < runner.counters["hops-spent"]
    assert all(e.detail.startswith("2 messages refused; the first: ") for e in spent[1:])
    assert len(spoken) == 6
    refused = {e.reason for e in h.events(EventKind.REFUSED, agent="hostile-agent")}
    assert refused == {"hops-spent", "self-echo"}  # its own messages are not handed back


def agent_threads(agent: str) -> int:
    return [t.name for t in threading.enumerate()].count(f"agora-agent-{agent}")


async def test_the_sandbox_grants_no_filesystem_environment_or_network(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        plan = AgentPlan("hostile", ("build-coord",), {"mode": "probe", "port": str(port)})
        async with running_host(tmp_path, components, agents={"hostile-agent": plan}) as h:
            seed = await provoke(h)
        with pytest.raises(TimeoutError):
            listener.accept()
    [report] = [a.payload for a in h.acts_by("hostile-agent") if a.in_reply_to == seed.id]
    found = dict(item.split("=") for item in report.split())
    assert found == {
        "env": "0",
        "read": "FileNotFoundError",
        "list": "FileNotFoundError",
        "write": "FileNotFoundError",
        "connect": "PermissionError",
        "resolve": "gaierror",
    }


@pytest.mark.parametrize(
    ("mode", "counter"),
    [
        ("emit-ungranted", "emit-ungranted"),
        ("emit-control", "emit-malformed"),
        ("emit-malformed", "emit-malformed"),
        ("forge-sender", "forged-sender"),
        ("oversized", "payload-too-large"),
        ("bad-reply", "unknown-reply"),
    ],
)
async def test_a_refused_emit_is_counted_recorded_and_never_published(
    tmp_path: Path, components: dict[str, Path], mode: str, counter: str
) -> None:
    async with running_host(tmp_path, components, agents=agents(mode)) as h:
        seed = await provoke(h, hops=1)  # the witness's reply has no hops left
        runner = h.running().runners["hostile-agent"]
        assert runner.counters[counter] == 1
        assert runner.counters["emitted"] == 0
        witness_went_on(h, seed)
        control = await h.js.key_value(CONTROL_BUCKET)
        assert await control.status()  # the bucket exists ...
        assert (await h.js.stream_info("KV_" + CONTROL_BUCKET)).state.messages == 0  # ... untouched
    assert not h.acts_by("hostile-agent")
    forged = [a for a in h.acts_by("maintainer") if a.id != seed.id]
    assert forged == []  # nothing went out under the maintainer's name
    refusals = [
        e for e in h.events(EventKind.REFUSED, agent="hostile-agent") if e.reason == counter
    ]
    assert len(refusals) == 1
    assert not [f for f in h.facts() if isinstance(f, Act) and f.channel == "secret-ops"]


async def test_an_agent_cannot_raise_its_hop_budget(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents=agents("raise-hops")) as h:
        seed = await provoke(h, hops=3)
        assert h.running().runners["hostile-agent"].counters["hops-lowered"] >= 1
    hostile = [a for a in h.acts_by("hostile-agent") if a.in_reply_to == seed.id]
    assert [a.hops for a in hostile] == [2]
    assert all(a.hops < 3 for a in h.acts_by("hostile-agent"))


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("flood", "10000 messages in one call; the limit is 512"),
        # more than any envelope holds: refused before it is copied out of the guest
        ("huge", f"a payload of 1000000 bytes in one call; the limit is {MAX_ENVELOPE_BYTES}"),
    ],
)
async def test_a_flood_is_cut_off(
    tmp_path: Path, components: dict[str, Path], mode: str, said: str
) -> None:
    async with running_host(tmp_path, components, agents=agents(mode, ROOMY)) as h:
        seed = await provoke(h)
        host = h.running()
        assert host.killswitch.state.stopped["agent.hostile-agent"].reason == "flood"
        witness_went_on(h, seed)
    assert not h.acts_by("hostile-agent")
    [fault] = h.events(EventKind.FAULT, agent="hostile-agent")
    assert said in fault.detail


async def test_outputs_larger_than_one_record_are_saved_in_parts_and_all_published(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # 20 replies of 60,000 characters fit every per-message limit, but not one record.
    async with running_host(tmp_path, components, agents=agents("bulky", ROOMY)) as h:
        seed = await provoke(h, hops=32)
        await h.settle()
        runner = h.running().runners["hostile-agent"]
        assert runner.counters["faults"] == 0
        assert runner.counters["emitted"] == 20
        await h.stop_host()  # the agent idle, its record drops the outbox
        assert await h.outbox_parts("hostile-agent") == []  # and its parts
    replies = [a for a in h.acts_by("hostile-agent") if a.in_reply_to == seed.id]
    assert len(replies) == 20 and all(len(a.payload) == 60_000 for a in replies)


async def test_output_too_large_to_save_is_dropped_and_the_batch_still_processed(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 20 replies of 60,000 characters fit every per-message limit, but not the parts of
    # an outbox when the server takes 256 KiB per message (some 2 MB in all)
    async with running_host(tmp_path, components, agents=agents("bulky", ROOMY), start=False) as h:
        max_bytes = 256 * 1024
        monkeypatch.setattr(service, "HEADROOM", h.client.max_payload - max_bytes)
        await h.start_host()
        seed = await provoke(h, hops=32)
        host = h.running()
        runner = host.runners["hostile-agent"]
        assert host.killswitch.state.stopped["agent.hostile-agent"].reason == "flood"
        assert runner.counters["host-error"] == 0  # saved once, not redelivered
        assert runner.counters["emitted"] == 0
        witness_went_on(h, seed)
    assert not h.acts_by("hostile-agent")
    [fault] = h.events(EventKind.FAULT, agent="hostile-agent")
    assert f"the limit is {MAX_OUTBOX_PARTS * max_bytes}" in fault.detail
    [(_, handed)] = h.per_subject(EventKind.DELIVERED, agent="hostile-agent")
    assert handed == seed.id


async def test_agent_output_goes_to_the_host_log(
    tmp_path: Path, components: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agora.agent")
    async with running_host(tmp_path, components, agents=agents("print")) as h:
        await provoke(h)
    said = [r for r in caplog.records if r.name == "agora.agent.hostile-agent"]
    assert any("stdout" in r.getMessage() for r in said)
    assert any("stderr" in r.getMessage() and r.levelno == logging.WARNING for r in said)


async def test_stop_in_the_channel_is_just_a_message_and_a_kill_is_not(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents=agents("stop-ignorer")) as h:
        stop = await h.inject("build-coord", "stop", act=Performative.REQUEST, hops=1)
        await h.settle()
        assert stop.id in {a.id for a in h.delivered_to("hostile-agent")}
        assert [a.in_reply_to for a in h.acts_by("hostile-agent")] == [stop.id]
        await h.switch(EventKind.KILLED, agent="hostile-agent")
        host = h.running()
        await host.killswitch.wait_for(lambda s: s.blocks_agent("hostile-agent"))
        after = await h.inject("build-coord", "still there?", hops=1)
        await h.settle()
        assert after.id not in {a.id for a in h.delivered_to("hostile-agent")}
        assert after.id in {a.id for a in h.delivered_to("synth-agent")}
        assert host.runners["hostile-agent"].counters["killed"] == 1
