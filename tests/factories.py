"""Builders for acts and events with sensible defaults, for tests and benchmarks."""

from __future__ import annotations

import itertools

from agora.core.acts import Performative
from agora.core.envelope import Act, Event, EventKind

_ids = itertools.count()


def make_act(
    *,
    sender: str = "synth-agent",
    channel: str = "build-coord",
    act: Performative = Performative.INFORM,
    payload: str = "ready",
    hops: int = 3,
    in_reply_to: str | None = None,
    act_id: str | None = None,
) -> Act:
    return Act(
        id=act_id or f"act-{next(_ids)}",
        conversation="conv-1",
        sender=sender,
        channel=channel,
        act=act,
        payload=payload,
        hops=hops,
        time_ms=1_700_000_000_000,
        in_reply_to=in_reply_to,
    )


def make_event(*, actor: str = "host", subjects: tuple[str, ...] = ()) -> Event:
    return Event(
        id=f"event-{next(_ids)}",
        kind=EventKind.REFUSED,
        actor=actor,
        time_ms=1_700_000_000_000,
        reason="self-echo",
        detail="a message from an agent to itself is never delivered",
        subjects=subjects,
        channel="build-coord",
        agent="synth-agent",
    )
