"""The spike's own simulation, run on agora's control core: a conformance check.

Two chatty agents, ``synth-agent`` and ``relay-agent``, are granted only ``build-coord``
and answer every message they are handed with an ``inform`` on the same channel (hops
minus one; nothing for a message with no hops). A ``maintainer`` seeds a request on
``build-coord`` and a secret on ``secret-ops``. Each round, each agent scans the whole
bus; outputs join the bus only after both have run. The spike asserts 8 deliveries
blocked by scope, 12 self-echoes dropped, convergence in round 3 and 6 agent messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agora.host.controls import Verdict, reply_hops, screen_delivery

ROUNDS: Final = 8
AGENTS: Final = ("synth-agent", "relay-agent")
GRANTS: Final = frozenset({"build-coord"})


@dataclass(frozen=True, slots=True)
class BusMessage:
    id: int
    channel: str
    sender: str
    hops: int


@dataclass(frozen=True, slots=True)
class ReferenceResult:
    scope_blocked: int
    echo_dropped: int
    converged_round: int | None
    accepted: int
    channels_of_accepted: frozenset[str]


def run_reference() -> ReferenceResult:
    bus = [
        BusMessage(1, "build-coord", "maintainer", 3),
        BusMessage(2, "secret-ops", "maintainer", 3),
    ]
    processed: dict[str, set[str]] = {agent: set() for agent in AGENTS}
    scope_blocked = echo_dropped = 0
    converged: int | None = None
    accepted: list[BusMessage] = []
    for round_number in range(ROUNDS):
        snapshot = list(bus)
        outputs: list[BusMessage] = []
        for agent in AGENTS:
            for message in snapshot:
                verdict = screen_delivery(
                    agent=agent,
                    granted=GRANTS,
                    channel=message.channel,
                    signed_sender=message.sender,
                    message_id=str(message.id),
                    hops=message.hops,
                    processed=processed[agent],
                )
                if verdict is Verdict.SCOPE_BLOCKED:
                    scope_blocked += 1
                elif verdict is Verdict.SELF_ECHO:
                    echo_dropped += 1
                if verdict in (Verdict.DELIVER, Verdict.NO_HOPS):
                    processed[agent].add(str(message.id))
                if verdict is Verdict.DELIVER:
                    next_id = len(bus) + len(outputs) + 1
                    outputs.append(
                        BusMessage(next_id, message.channel, agent, reply_hops(message.hops))
                    )
        if not outputs:
            converged = round_number
            break
        bus.extend(outputs)
        accepted.extend(outputs)
    return ReferenceResult(
        scope_blocked=scope_blocked,
        echo_dropped=echo_dropped,
        converged_round=converged,
        accepted=len(accepted),
        channels_of_accepted=frozenset(m.channel for m in accepted),
    )
