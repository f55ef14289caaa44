"""The cross-talk controls, as pure decisions over plain data.

Each question the host asks before handing a message to an agent, or before publishing
what an agent emitted, is answered here without I/O, so the same rules run in the live
host and in the spike's reference simulation (:mod:`agora.host.reference`).

Delivery, in this order (the first that applies wins):

1. scope: a channel the agent was not granted is never delivered (structural);
2. self-echo: a message whose *signed* sender is the agent is never delivered to it,
   on any channel; nothing can turn this off;
3. idempotency: a message the agent already processed is skipped;
4. hop budget: a message with no hops left is recorded but delivered to no agent.

Emission: the host, not the agent, sets the hop budget of a reply (one less than the
message it answers), and refuses emits to channels the agent was not granted.
"""

from __future__ import annotations

from collections.abc import Container
from enum import StrEnum


class Verdict(StrEnum):
    DELIVER = "deliver"
    SCOPE_BLOCKED = "scope-blocked"
    SELF_ECHO = "self-echo"
    DUPLICATE = "duplicate"
    NO_HOPS = "no-hops"


def screen_delivery(
    *,
    agent: str,
    granted: Container[str],
    channel: str,
    signed_sender: str,
    message_id: str,
    hops: int,
    processed: Container[str],
) -> Verdict:
    """Whether ``agent`` may be handed this message, and if not, which control says no."""
    if channel not in granted:
        return Verdict.SCOPE_BLOCKED
    if signed_sender == agent:
        return Verdict.SELF_ECHO
    if message_id in processed:
        return Verdict.DUPLICATE
    if hops <= 0:
        return Verdict.NO_HOPS
    return Verdict.DELIVER


def reply_hops(parent_hops: int) -> int:
    """The hop budget of a reply: one less than its parent's, never more, never below 0."""
    return max(parent_hops - 1, 0)
