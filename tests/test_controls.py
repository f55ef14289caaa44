"""The pure control core, and the spike's reference simulation run on it."""

from __future__ import annotations

import pytest

from agora.host.controls import (
    EmitDecision,
    EmitVerdict,
    Handed,
    Verdict,
    reply_hops,
    screen_delivery,
    screen_emit,
    screen_replay,
)
from agora.host.reference import run_reference


def test_reference_simulation_gives_the_spike_numbers() -> None:
    result = run_reference()
    assert result.scope_blocked == 8
    assert result.echo_dropped == 12
    assert result.converged_round == 3
    assert result.accepted == 6
    assert result.channels_of_accepted == {"build-coord"}


def _screen(**changes: object) -> Verdict:
    arguments: dict[str, object] = {
        "agent": "synth-agent",
        "granted": {"build-coord"},
        "channel": "build-coord",
        "signed_sender": "relay-agent",
        "message_id": "m1",
        "hops": 2,
        "processed": set(),
    }
    arguments.update(changes)
    return screen_delivery(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "verdict"),
    [
        ({}, Verdict.DELIVER),
        ({"channel": "secret-ops"}, Verdict.SCOPE_BLOCKED),
        ({"signed_sender": "synth-agent"}, Verdict.SELF_ECHO),
        ({"processed": {"m1"}}, Verdict.DUPLICATE),
        ({"hops": 0}, Verdict.NO_HOPS),
        # scope is structural: it wins over every other reason
        ({"channel": "secret-ops", "signed_sender": "synth-agent"}, Verdict.SCOPE_BLOCKED),
        # the self-echo drop wins over idempotency and the hop budget
        ({"signed_sender": "synth-agent", "processed": {"m1"}, "hops": 0}, Verdict.SELF_ECHO),
    ],
)
def test_each_control_and_their_order(changes: dict[str, object], verdict: Verdict) -> None:
    assert _screen(**changes) is verdict


@pytest.mark.parametrize(
    ("changes", "verdict"),
    [
        ({}, Verdict.DELIVER),
        ({"msg_id": "act-other"}, Verdict.REPLAYED),  # a copy under a new message id
        ({"msg_id": None}, Verdict.REPLAYED),  # published with no message id at all
        ({"stored_ms": 1_000_000 + 90_001}, Verdict.STALE),  # stored past its freshness
        ({"stored_ms": 1_000_000 + 90_000}, Verdict.DELIVER),
        ({"stored_ms": 1_000_000 - 30_000}, Verdict.DELIVER),  # its signer's clock is ahead
        ({"stored_ms": 1_000_000 - 30_001}, Verdict.STALE),  # too far ahead: a copy could
        # then be stored more than the duplicate window after the first
    ],
)
def test_a_copy_published_again_is_told_from_the_first(
    changes: dict[str, object], verdict: Verdict
) -> None:
    arguments: dict[str, object] = {
        "fact_id": "act-1",
        "msg_id": "act-1",
        "signed_ms": 1_000_000,
        "stored_ms": 1_000_050,
        "fresh_for_ms": 90_000,
        "window_ms": 120_000,
    }
    arguments.update(changes)
    assert screen_replay(**arguments) is verdict  # type: ignore[arg-type]


@pytest.mark.parametrize(("parent", "reply"), [(3, 2), (1, 0), (0, 0)])
def test_replies_always_carry_fewer_hops(parent: int, reply: int) -> None:
    assert reply_hops(parent) == reply


def _emit(**changes: object) -> EmitDecision:
    arguments: dict[str, object] = {
        "agent": "synth-agent",
        "granted": {"build-coord"},
        "sender": "",
        "channel": "build-coord",
        "conversation": "conv-1",
        "in_reply_to": "m1",
        "payload": "ok",
        "parents": {"m1": Handed(3, "conv-1")},
        "conversations": {"conv-1": 5},
    }
    arguments.update(changes)
    return screen_emit(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "verdict", "hops"),
    [
        ({}, EmitVerdict.EMIT, 2),
        ({"sender": "synth-agent"}, EmitVerdict.EMIT, 2),
        ({"in_reply_to": None}, EmitVerdict.EMIT, 4),  # a timer's output: the conversation's
        ({"parents": {"m1": Handed(1, "conv-1")}}, EmitVerdict.EMIT, 0),
        # a budget spent on earlier messages begets no more
        ({"parents": {"m1": Handed(0, "conv-1")}}, EmitVerdict.SPENT, 0),
        ({"in_reply_to": None, "conversations": {"conv-1": 0}}, EmitVerdict.SPENT, 0),
        # a reply stays in its parent's conversation
        ({"conversation": "elsewhere"}, EmitVerdict.WRONG_CONVERSATION, 0),
        ({"sender": "maintainer"}, EmitVerdict.FORGED_SENDER, 0),
        ({"channel": "build-coord.>"}, EmitVerdict.MALFORMED, 0),
        ({"channel": "$KV.agora-control.all"}, EmitVerdict.MALFORMED, 0),
        ({"conversation": "a b"}, EmitVerdict.MALFORMED, 0),
        ({"channel": "secret-ops"}, EmitVerdict.UNGRANTED, 0),
        ({"payload": "x" * (64 * 1024 + 1)}, EmitVerdict.TOO_LARGE, 0),
        ({"payload": "\x01" * 11_000}, EmitVerdict.TOO_LARGE, 0),  # 66,000 bytes in JSON
        ({"in_reply_to": "never-seen"}, EmitVerdict.UNKNOWN_REPLY, 0),
        # the conversation's opening message, its budget no longer held: the
        # conversation's is drawn on (a decision long after its request)
        ({"in_reply_to": "conv-1", "parents": {}}, EmitVerdict.EMIT, 4),
        (
            {"in_reply_to": "conv-1", "parents": {}, "conversations": {"conv-1": 0}},
            EmitVerdict.SPENT,
            0,
        ),
        # ...only in a conversation the agent was handed a message in
        (
            {"in_reply_to": "other", "conversation": "other", "parents": {}},
            EmitVerdict.UNKNOWN_REPLY,
            0,
        ),
        # a parent still held is drawn on, whatever its id
        (
            {"in_reply_to": "conv-1", "parents": {"conv-1": Handed(2, "conv-1")}},
            EmitVerdict.EMIT,
            1,
        ),
        ({"in_reply_to": None, "conversation": "other"}, EmitVerdict.NO_PARENT, 0),
    ],
)
def test_emit_screening(changes: dict[str, object], verdict: EmitVerdict, hops: int) -> None:
    decision = _emit(**changes)
    assert decision.verdict is verdict
    assert decision.hops == hops
    assert (decision.detail == "") is (verdict is EmitVerdict.EMIT)


def test_a_reply_to_a_forgotten_opener_spends_the_conversations_budget() -> None:
    conversations = {"conv-1": 3}
    budgets = []
    while (
        decision := _emit(in_reply_to="conv-1", parents={}, conversations=conversations)
    ).verdict is EmitVerdict.EMIT:
        assert decision.from_conversation
        budgets.append(decision.hops)
        conversations["conv-1"] = decision.hops
    assert budgets == [2, 1, 0]
    assert decision.verdict is EmitVerdict.SPENT
    assert not _emit().from_conversation


def test_the_forged_sender_is_checked_before_anything_else() -> None:
    decision = _emit(sender="maintainer", channel="secret-ops", payload="x" * 70_000)
    assert decision.verdict is EmitVerdict.FORGED_SENDER


def test_each_message_sent_spends_a_hop_of_what_it_draws_on() -> None:
    # What the runner does with each decision: the source is left with the message's
    # budget. One message with 3 hops begets at most 3 replies, then none.
    parents = {"m1": Handed(3, "conv-1")}
    budgets = []
    while (decision := _emit(parents=parents)).verdict is EmitVerdict.EMIT:
        budgets.append(decision.hops)
        parents["m1"] = Handed(decision.hops, "conv-1")
    assert budgets == [2, 1, 0]
    assert decision.verdict is EmitVerdict.SPENT
    assert "(m1) has no hop budget left" in decision.detail
