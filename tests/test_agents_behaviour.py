"""The shipped agents under hostile or careless input, as built components on a real host.

Each test runs the real coordinator, voters and summarizer on wasmtime over a real
JetStream and plays the other parties itself: it injects signed acts under their names
(the harness holds every identity's key), so it decides exactly what each ballot,
proposal or decision answers. The tests of how much an agent keeps call its component
directly in a sandbox, as the host calls it, with thousands of messages a host would
take minutes to carry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from agora.cli.workspace import AgentPlan
from agora.core.acts import MAX_CHANNEL_CHARS, MAX_NAME_CHARS, Performative
from agora.core.envelope import Act, EventKind
from agora.core.keys import Role
from agora.host.config import DEFAULT_FUEL, DEFAULT_MEMORY_MB, DEFAULT_OUTBOX
from agora.host.sandbox import (
    MAX_STATE_BYTES,
    EpochTicker,
    GuestContext,
    GuestMessage,
    Sandbox,
    SandboxLimits,
    load_component,
    make_engine,
    make_linker,
)
from tests.harness import Harness, running_host

ACCEPT = Performative.ACCEPT_PROPOSAL
REJECT = Performative.REJECT_PROPOSAL
DEEP = "[" * 3000  # JSON nested deeper than Python's parser goes
WEEK_MS = 7 * 24 * 60 * 60 * 1000  # the coordinator's longest deadline
NOW_MS = 1_800_000_000_000
LONGEST_CHANNEL = "c" * MAX_CHANNEL_CHARS
# A control character is the longest a character gets in the agents' JSON: \u0001
LONGEST_TOPIC = "\x01" * 200

pytestmark = pytest.mark.slow


def coordinator(settings: dict[str, str], channels: tuple[str, ...] = ("release",)) -> AgentPlan:
    return AgentPlan("coordinator", channels, settings)


def acts(h: Harness, sender: str, act: Performative) -> list[Act]:
    return [a for a in h.acts_by(sender) if a.act is act]


def decisions(h: Harness, sender: str = "coordinator") -> list[dict[str, Any]]:
    return [json.loads(a.payload) for a in acts(h, sender, Performative.INFORM)]


async def until_decided(h: Harness, *, timeout_s: float = 15.0) -> list[Act]:
    """The coordinator's decisions, once there is one (a deadline wakes it up)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while loop.time() < give_up:
        await h.settle()
        if found := acts(h, "coordinator", Performative.INFORM):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"the coordinator announced no decision within {timeout_s} s")


def no_faults(h: Harness) -> None:
    faults = h.events(EventKind.FAULT)
    assert faults == [], [(f.agent, f.reason, f.detail) for f in faults]


# -- payloads that cannot be read ---------------------------------------------------------


async def test_a_payload_nested_too_deep_to_parse_traps_no_agent(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    agents = {
        "coordinator": coordinator({}),
        "alice-voter": AgentPlan("voter", ("release",), {"default": "accept"}),
        "summarizer": AgentPlan("summarizer", ("release",)),
    }
    async with running_host(
        tmp_path, components, agents=agents, channels=("release",), start=False
    ) as h:
        await h.start_host(["alice-voter", "summarizer"])
        request = await h.inject("release", "ship it", hops=8)
        await h.inject("release", DEEP, act=Performative.INFORM, hops=8)  # anyone's comment
        await h.inject("release", DEEP, act=Performative.PROPOSE, sender="coordinator", hops=8)
        deep = await h.inject(
            "release", DEEP, act=Performative.INFORM, sender="coordinator", hops=8
        )
        await h.settle()
        decision = {"kind": "decision", "outcome": "accepted", "topic": "ship it"}
        await h.inject(
            "release",
            json.dumps(decision),
            act=Performative.INFORM,
            sender="coordinator",
            conversation=request.conversation,
            reply_to=request.id,
            hops=8,
        )
        await h.settle()
        no_faults(h)
        assert h.events(EventKind.QUARANTINED) == []
        assert [a.payload for a in h.acts_by("alice-voter")] == ["default"]  # it still votes
        summaries = [json.loads(a.payload) for a in h.acts_by("summarizer")]
    assert [s["outcome"] for s in summaries] == ["accepted"]  # and it still sums up
    assert deep.id not in {a.in_reply_to for a in h.acts_by("summarizer")}


async def test_a_lone_surrogate_escaped_in_a_decision_is_summed_up_not_a_trap(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    """JSON may escape half a surrogate pair; a WIT string cannot carry it back out."""
    agents = {"coordinator": coordinator({}), "summarizer": AgentPlan("summarizer", ("release",))}
    async with running_host(
        tmp_path, components, agents=agents, channels=("release",), start=False
    ) as h:
        await h.start_host(["summarizer"])
        decision = '{"kind":"decision","outcome":"\\ud800","topic":"ship \\udfff"}'
        await h.inject("release", decision, act=Performative.INFORM, sender="coordinator")
        await h.settle()
        no_faults(h)
        [summary] = [json.loads(a.payload) for a in h.acts_by("summarizer")]
    assert summary["outcome"] == "?"
    assert summary["text"].startswith('Vote on "ship ?": ?,')


# -- ballots tied to the proposal, proposals and decisions to the coordinator -------------


async def test_the_coordinator_counts_only_ballots_answering_its_proposal_on_the_votes_channel(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    voters = ("alice-voter", "bob-voter", "carol-voter")
    both = ("release", "lounge")
    agents = {
        "coordinator": coordinator(
            {"voters": ",".join(voters), "quorum": "1", "deadline-ms": "4000"}, both
        ),
        **{name: AgentPlan("voter", both) for name in voters},
    }
    async with running_host(tmp_path, components, agents=agents, channels=both, start=False) as h:
        await h.start_host(["coordinator"])
        request = await h.inject("release", "ship it", hops=8)
        await h.settle()
        [proposal] = acts(h, "coordinator", Performative.PROPOSE)
        talk = request.conversation
        fake = await h.inject(
            "release", '{"topic":"free cake"}', act=Performative.PROPOSE, conversation=talk
        )
        await h.settle()
        for sender, channel, answers in (
            ("alice-voter", "release", fake.id),  # someone else's proposal
            ("bob-voter", "lounge", proposal.id),  # another channel
            ("carol-voter", "release", request.id),  # the request
        ):
            await h.inject(
                channel, "yes", act=ACCEPT, sender=sender, conversation=talk, reply_to=answers
            )
        await h.settle()
        await h.inject(
            "release",
            "no",
            act=REJECT,
            sender="alice-voter",
            conversation=talk,
            reply_to=proposal.id,
        )
        [announced] = await until_decided(h)
    decision = json.loads(announced.payload)
    assert decision["votes"] == {"alice-voter": "reject"}
    assert decision["outcome"] == "rejected"


async def test_a_voter_votes_only_on_proposals_from_its_coordinator(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    agents = {
        "coordinator": coordinator({}),
        "chair": coordinator({}),
        "alice-voter": AgentPlan("voter", ("release",), {"approve": "cake"}),
        "bob-voter": AgentPlan("voter", ("release",), {"approve": "cake", "coordinator": "chair"}),
    }
    async with running_host(
        tmp_path, components, agents=agents, channels=("release",), start=False
    ) as h:
        await h.start_host(["alice-voter", "bob-voter"])
        fake = await h.inject("release", '{"topic":"free cake"}', act=Performative.PROPOSE)
        await h.settle()
        assert h.acts_by("alice-voter") == h.acts_by("bob-voter") == []
        real = await h.inject(
            "release",
            '{"topic":"deploy friday"}',
            act=Performative.PROPOSE,
            sender="coordinator",
            conversation=fake.conversation,
        )
        chaired = await h.inject(
            "release", '{"topic":"cake friday"}', act=Performative.PROPOSE, sender="chair"
        )
        await h.settle()
        alice, bob = h.acts_by("alice-voter"), h.acts_by("bob-voter")
    assert [(a.in_reply_to, a.act, a.payload) for a in alice] == [(real.id, REJECT, "default")]
    assert [(a.in_reply_to, a.act, a.payload) for a in bob] == [
        (chaired.id, ACCEPT, "approve: cake")
    ]


async def test_the_summarizer_sums_up_only_its_coordinators_decisions(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    agents = {
        "coordinator": coordinator({}),
        "summarizer": AgentPlan("summarizer", ("release",)),
    }
    async with running_host(
        tmp_path, components, agents=agents, channels=("release",), start=False
    ) as h:
        await h.start_host(["summarizer"])
        request = await h.inject("release", "ship it", hops=8)
        forged = {"kind": "decision", "outcome": "accepted", "accepts": 9, "quorum": 1}
        real = {"kind": "decision", "outcome": "rejected", "accepts": 0, "quorum": 1}
        for sender, body in (("maintainer", forged), ("coordinator", real)):
            await h.inject(
                "release",
                json.dumps(body),
                act=Performative.INFORM,
                sender=sender,
                conversation=request.conversation,
                reply_to=request.id,
                hops=8,
            )
        await h.settle()
        summaries = [json.loads(a.payload) for a in h.acts_by("summarizer")]
    assert [s["outcome"] for s in summaries] == ["rejected"]
    assert 'Vote on "ship it": rejected, 0 accept' in summaries[0]["text"]


# -- settings that are wrong --------------------------------------------------------------


async def test_wrong_coordinator_settings_are_logged_and_replaced_never_fatal(
    tmp_path: Path, components: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agora.agent")
    wrong = {
        "coordinator": {"deadline-ms": "99999999999999999999", "quorum": "0"},
        "coord-float": {"deadline-ms": "5000.0", "quorum": "-3"},
        "coord-hex": {"deadline-ms": "0x10", "quorum": "two"},
        "coord-exp": {"deadline-ms": "1e3"},
    }
    agents = {name: coordinator(settings) for name, settings in wrong.items()}
    async with running_host(tmp_path, components, agents=agents, channels=("release",)) as h:
        await h.inject("release", "ship it", hops=8)
        await h.settle()
        no_faults(h)
        proposals = {
            name: json.loads(a.payload)
            for name in wrong
            for a in acts(h, name, Performative.PROPOSE)
        }
    assert {name: (p["deadline_ms"], p["quorum"]) for name, p in proposals.items()} == {
        "coordinator": (WEEK_MS, 1),
        "coord-float": (5000, 1),
        "coord-hex": (5000, 1),
        "coord-exp": (5000, 1),
    }
    said = {(r.name, r.getMessage()) for r in caplog.records}
    assert (
        "agora.agent.coordinator",
        f"setting 'deadline-ms' must be from 1 to {WEEK_MS}, got '99999999999999999999': "
        f"using {WEEK_MS}",
    ) in said
    assert (
        "agora.agent.coord-hex",
        "setting 'quorum' must be a whole number, got 'two': using 1",
    ) in said


async def test_wrong_voter_and_summarizer_settings_are_logged_and_replaced_never_fatal(
    tmp_path: Path, components: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agora.agent")
    agents = {
        "coordinator": coordinator({}),
        "alice-voter": AgentPlan("voter", ("release",), {"default": " Accept"}),
        "bob-voter": AgentPlan("voter", ("release",), {"default": "maybe"}),
        "summarizer": AgentPlan("summarizer", ("release",), {"every": "1e3"}),
    }
    async with running_host(
        tmp_path, components, agents=agents, channels=("release",), start=False
    ) as h:
        await h.start_host(["alice-voter", "bob-voter", "summarizer"])
        await h.inject("release", "ship it", act=Performative.PROPOSE, sender="coordinator")
        await h.settle()
        no_faults(h)
        alice, bob = h.acts_by("alice-voter"), h.acts_by("bob-voter")
        summaries = h.acts_by("summarizer")
    assert [(a.act, a.payload) for a in alice] == [(ACCEPT, "default")]
    assert [(a.act, a.payload) for a in bob] == [(REJECT, "default")]
    assert summaries == []  # every: 0, the documented default
    said = {(r.name, r.getMessage()) for r in caplog.records}
    assert (
        "agora.agent.bob-voter",
        "setting 'default' must be 'accept' or 'reject', got 'maybe': using 'reject'",
    ) in said
    assert (
        "agora.agent.summarizer",
        "setting 'every' must be a whole number (0: off), got '1e3': using 0",
    ) in said
    assert not [name for name, _ in said if name == "agora.agent.alice-voter"]


# -- deadlines ----------------------------------------------------------------------------


async def test_a_ballot_handed_over_after_the_deadline_is_not_counted(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    agents = {
        "coordinator": coordinator(
            {"voters": "alice-voter,bob-voter", "quorum": "1", "deadline-ms": "1000"}
        ),
        "alice-voter": AgentPlan("voter", ("release",)),
        "bob-voter": AgentPlan("voter", ("release",)),
    }
    async with running_host(
        tmp_path, components, agents=agents, channels=("release",), start=False
    ) as h:
        await h.start_host(["coordinator"])
        request = await h.inject("release", "ship it", hops=8)
        await h.settle()
        [proposal] = acts(h, "coordinator", Performative.PROPOSE)
        await h.stop_host()
        await asyncio.sleep(1.5)  # the deadline passes while no host runs
        await h.inject(
            "release",
            "yes",
            act=ACCEPT,
            sender="alice-voter",
            conversation=request.conversation,
            reply_to=proposal.id,
        )
        await h.start_host(["coordinator"])
        [announced] = await until_decided(h)
    decision = json.loads(announced.payload)
    assert (decision["outcome"], decision["votes"]) == ("no-quorum", {})


async def test_a_deadline_decision_answers_the_request_after_many_other_conversations(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    """The host keeps the budgets of an agent's 128 latest conversations but of its 256
    latest parents: a decision answering the request still has one to spend."""
    agents = {"coordinator": coordinator({"deadline-ms": "4000"})}
    async with running_host(tmp_path, components, agents=agents, channels=("release",)) as h:
        request = await h.inject("release", "ship it", hops=8)
        await h.settle()
        for index in range(130):
            await h.inject("release", f"chatter {index}", act=Performative.INFORM, hops=8)
        await h.settle()
        assert decisions(h) == []  # all of it handed over before the deadline
        [announced] = await until_decided(h)
        refused = {e.reason for e in h.events(EventKind.REFUSED, "coordinator")}
    assert not refused & {"no-parent", "unknown-reply"}
    assert (announced.in_reply_to, announced.conversation) == (request.id, request.conversation)
    assert json.loads(announced.payload)["outcome"] == "no-quorum"


async def test_a_deadline_decision_answers_a_request_the_host_keeps_no_budget_of(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    """More messages than the host keeps parents of (256) came after the request, in
    fewer conversations than it keeps (128): the decision answering the request draws on
    its conversation's budget."""
    agents = {"coordinator": coordinator({"deadline-ms": "10000"})}
    async with running_host(tmp_path, components, agents=agents, channels=("release",)) as h:
        request = await h.inject("release", "ship it", hops=8)
        await h.settle()
        for index in range(300):
            await h.inject(
                "release",
                f"chatter {index}",
                act=Performative.INFORM,
                hops=8,
                conversation=f"talk-{index % 100}",
            )
        await h.settle()
        record = await h.record_store("coordinator")
        assert request.id not in (await record.load()).parents  # pushed out
        assert decisions(h) == []  # all of it handed over before the deadline
        [announced] = await until_decided(h)
        refused = {e.reason for e in h.events(EventKind.REFUSED, "coordinator")}
    assert not refused & {"no-parent", "unknown-reply"}
    assert (announced.in_reply_to, announced.hops) == (request.id, 7)
    assert json.loads(announced.payload)["outcome"] == "no-quorum"


async def test_a_vote_saved_before_request_ids_were_kept_is_still_decided(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    agents = {"coordinator": coordinator({"deadline-ms": "1500"})}
    async with running_host(tmp_path, components, agents=agents, channels=("release",)) as h:
        request = await h.inject("release", "ship it", hops=8)
        await h.settle()
        await h.stop_host()
        store = await h.record_store("coordinator")
        saved = await store.load()
        state = json.loads(saved.state)
        old = {  # as the coordinator saved it before it kept request ids and heard ids
            "decided": state["decided"],
            "open": {
                talk: {k: v for k, v in vote.items() if k != "request"}
                for talk, vote in state["open"].items()
            },
        }
        await store.save(replace(saved, state=json.dumps(old).encode()))
        await h.start_host()
        [announced] = await until_decided(h)
        no_faults(h)
    assert announced.conversation == request.conversation
    assert announced.in_reply_to is None  # the conversation's budget, as before
    assert json.loads(announced.payload)["topic"] == "ship it"


# -- decided once -------------------------------------------------------------------------


async def test_a_conversation_stays_decided_after_a_hundred_other_decisions(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    agents = {"coordinator": coordinator({"deadline-ms": "1"})}
    # 13 senders: none has more than 8 votes open, however the host batches the requests
    requesters = [f"requester-{n}" for n in range(13)]
    others = {name: (Role.OPERATOR, ["release"]) for name in requesters}
    async with running_host(
        tmp_path, components, agents=agents, channels=("release",), others=others
    ) as h:
        first = await h.inject("release", "ship v1", hops=8)
        for index in range(100):
            sender = requesters[index % len(requesters)]
            await h.inject("release", f"ship v1.{index}", hops=8, sender=sender)
        for _ in range(100):
            await h.settle()
            if len(decisions(h)) == 101:
                break
            await asyncio.sleep(0.1)
        assert len(decisions(h)) == 101
        again = await h.inject("release", "ship v1", hops=8, conversation=first.conversation)
        await h.settle()
        answers = [a for a in h.acts_by("coordinator") if a.in_reply_to == again.id]
    assert [(a.act, a.payload) for a in answers] == [
        (Performative.REFUSE, "this conversation already has a vote")
    ]


# -- state bounded whatever is sent -------------------------------------------------------

# The host's default budgets for a call, but time: a loaded machine is no measure of it.
DIRECT_LIMITS = SandboxLimits(
    fuel=DEFAULT_FUEL,
    timeout_ms=60_000,
    memory_bytes=DEFAULT_MEMORY_MB << 20,
    outbox=DEFAULT_OUTBOX,
)


@dataclass
class Called:
    """An agent whose component the test calls as the host does, its state kept between
    calls; every state it returns is checked against the host's limit."""

    sandbox: Sandbox
    context: GuestContext
    state: bytes = b""

    def handle(self, inbox: list[GuestMessage], *, now_ms: int = NOW_MS) -> list[GuestMessage]:
        context = replace(self.context, now_ms=now_ms)
        outcome = self.sandbox.call(context, self.state, tuple(inbox))
        assert len(outcome.state) <= MAX_STATE_BYTES
        self.state = outcome.state
        return list(outcome.outbox)


@contextmanager
def called(component: Path, agent: str, settings: dict[str, str], channel: str) -> Iterator[Called]:
    engine = make_engine()
    ticker = EpochTicker(engine)
    ticker.start()
    try:
        sandbox = Sandbox(
            agent=agent,
            engine=engine,
            ticker=ticker,
            linker=make_linker(engine),
            component=load_component(engine, component),
            limits=DIRECT_LIMITS,
        )
        yield Called(sandbox, GuestContext(agent, (channel,), NOW_MS, tuple(settings.items())))
    finally:
        ticker.stop()


def longest(prefix: str, index: int) -> str:
    """A name or id of the most characters the host lets through, unique for ``index``."""
    return f"{prefix}-{index:0{MAX_NAME_CHARS - len(prefix) - 1}d}"


def handed(
    ident: str,
    conversation: str,
    sender: str,
    act: Performative,
    payload: str,
    *,
    channel: str = LONGEST_CHANNEL,
    in_reply_to: str | None = None,
) -> GuestMessage:
    """A message as the host hands it to an agent."""
    return GuestMessage(ident, conversation, in_reply_to, sender, channel, act.value, payload, 8)


def request(index: int, sender: str, *, channel: str = LONGEST_CHANNEL) -> GuestMessage:
    return handed(
        longest("request", index),
        longest("talk", index),
        sender,
        Performative.REQUEST,
        LONGEST_TOPIC,
        channel=channel,
    )


def test_the_coordinators_state_stays_under_the_hosts_limit_when_anyone_votes_on_every_vote(
    components: dict[str, Path],
) -> None:
    """Votes open one after another, each taking a ballot from each of 64 voters; every
    name, id, channel and topic as long as the host lets through."""
    settings = {"deadline-ms": str(WEEK_MS)}
    with called(components["coordinator"], "coordinator", settings, LONGEST_CHANNEL) as agent:
        answers = []
        for index in range(64):
            [answer] = agent.handle([request(index, longest("maintainer", index))])
            answers.append(answer)
            if answer.act != Performative.PROPOSE.value:
                continue
            ballots = [
                handed(
                    longest(f"ballot-{index}", voter),
                    answer.conversation_id,
                    longest("voter", voter),
                    ACCEPT,
                    "yes",
                    in_reply_to=longest("proposal", index),  # none it was handed: its own
                )
                for voter in range(64)
            ]
            assert agent.handle(ballots) == []
        refusals = [a.payload for a in answers if a.act == Performative.REFUSE.value]
        assert refusals
        assert refusals[0].startswith("no room for another vote: the open votes take ")
        opened = len(answers) - len(refusals)
        decided = agent.handle([], now_ms=NOW_MS + WEEK_MS)
        assert [json.loads(d.payload)["kind"] for d in decided] == ["decision"] * opened
        [answer] = agent.handle([request(64, "maintainer")], now_ms=NOW_MS + WEEK_MS)
    assert answer.act == Performative.PROPOSE.value  # the room is back once they are decided


def test_one_sender_holds_at_most_8_votes_open_and_others_still_open_theirs(
    components: dict[str, Path],
) -> None:
    settings = {"deadline-ms": str(WEEK_MS)}
    with called(components["coordinator"], "coordinator", settings, "release") as agent:
        hoarding = [request(index, "mallory", channel="release") for index in range(64)]
        answers = agent.handle(hoarding)
        [answer] = agent.handle([request(64, "maintainer", channel="release")])
    proposed = [a.act == Performative.PROPOSE.value for a in answers]
    assert proposed == [True] * 8 + [False] * 56
    assert answers[8].act == Performative.REFUSE.value
    assert answers[8].payload == "mallory already has 8 votes open (at most 8 per sender)"
    assert answer.act == Performative.PROPOSE.value


def test_a_full_batch_of_requests_as_votes_close_is_no_flood(
    components: dict[str, Path],
) -> None:
    # a batch of 256 requests (the host's default) arriving as 8 votes pass their
    # deadline: 264 messages in one call, within the host's default outbox
    settings = {"deadline-ms": "1000"}
    with called(components["coordinator"], "coordinator", settings, "release") as agent:
        agent.handle([request(index, f"early-{index}", channel="release") for index in range(8)])
        burst = [request(8 + index, f"late-{index}", channel="release") for index in range(256)]
        answers = agent.handle(burst, now_ms=NOW_MS + 2000)
    kinds = [
        json.loads(a.payload).get("kind") if a.payload.startswith("{") else a.act for a in answers
    ]
    assert len(answers) == 8 + 256  # more than a batch
    assert kinds.count("decision") == 8


def test_votes_per_sender_sets_how_many_one_sender_holds_open(
    components: dict[str, Path],
) -> None:
    settings = {"deadline-ms": str(WEEK_MS), "votes-per-sender": "3"}
    with called(components["coordinator"], "coordinator", settings, "release") as agent:
        answers = agent.handle([request(index, "bridge", channel="release") for index in range(5)])
    assert [a.act == Performative.PROPOSE.value for a in answers] == [True] * 3 + [False] * 2
    assert answers[3].payload == "bridge already has 3 votes open (at most 3 per sender)"


def test_the_summarizers_state_stays_under_the_hosts_limit_with_64_crowded_conversations(
    components: dict[str, Path],
) -> None:
    """64 conversations of 64 messages, each from another sender and of every act; every
    name, id, channel and topic as long as the host lets through."""
    every_act = [Performative.REQUEST, *(p for p in Performative if p is not Performative.REQUEST)]
    with called(components["summarizer"], "summarizer", {}, LONGEST_CHANNEL) as agent:
        for talk in range(64):
            conversation = longest("talk", talk)
            inbox = [
                handed(
                    longest(f"message-{talk}", index),
                    conversation,
                    longest("sender", index),
                    every_act[index % len(every_act)],
                    LONGEST_TOPIC,
                )
                for index in range(64)
            ]
            assert agent.handle(inbox) == []
        decision = {"kind": "decision", "outcome": "\x01" * 64, "topic": LONGEST_TOPIC}
        announced = handed(
            longest("decision", 0),
            longest("talk", 0),
            "coordinator",
            Performative.INFORM,
            json.dumps(decision),
        )
        [summary] = agent.handle([announced])
        kept = json.loads(agent.state)
    assert [len(talk["participants"]) for talk in kept.values()] == [32] * 64  # at its bound
    assert summary.in_reply_to == announced.id
    assert json.loads(summary.payload)["kind"] == "summary"
