"""The pure control core, and the spike's reference simulation run on it."""

from __future__ import annotations

import pytest

from agora.host.controls import Verdict, reply_hops, screen_delivery
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


@pytest.mark.parametrize(("parent", "reply"), [(3, 2), (1, 0), (0, 0)])
def test_replies_always_carry_fewer_hops(parent: int, reply: int) -> None:
    assert reply_hops(parent) == reply
