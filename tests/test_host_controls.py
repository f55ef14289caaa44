"""Every cross-talk control, enforced by the live host on real agents over real JetStream.

Each test runs agents built with componentize-py on wasmtime, against nats-server, and
checks both what the agents were handed and what the fact log says afterwards (which
must verify).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agora.cli.workspace import AgentPlan
from agora.core.acts import Performative
from agora.core.envelope import Act, Event, EventKind
from agora.core.ids import new_id, now_ms
from agora.core.keys import SigningKey
from agora.core.signing import sign_fact, verify_envelope
from agora.core.spine import (
    MSG_ID_HEADER,
    STREAM,
    agent_consumer_config,
    channel_subject,
    ensure_consumer,
    ensure_spine,
)
from agora.host import runner as runner_module
from agora.host.batch import Batch
from agora.host.sandbox import GuestMessage, GuestOutcome
from tests.harness import running_host
from tests.wire import publish_raw

PAIR = {
    "synth-agent": AgentPlan("chatty", ("build-coord",)),
    "relay-agent": AgentPlan("chatty", ("build-coord",)),
}


async def test_the_spike_scenario_live(tmp_path: Path, components: dict[str, Path]) -> None:
    async with running_host(tmp_path, components, agents=PAIR) as h:
        seed = await h.inject("build-coord", "ship v0.1?", hops=3)
        secret = await h.inject("secret-ops", "the key is 42", act=Performative.INFORM, hops=3)
        await h.settle()
        host = h.running()
        pair = [host.runners[n].counters for n in PAIR]
        # Two chains, one per agent, of replies with 2, 1 and 0 hops left.
        assert sum(c["emitted"] for c in pair) == 6
        assert all(c["self-echo"] == 3 for c in pair)
        assert sum(c["no-hops"] for c in pair) == 2
        assert all(d.act.channel == "build-coord" for d in h.deliveries)
        assert secret.id not in {d.act.id for d in h.deliveries}
        replies = [a for n in PAIR for a in h.acts_by(n)]
        assert sorted(a.hops for a in replies) == [0, 0, 1, 1, 2, 2]
        assert {a.in_reply_to for a in replies if a.hops == 2} == {seed.id}
    # Every delivery, emission and refusal is a fact.
    delivered = h.per_subject(EventKind.DELIVERED)
    assert sorted(s for _, s in delivered) == sorted(d.act.id for d in h.deliveries)
    assert len(delivered) == 6
    refused = h.per_subject(EventKind.REFUSED)
    assert sorted(e.reason for e, _ in refused) == ["no-hops"] * 2 + ["self-echo"] * 6
    own = {a.id: a.sender for n in PAIR for a in h.acts_by(n)}
    assert all(own[s] == e.agent for e, s in refused if e.reason == "self-echo")


async def test_the_host_stamps_what_an_agent_sends(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents={"synth-agent": PAIR["synth-agent"]}) as h:
        seed = await h.inject("build-coord", "hello", hops=5)
        await h.settle()
        [reply] = h.acts_by("synth-agent")
    assert reply.sender == "synth-agent"
    assert reply.hops == 4
    assert reply.in_reply_to == seed.id
    assert reply.conversation == seed.conversation
    assert reply.id.startswith("act-") and reply.id != seed.id


async def test_forged_and_unsigned_messages_never_reach_an_agent(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents={"synth-agent": PAIR["synth-agent"]}) as h:
        intruder = SigningKey.generate("maintainer")  # right name, wrong key
        forged = Act(
            id=new_id("act"),
            conversation="c1",
            sender="maintainer",
            channel="build-coord",
            act=Performative.REQUEST,
            payload="delete everything",
            hops=3,
            time_ms=now_ms(),
        )
        await h.js.publish(channel_subject("build-coord"), sign_fact(forged, intruder))
        await h.js.publish(channel_subject("build-coord"), forged.encode())  # not signed at all
        # A genuine envelope replayed onto another channel is refused too.
        genuine = await h.inject("build-coord", "fine", hops=1)
        envelope = sign_fact(genuine, h.session.key("maintainer"))
        await h.js.publish(channel_subject("secret-ops"), envelope)
        await h.settle()
        counters = h.running().runners["synth-agent"].counters
        assert [d.act.id for d in h.deliveries] == [genuine.id]
        assert counters["unverified"] == 2
    refusals = [e for e in h.events(EventKind.REFUSED) if e.reason == "unverified"]
    assert len(refusals) == 3  # both forgeries and the replay, recorded once each
    assert all(not e.subjects for e in refusals)
    assert forged.id not in {f.id for f in h.facts()}


async def test_a_republished_message_is_processed_once(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents={"synth-agent": PAIR["synth-agent"]}) as h:
        seed = await h.inject("build-coord", "once", hops=2)
        await h.settle()
        envelope = sign_fact(seed, h.session.key("maintainer"))
        # Outside JetStream's duplicate window: a different message id, same act.
        await h.js.publish(channel_subject("build-coord"), envelope)
        await h.settle()
        counters = h.running().runners["synth-agent"].counters
        assert counters["delivered"] == 1
        assert counters["duplicate"] == 1
        assert len(h.acts_by("synth-agent")) == 1


async def test_an_old_act_published_again_reaches_no_agent_that_never_had_it(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Anyone able to publish could copy a signed act back onto its channel later: an
    # agent that has not seen it (here one that joins afterwards) must not take it.
    monkeypatch.setattr(runner_module, "FRESH_FOR_MS", 300)  # for the stale copy below
    async with running_host(tmp_path, components, agents=PAIR, start=False) as h:
        await h.start_host(["synth-agent"])
        copied = await h.inject("build-coord", "approved last week", hops=1)
        stale = await h.inject("build-coord", "approved the week before", hops=1)
        await h.settle()
        await h.stop_host()
        await h.start_host()  # relay-agent joins
        subject = channel_subject("build-coord")
        key = h.session.key("maintainer")
        # under another message id
        await h.js.publish(subject, sign_fact(copied, key), headers={MSG_ID_HEADER: "other"})
        # under its own, once JetStream's duplicate window no longer covers it
        info = await h.js.stream_info(STREAM)
        await h.js.update_stream(replace(info.config, duplicate_window=0.2))
        for _ in range(50):  # the server forgets ids on a timer of its own: a repeat is dropped
            await asyncio.sleep(0.2)
            copy = sign_fact(stale, key)
            ack = await h.js.publish(subject, copy, headers={MSG_ID_HEADER: stale.id})
            if not ack.duplicate:
                break
        assert not ack.duplicate
        fresh = await h.inject("build-coord", "approved today", hops=1)
        await h.settle()
        relay = h.running().runners["relay-agent"].counters
        assert [a.id for a in h.delivered_to("relay-agent")] == [fresh.id]
        assert relay["replayed"] == relay["stale"] == 1
        synth = [a.id for a in h.delivered_to("synth-agent")]
        assert synth == [copied.id, stale.id, fresh.id]
    refused = {(e.agent, e.reason, s) for e, s in h.per_subject(EventKind.REFUSED)}
    assert ("relay-agent", "replayed", copied.id) in refused
    assert ("relay-agent", "stale", stale.id) in refused
    recorded = [f.id for f in h.facts()]
    assert recorded.count(copied.id) == recorded.count(stale.id) == 1


async def test_a_copy_refused_before_its_original_arrives_does_not_stand_for_it(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The original's batch fails before its save (so it comes back after ack wait); a
    # copy under another message id arrives meanwhile and is refused. The original must
    # still be handed over when it comes back: the copy marks nothing processed.
    fast = {"consumer": {"ack_wait_s": 2, "max_deliver": 5}}
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one, extra=fast) as h:
        save = runner_module.AgentRunner._save
        failed = asyncio.Event()

        async def fail_once(runner: runner_module.AgentRunner, *args: Any, **kw: Any) -> None:
            if not failed.is_set():
                failed.set()
                raise RuntimeError("the bucket is unreachable for a moment")
            await save(runner, *args, **kw)

        monkeypatch.setattr(runner_module.AgentRunner, "_save", fail_once)
        original = await h.inject("build-coord", "the real request", hops=1)
        await asyncio.wait_for(failed.wait(), 5)
        await h.js.publish(
            channel_subject("build-coord"),
            sign_fact(original, h.session.key("maintainer")),
            headers={MSG_ID_HEADER: "a-copy"},
        )
        counters = h.running().runners["synth-agent"].counters
        for _ in range(100):  # the original comes back 2 s after it was handed over
            if counters["calls"] >= 2:
                break
            await asyncio.sleep(0.1)
        await h.settle()
        assert counters["replayed"] == 1
        assert counters["duplicate"] == 0
    assert [a.in_reply_to for a in h.acts_by("synth-agent")] == [original.id]


async def test_a_message_published_under_two_message_ids_is_refused_as_a_copy(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # The server takes the first Nats-Msg-Id for its duplicate check: a copy of an act
    # published under a fresh one, then the act's own, is stored. Which id it came
    # under is ambiguous, so it is refused as a copy, never handed over as the act (a
    # copy of an act the agent handled long ago would be taken again).
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        act = Act(
            id=new_id("act"),
            conversation="conv-two-ids",
            sender="maintainer",
            channel="build-coord",
            act=Performative.REQUEST,
            payload="under two ids",
            hops=1,
            time_ms=now_ms(),
        )
        ids = (MSG_ID_HEADER.encode(), MSG_ID_HEADER.encode(), act.id.encode())
        headers = b"NATS/1.0\r\n%s: a-fresh-id\r\n%s: %s\r\n\r\n" % ids
        await publish_raw(
            h.url,
            channel_subject("build-coord").encode(),
            sign_fact(act, h.session.key("maintainer")),
            headers,
        )
        await h.settle()
        assert h.running().runners["synth-agent"].counters["replayed"] == 1
    assert not h.deliveries and not h.acts_by("synth-agent")


async def test_a_refusal_cannot_be_taken_first_under_its_message_id(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # A refusal's id follows from what it refuses (here a message's bytes and its place
    # in the stream), so that refusing it again makes the same fact. Whoever may
    # publish on the stream knows those too: if the id followed from them alone, a
    # message published first under it would have the server drop the refusal as a
    # repeat. Published while no host runs, so the stream's sequences are certain.
    async with running_host(tmp_path, components, agents={}) as h:
        await h.settle()
        await h.stop_host()
        forged = b"a forged message whose refusal is taken first"
        last = (await h.js.stream_info(STREAM)).state.last_seq
        forged_at = last + 3  # after the two guesses
        for known in (b"%d:" % forged_at + forged, forged):  # what anyone can know
            guess = f"ev-unverified-{hashlib.sha256(known).hexdigest()[:32]}"
            await h.js.publish(
                channel_subject("build-coord"), b"junk", headers={MSG_ID_HEADER: guess}
            )
        await h.js.publish(channel_subject("build-coord"), forged)
        await h.start_host()
        await h.settle()
    refused = [e for e in h.events(EventKind.REFUSED) if e.reason == "unverified"]
    assert sorted(int(e.data["stream_seq"]) for e in refused) == [last + 1, last + 2, forged_at]


async def test_subjects_that_are_not_utf8_leave_the_host_and_its_recorder_running(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # Anyone who can connect can publish these: one on a channel's subjects, one on
    # the kill switch's bucket. Neither may stop the recorder or deafen the connection.
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        await publish_raw(h.url, b"agora.ch.\xff\xfe", b"junk")
        await publish_raw(h.url, b"$KV.agora-control.\xff", b"junk")
        later = await h.inject("build-coord", "still heard", hops=1)
        await h.settle()
        recorder = h.running().recorder
        assert recorder is not None and recorder.counters.reread == 0
        # the kill switch still hears its bucket
        switch = h.running().killswitch
        await h.switch(EventKind.KILLED, channel="build-coord")
        await switch.wait_for(lambda state: state.blocks("synth-agent", "build-coord"))
    assert [a.in_reply_to for a in h.acts_by("synth-agent")] == [later.id]
    assert later.id in {f.id for f in h.facts()}


async def test_a_message_with_no_hops_is_recorded_but_not_delivered(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents=PAIR) as h:
        spent = await h.inject("build-coord", "no budget", hops=0)
        await h.settle()
        assert h.deliveries == []
    assert spent.id in {f.id for f in h.facts()}
    assert {e.reason for e in h.events(EventKind.REFUSED)} == {"no-hops"}


async def test_the_agreement_decides_by_the_voters_rules(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    voters = {
        "alice-voter": {"approve": "tests pass", "veto": "breaking", "default": "reject"},
        "bob-voter": {"approve": "reviewed", "veto": "security", "default": "accept"},
        "carol-voter": {"approve": "docs", "veto": "breaking", "default": "reject"},
    }
    agents = {
        "coordinator": AgentPlan(
            "coordinator",
            ("release",),
            {"voters": ",".join(voters), "quorum": "2", "deadline-ms": "30000"},
        ),
        **{n: AgentPlan("voter", ("release",), rule) for n, rule in voters.items()},
        "summarizer": AgentPlan("summarizer", ("release",)),
    }
    async with running_host(tmp_path, components, agents=agents, channels=("release",)) as h:
        await h.inject("release", "ship v0.3: tests pass, docs updated", hops=8)
        await h.settle()
        await h.inject("release", "ship v0.4: breaking change to the API", hops=8)
        await h.settle()
        decisions = [
            json.loads(a.payload) for a in h.acts_by("coordinator") if a.act.value == "inform"
        ]
    assert [d["outcome"] for d in decisions] == ["accepted", "rejected"]
    assert decisions[0]["votes"] == {
        "alice-voter": "accept",
        "bob-voter": "accept",
        "carol-voter": "accept",
    }
    assert decisions[1]["votes"] == {
        "alice-voter": "reject",
        "bob-voter": "accept",
        "carol-voter": "reject",
    }
    summaries = [json.loads(a.payload) for a in h.acts_by("summarizer")]
    assert [s["outcome"] for s in summaries] == ["accepted", "rejected"]


async def test_a_reply_to_no_earlier_fact_is_refused_by_the_recorder(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents={}) as h:
        orphan = await h.inject("build-coord", "re: nothing", hops=1, reply_to="act-never-said")
        await h.settle()
    assert orphan.id not in {f.id for f in h.facts()}
    [refusal] = h.events(EventKind.REFUSED)
    assert "act-never-said" in refusal.detail


async def test_a_second_envelope_under_a_recorded_id_is_refused(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents={}) as h:
        first = await h.inject("build-coord", "the original", act=Performative.INFORM, hops=1)
        await h.settle()
        reused = Act(
            id=first.id,
            conversation=first.conversation,
            sender="maintainer",
            channel="build-coord",
            act=Performative.INFORM,
            payload="a different text under the same id",
            hops=1,
            time_ms=now_ms(),
        )
        envelope = sign_fact(reused, h.session.key("maintainer"))
        await h.js.publish(channel_subject("build-coord"), envelope)  # new msg id: not deduped
        await h.js.publish(
            channel_subject("build-coord"), sign_fact(first, h.session.key("maintainer"))
        )
        await h.settle()
    recorded = [f for f in h.facts() if f.id == first.id]
    assert len(recorded) == 1 and isinstance(recorded[0], Act)
    assert recorded[0].payload == "the original"
    refusals = [e for e in h.events(EventKind.REFUSED) if "already the id" in e.detail]
    assert len(refusals) == 1  # the exact repeat is skipped quietly; the reuse is refused


async def test_one_bad_act_in_a_batch_costs_no_other_act_its_fact(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    agent = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=agent, start=False) as h:
        await ensure_spine(h.js)
        config = agent_consumer_config(
            "synth-agent", ["build-coord"], ack_wait_s=30, max_deliver=5, batch=64
        )
        await ensure_consumer(h.js, config)
        key = h.session.key("maintainer")

        def act(text: str, *, hops: int, reply: str | None = None) -> Act:
            return Act(
                id=new_id("act"),
                conversation=new_id("conv"),
                sender="maintainer",
                channel="build-coord",
                act=Performative.REQUEST,
                payload=text,
                hops=hops,
                time_ms=now_ms(),
                in_reply_to=reply,
            )

        spent = act("no hops left", hops=0)
        orphan = act("answers nothing recorded", hops=2, reply="act-never-recorded")
        good = act("fine", hops=1)
        # Waiting before the host starts, so they come in one batch; the spent act twice,
        # under two message ids, as anyone able to publish could replay it.
        for n, each in enumerate([spent, spent, orphan, good]):
            await h.js.publish(
                channel_subject("build-coord"),
                sign_fact(each, key),
                headers={"Nats-Msg-Id": each.id if n != 1 else f"{each.id}-again"},
            )
        await h.start_host()
        await h.settle()
        counters = h.running().runners["synth-agent"].counters
        assert counters["host-error"] == 0
        assert {d.act.id for d in h.deliveries} == {orphan.id, good.id}
    # The orphan is refused by the recorder, and so is its own delivery event; the good
    # act's delivery is a fact all the same, and the spent act is refused once.
    delivered = [s for _, s in h.per_subject(EventKind.DELIVERED)]
    assert delivered == [good.id]
    refused = [(e.reason, s) for e, s in h.per_subject(EventKind.REFUSED)]
    assert refused.count(("no-hops", spent.id)) == 1
    assert orphan.id not in {f.id for f in h.facts()}
    h.verify()


async def test_a_host_compares_its_clock_with_the_servers_and_warns_when_off(
    tmp_path: Path, components: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async with running_host(tmp_path, components, agents=PAIR) as h:
        host = h.running()
        for _ in range(100):  # the first status report measures it
            if host.status()["clock_offset_ms"] is not None:
                break
            await asyncio.sleep(0.05)
        assert abs(host.status()["clock_offset_ms"]) < 1000  # one machine: one clock
        now = now_ms()
        with caplog.at_level("WARNING", logger="agora.host.service"):
            host._check_clock(now, now + 4, now - 45_000)
        assert host.status()["clock_offset_ms"] == 45_002
        assert "45.0 s ahead of the NATS server's" in caplog.text


async def test_a_batch_redone_after_a_save_conflict_is_counted_and_reported_once(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # as when another host saved the agent in between: the batch is redone on the fresh
    # record, the agent called again, and only the redone batch counts
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        save = runner_module.AgentRunner._save
        conflicted = asyncio.Event()

        async def conflict_once(runner: runner_module.AgentRunner, *args: Any, **kw: Any) -> None:
            if not conflicted.is_set():
                conflicted.set()
                raise runner_module.RecordConflict("another host saved it")
            await save(runner, *args, **kw)

        monkeypatch.setattr(runner_module.AgentRunner, "_save", conflict_once)
        request = await h.inject("build-coord", "once", hops=1)
        await asyncio.wait_for(conflicted.wait(), 5)
        await h.settle()
        counters = h.running().runners["synth-agent"].counters
        assert counters["record-conflict"] == 1
        assert (counters["delivered"], counters["calls"], counters["emitted"]) == (1, 1, 1)
    assert [d.act.id for d in h.deliveries] == [request.id]
    assert [a.in_reply_to for a in h.acts_by("synth-agent")] == [request.id]


async def test_a_refused_emit_is_named_for_its_control_even_under_a_kill(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # What the agent returned is screened before the kill is: a forgery is recorded as
    # one even when a kill landed during the call (only what passed is discarded), and
    # many refusals by one control in one call are one event.
    async with running_host(tmp_path, components, agents=PAIR) as h:
        host = h.running()
        await h.switch(EventKind.KILLED, channel="build-coord")
        await host.killswitch.wait_for(lambda s: s.blocks("synth-agent", "build-coord"))
        runner = host.runners["synth-agent"]
        forged = GuestMessage("", "conv-1", None, "maintainer", "build-coord", "inform", "hi", 1)
        fine = replace(forged, sender="synth-agent")
        outcome = GuestOutcome(outbox=(forged, forged, forged, fine), state=b"", wake_at_ms=None)
        batch = Batch("synth-agent", processed=())
        batch.conversations["conv-1"] = 3  # a budget to draw on, as if handed a message
        runner._take(outcome, batch)
        runner._note_discarded(batch)
    events = [verify_envelope(o.envelope, h.session.registry).fact for o in batch.outgoing]
    reasons = [(e.reason, e.detail) for e in events if isinstance(e, Event)]
    assert [r for r, _ in reasons] == ["forged-sender", "discarded-by-kill"]
    assert reasons[0][1].startswith("3 messages refused; the first: ")
    assert "1 of its messages" in reasons[1][1]
    assert runner.counters["forged-sender"] == 3


async def _until(probe: Any, timeout_s: float = 15.0) -> Any:
    for _ in range(int(timeout_s / 0.05)):
        if found := probe():
            return found
        await asyncio.sleep(0.05)
    raise AssertionError("the awaited state never came")


async def test_a_deadline_decision_a_kill_discards_is_announced_after_the_resume(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    """The coordinator's vote ends at its deadline in a timer call while its channel is
    killed: that call's decision is discarded and the call undone, so after the resume
    the timer fires again and the decision is announced, once. (The agent's other
    channel is not killed, so the agent itself still runs meanwhile.)"""
    agents = {
        "coordinator": AgentPlan(
            "coordinator", ("release", "other"), {"voters": "alice-voter", "deadline-ms": "1500"}
        ),
    }
    async with running_host(
        tmp_path, components, agents=agents, channels=("release", "other")
    ) as h:
        await h.inject("release", "ship it", hops=8)
        await h.settle()
        assert [a.act for a in h.acts_by("coordinator")] == [Performative.PROPOSE]
        await h.switch(EventKind.KILLED, channel="release")
        await _until(
            lambda: [e for e in h.events(EventKind.REFUSED) if e.reason == "discarded-by-kill"]
        )
        await asyncio.sleep(1.0)  # the timer does not fire again while the kill holds
        discards = [e for e in h.events(EventKind.REFUSED) if e.reason == "discarded-by-kill"]
        assert len(discards) == 1
        await h.switch(EventKind.RESUMED, channel="release")
        decided = await _until(
            lambda: [a for a in h.acts_by("coordinator") if a.act is Performative.INFORM]
        )
        await h.settle()
    assert len(decided) == 1 and json.loads(decided[0].payload)["outcome"] == "no-quorum"


async def test_a_timer_call_a_kill_stops_in_part_sends_nothing_until_it_runs_again(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    """Two votes end in one timer call, one on a killed channel: the call is undone
    whole, so the other vote's decision is not sent now and again after the resume."""
    agents = {
        "coordinator": AgentPlan("coordinator", ("release", "ops"), {"deadline-ms": "2000"}),
    }
    async with running_host(tmp_path, components, agents=agents, channels=("release", "ops")) as h:
        await h.stop_host()  # both requests in one batch, so both votes end in one call
        await h.inject("release", "ship v1", hops=8)
        await h.inject("ops", "rotate keys", hops=8)
        await h.start_host()
        await h.settle()
        assert len([a for a in h.acts_by("coordinator") if a.act is Performative.PROPOSE]) == 2
        await h.switch(EventKind.KILLED, channel="ops")
        discarded = await _until(
            lambda: [e for e in h.events(EventKind.REFUSED) if e.reason == "discarded-by-kill"]
        )
        assert "undone" in (discarded[0].detail or "")
        await h.settle()
        assert not [a for a in h.acts_by("coordinator") if a.act is Performative.INFORM]
        await h.switch(EventKind.RESUMED, channel="ops")
        await _until(
            lambda: len([a for a in h.acts_by("coordinator") if a.act is Performative.INFORM]) >= 2
        )
        await asyncio.sleep(0.5)
        await h.settle()
    decided = [a for a in h.acts_by("coordinator") if a.act is Performative.INFORM]
    assert sorted(a.channel for a in decided) == ["ops", "release"]


async def test_a_kill_that_lands_while_a_batch_is_saved_stops_its_outbox(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    """After the call, the record is saved, then its outbox published: a kill in force
    by the end of the save discards the agent's messages still to go out."""
    async with running_host(tmp_path, components, agents=PAIR) as h:
        host = h.running()
        records = host.runners["synth-agent"]._records
        saved = records.save
        killed: list[Event] = []

        async def save_with_a_kill_meanwhile(record: Any) -> Any:
            if not killed and any(o.subject.startswith("agora.ch.") for o in record.outbox):
                killed.append(await h.switch(EventKind.KILLED, agent="synth-agent"))
                await host.killswitch.wait_for(lambda s: s.blocks_agent("synth-agent"))
            return await saved(record)

        records.save = save_with_a_kill_meanwhile  # the real save, with a kill during it
        await h.inject("build-coord", "hello", hops=2)
        await h.settle()
        assert killed
        assert h.acts_by("synth-agent") == []  # nothing of it went out
        assert not [a for a in h.delivered_to("relay-agent") if a.sender == "synth-agent"]
        discards = [e for e in h.events(EventKind.REFUSED) if e.reason == "discarded-by-kill"]
        assert [e.agent for e in discards] == ["synth-agent"]


@pytest.mark.parametrize("opens_its_conversation", [True, False])
@pytest.mark.parametrize(("remembered", "decided"), [(1024, True), (None, False)])
async def test_a_late_decision_goes_out_while_the_host_remembers_its_request(
    tmp_path: Path,
    components: dict[str, Path],
    opens_its_conversation: bool,
    remembered: int | None,
    decided: bool,
) -> None:
    """A vote's decision answers its request after 300 other conversations passed the
    channel (all before its deadline): with ``limits.remembered`` at 1024 the host
    still holds the request's hop budget (of its message or of the conversation it
    opened); at the default (128 conversations, 256 messages) the decision is refused
    as unknown-reply."""
    limits = {} if remembered is None else {"remembered": remembered}
    agents = {
        "coordinator": AgentPlan("coordinator", ("release",), {"deadline-ms": "6000"}, limits)
    }
    async with running_host(tmp_path, components, agents=agents, channels=("release",)) as h:
        opener = await h.inject("release", "about the release", act=Performative.INFORM)
        in_conversation = None if opens_its_conversation else opener.conversation
        request = await h.inject("release", "ship v1", hops=8, conversation=in_conversation)
        for number in range(300):
            await h.inject("release", f"note {number}", act=Performative.INFORM)
        await h.settle()
        decisions = await _until(
            lambda: (
                [
                    a
                    for a in h.acts_by("coordinator")
                    if a.act is Performative.INFORM and a.in_reply_to == request.id
                ]
                or [
                    e
                    for e in h.events(EventKind.REFUSED)
                    if e.agent == "coordinator" and e.reason == "unknown-reply"
                ]
            )
        )
    assert bool(decisions and isinstance(decisions[0], Act)) == decided
