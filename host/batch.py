"""What one batch of an agent's messages gathers as the runner screens it.

The messages to hand to the agent, the ids it finishes with, the hop budgets it hands
over, what each control refused (and where in the stream those messages were), and
everything to publish once the batch is saved; with the verdicts that decide how a
refusal is treated and the words each refusal is recorded with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from agora.core.envelope import Act
from agora.core.spine import arrival_channel
from agora.host.agent_record import Outgoing
from agora.host.controls import Handed, Verdict
from agora.host.sandbox import GuestMessage

# a copy of a message, refused: it must not mark the act itself processed
COPIES: Final = frozenset({Verdict.REPLAYED, Verdict.STALE})
# Verdicts that would be the same for the same message at any later time (unlike a
# kill's, which a resume lifts): a batch refused only by these need not be saved.
# (Not scope: which channels an agent is granted comes from the configuration.)
SETTLED: Final = frozenset(
    {Verdict.SELF_ECHO, Verdict.DUPLICATE, Verdict.NO_HOPS, Verdict.REPLAYED, Verdict.STALE}
)
REFUSAL_DETAIL: Final = {
    Verdict.SCOPE_BLOCKED: "the agent was not granted this channel",
    Verdict.SELF_ECHO: "the agent's own message is never delivered back to it",
    Verdict.DUPLICATE: "the agent already processed this message",
    Verdict.NO_HOPS: "the message has no hop budget left",
    Verdict.REPLAYED: "a copy of the message, published again under another message id",
    Verdict.STALE: "stored too long after it was signed to be told from a copy published again",
    "killed": "a kill is in force for this agent or channel",
    "quarantined": "the agent is quarantined after a fault",
}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One act handed to the agent (for observers such as the demo and the benchmarks).

    ``at_ns`` (``time.perf_counter_ns``) is when the call that handed it over began.
    """

    agent: str
    act: Act
    at_ns: int


@dataclass(slots=True)
class StreamPlaces:
    """Where the messages one refusal covers are in the stream."""

    sequences: list[int] = dataclasses.field(default_factory=list)
    latest_ms: int = 0  # when the latest of them was stored


@dataclass(frozen=True)
class BatchMark:
    """A batch's outgoing count, budgets and emitted count at one moment."""

    outgoing: int
    parents: dict[str, Handed]
    conversations: dict[str, int]
    emitted: int


class Batch:
    """What one batch gathers as it is screened: the inbox, and what to publish."""

    def __init__(self, agent: str, *, processed: Iterable[str]) -> None:
        self.agent = agent
        self.last_seq = 0
        self.handed_at_ns = 0
        self.ids: list[str] = []
        self.inbox: list[GuestMessage] = []
        self.delivered: list[Act] = []
        self.handed: list[Delivery] = []  # for the observers, once the batch is saved
        # budgets handed over, then spent, in this batch (laid over the record's)
        self.parents: dict[str, Handed] = {}
        self.conversations: dict[str, int] = {}
        self.outgoing: list[Outgoing] = []
        self.emitted = 0  # of the outgoing, the agent's acts
        self.discarded = 0  # of what the call returned, the acts a kill stopped
        # the ids refused (each once, in order) by control and channel; an act that gets
        # an event of its own (see Vouched.grounded) also has its id in the key
        self.refused: dict[tuple[str, str, str], dict[str, None]] = {}
        # where in the stream what each refused came from: its sequences, and when the
        # latest of them was stored
        self.refused_from: dict[tuple[str, str, str], StreamPlaces] = {}
        # ids the agent finished with, plus those delivered in this batch: one set
        # lookup per message instead of a scan of the record's recent ids
        self.processed: set[str] = set(processed)

    def mark(self) -> BatchMark:
        """Where the batch stands, for :meth:`undo_emitted`."""
        return BatchMark(
            len(self.outgoing), dict(self.parents), dict(self.conversations), self.emitted
        )

    def undo_emitted(self, mark: BatchMark) -> int:
        """Take back the agent's acts emitted since ``mark`` (the host's events stay) and
        the hop budgets they spent; they count as discarded. Returns how many."""
        since = self.outgoing[mark.outgoing :]
        self.outgoing[mark.outgoing :] = [o for o in since if arrival_channel(o.subject) is None]
        self.parents, self.conversations = mark.parents, mark.conversations
        taken_back = self.emitted - mark.emitted
        self.emitted = mark.emitted
        self.discarded += taken_back
        return taken_back

    def refuse(self, key: tuple[str, str, str], act_id: str, sequence: int, stored_ms: int) -> None:
        self.refused.setdefault(key, {})[act_id] = None
        places = self.refused_from.setdefault(key, StreamPlaces())
        places.sequences.append(sequence)
        places.latest_ms = max(places.latest_ms, stored_ms)

    def deliver(self, act: Act) -> None:
        self.processed.add(act.id)
        self.delivered.append(act)
        self.inbox.append(
            GuestMessage(
                id=act.id,
                conversation_id=act.conversation,
                in_reply_to=act.in_reply_to,
                sender=act.sender,
                channel=act.channel,
                act=act.act.value,
                payload=act.payload,
                hops=act.hops,
            )
        )
        self.parents[act.id] = Handed(act.hops, act.conversation)
        self.conversations.pop(act.conversation, None)  # the newest last
        self.conversations[act.conversation] = act.hops
