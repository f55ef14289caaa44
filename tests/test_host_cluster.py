"""More than one host on one JetStream: agents split across hosts, or shared by two.

Nothing that must be global lives in a host process: an agent's progress is in the
``agora-agents`` bucket (compare-and-set), kills in ``agora-control``, and one host
records the facts. So the same program scales out without a rewrite.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from nats.js.api import AckPolicy, ConsumerConfig

from agora.cli.workspace import AgentPlan
from agora.core.acts import Performative
from agora.core.envelope import EventKind
from agora.core.keys import Role
from agora.core.spine import DEAD_STREAM, STREAM, channel_subject, ensure_spine
from agora.host.service import Host, HostKeys
from tests.harness import Harness, running_host

PAIR = {
    "synth-agent": AgentPlan("chatty", ("build-coord",)),
    "relay-agent": AgentPlan("chatty", ("build-coord",)),
}


def second_host(h: Harness, agents: list[str]) -> Host:
    config = replace(
        h.session.config,
        host_name="host-b",
        agents=MappingProxyType({n: a for n, a in h.session.config.agents.items() if n in agents}),
    )
    return Host(
        config=config,
        registry=h.session.registry,
        keys=HostKeys(host=h.session.key("host-b"), agents={n: h.session.key(n) for n in agents}),
        components=h.components,
        record=False,
    )


async def _chain(h: Harness, other: Host, hops: int) -> None:
    await h.inject("build-coord", "count down", hops=hops)
    await asyncio.sleep(0.2)
    await h.settle()
    await other.settle()
    await h.settle()


async def test_two_hosts_split_the_agents(tmp_path: Path, components: dict[str, Path]) -> None:
    others = {"host-b": (Role.HOST, ["*"])}
    async with running_host(tmp_path, components, agents=PAIR, start=False, others=others) as h:
        await h.start_host(["synth-agent"])
        other = second_host(h, ["relay-agent"])
        await other.start(h.client)
        try:
            await _chain(h, other, hops=6)
        finally:
            await other.stop()
    replies = [a for n in PAIR for a in h.acts_by(n)]
    assert sorted(a.hops for a in replies) == sorted(list(range(6)) * 2)


async def test_two_hosts_can_share_one_agent(tmp_path: Path, components: dict[str, Path]) -> None:
    others = {"host-b": (Role.HOST, ["*"])}
    async with running_host(tmp_path, components, agents=PAIR, start=False, others=others) as h:
        await h.start_host()
        other = second_host(h, list(PAIR))
        await other.start(h.client)
        try:
            for _ in range(3):
                await _chain(h, other, hops=8)
        finally:
            await other.stop()
    replies = [a for n in PAIR for a in h.acts_by(n)]
    assert len(replies) == 3 * 2 * 8
    answered = Counter((a.sender, a.in_reply_to) for a in replies)
    assert max(answered.values()) == 1


async def test_a_vote_opened_on_a_host_that_goes_away_is_decided_by_the_other(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # Two hosts run the coordinator; one takes the request and opens the vote, then
    # stops before its deadline. No voter answers, so nothing new reaches the other:
    # it must learn the deadline from the saved record, and decide when it passes.
    agents = {"coordinator": AgentPlan("coordinator", ("release",), {"deadline-ms": "2000"})}
    others = {"host-b": (Role.HOST, ["*"])}
    async with running_host(
        tmp_path, components, agents=agents, channels=("release",), start=False, others=others
    ) as h:
        here = await h.start_host()
        other = second_host(h, ["coordinator"])
        await other.start(h.client)
        try:
            await h.inject("release", "ship v1", hops=8)
            for _ in range(100):
                opened = [x for x in (here, other) if x.runners["coordinator"]._record.wake_at_ms]
                if opened:
                    break
                await asyncio.sleep(0.05)
            assert len(opened) == 1
            if opened[0] is here:  # its recorder goes on: only its coordinator stops
                await here.runners.pop("coordinator").stop()
            else:
                await other.stop()
            for _ in range(300):  # the deadline, then the other host's next look
                if [a for a in h.acts_by("coordinator") if a.act is Performative.INFORM]:
                    break
                await asyncio.sleep(0.05)
        finally:
            if opened and opened[0] is here:
                await other.stop()
    decided = [a for a in h.acts_by("coordinator") if a.act is Performative.INFORM]
    assert len(decided) == 1 and json.loads(decided[0].payload)["outcome"] == "no-quorum"


async def test_a_host_whose_agent_has_fewer_channels_leaves_it_to_the_other(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # A configuration change rolls out: host-b still gives synth-agent one channel, the
    # newer host two, and the agent's consumer takes both. Handed a message on the
    # channel it lacks, host-b refuses none of it as out of scope: it steps aside.
    agents = {
        "synth-agent": AgentPlan("chatty", ("build-coord", "secret-ops")),
        "relay-agent": AgentPlan("chatty", ("build-coord",)),
    }
    others = {"host-b": (Role.HOST, ["*"])}
    async with running_host(tmp_path, components, agents=agents, start=False, others=others) as h:
        older = replace(h.session.config.agents["synth-agent"], channels=("build-coord",))
        behind = second_host(h, ["synth-agent"])
        behind.config = replace(behind.config, agents=MappingProxyType({"synth-agent": older}))
        await behind.start(h.client)
        await h.start_host(["synth-agent"])  # the newer configuration, started last
        try:
            sent = [await h.inject("secret-ops", f"note {n}", hops=1) for n in range(20)]
            for _ in range(200):
                handed = {d.act.id for d in h.deliveries if d.agent == "synth-agent"}
                if handed >= {a.id for a in sent}:
                    break
                await asyncio.sleep(0.05)
            await h.settle()
        finally:
            await behind.stop()
    assert {a.id for a in sent} <= {d.act.id for d in h.deliveries if d.agent == "synth-agent"}
    assert not [e for e in h.events(EventKind.REFUSED) if e.reason == "scope-blocked"]
    assert behind.runners["synth-agent"].counters["stepped-aside"] == 1


async def test_a_message_no_host_can_process_ends_in_the_dead_letters(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents=PAIR, start=False, verify=False) as h:
        js = h.js
        await ensure_spine(js)
        # A consumer configured like an agent's, whose host fails on every delivery.
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name="agent-doomed",
                filter_subjects=[channel_subject("build-coord")],
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=0.5,
                max_deliver=2,
            ),
        )
        await h.inject("build-coord", "poison", hops=1)
        subscription = await js.pull_subscribe_bind("agent-doomed", stream=STREAM)
        seen = 0
        for _ in range(20):
            try:
                messages = await subscription.fetch(1, timeout=0.5)
            except TimeoutError:
                messages = []
            seen += len(messages)  # never acknowledged
            if (await js.stream_info(DEAD_STREAM)).state.messages:
                break
        assert seen == 2  # delivered max_deliver times, no more
        advisory = await js.get_last_msg(DEAD_STREAM, "$JS.EVENT.ADVISORY.CONSUMER.>")
        assert b'"consumer":"agent-doomed"' in advisory.data.replace(b" ", b"")
        assert (await js.consumer_info(STREAM, "agent-doomed")).delivered.stream_seq >= 1
