"""coordinator: runs one vote per request and announces the verdict it computes.

A ``request`` opens a vote in its conversation: the coordinator answers it with a
``propose`` whose payload is ``{"kind": "proposal", "topic": ..., "quorum": ...,
"deadline_ms": ...}``. Every ``accept-proposal`` or ``reject-proposal`` in that
conversation is a vote; a sender's first vote is the one that counts. The vote is decided
when every expected voter has voted, or when its deadline passes (the coordinator asks the
host to wake it then, so a silent electorate still gets an answer). The verdict goes out
as an ``inform`` whose payload is canonical JSON of kind ``"decision"``:

- ``accepted``: at least ``quorum`` accept votes;
- ``no-quorum``: fewer than ``quorum`` votes cast in all;
- ``rejected``: anything else.

A conversation is decided once: late votes and repeated requests change nothing.

Settings:

- ``voters``: comma-separated names. When set, only they may vote, and the vote ends as
  soon as all of them have voted. Unset: anyone may vote until the deadline.
- ``quorum``: accept votes needed (default: a majority of ``voters``, or 1).
- ``deadline-ms``: how long a vote stays open, in milliseconds (default 5000).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import wit_world
from wit_world.imports.types import Context, Message, Outcome, Performative

DEFAULT_DEADLINE_MS = 5000
MAX_OPEN_VOTES = 64
MAX_DECIDED = 64  # decided conversations remembered, so none is announced twice
MAX_BALLOTS = 64  # votes kept per vote when anyone may vote
MAX_TOPIC_CHARS = 500
BALLOTS = {Performative.ACCEPT_PROPOSAL: "accept", Performative.REJECT_PROPOSAL: "reject"}


@dataclass(frozen=True)
class Rules:
    voters: tuple[str, ...]
    quorum: int
    deadline_ms: int


@dataclass
class Vote:
    channel: str
    topic: str
    quorum: int
    deadline: int
    ballots: dict[str, str] = field(default_factory=dict)


@dataclass
class Book:
    open: dict[str, Vote] = field(default_factory=dict)
    decided: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, state: bytes) -> Book:
        if not state:
            return cls()
        data = json.loads(state)
        votes = {conversation: Vote(**vote) for conversation, vote in data["open"].items()}
        return cls(open=votes, decided=list(data["decided"]))

    def dump(self) -> bytes:
        data = {"open": {c: asdict(v) for c, v in self.open.items()}, "decided": self.decided}
        return canonical(data).encode()

    def close(self, conversation: str) -> None:
        del self.open[conversation]
        self.decided = [*self.decided, conversation][-MAX_DECIDED:]

    def next_wake(self) -> int | None:
        return min((vote.deadline for vote in self.open.values()), default=None)


class WitWorld(wit_world.WitWorld):
    def handle(self, ctx: Context, state: bytes, inbox: list[Message]) -> Outcome:
        rules = rules_from(dict(ctx.settings))
        book = Book.load(state)
        outbox: list[Message] = []
        last_ballot: dict[str, Message] = {}
        for message in inbox:
            if message.act == Performative.REQUEST:
                outbox.append(open_vote(ctx, book, rules, message))
            elif message.act in BALLOTS and cast(book, rules, message):
                last_ballot[message.conversation_id] = message
        for conversation, vote in list(book.open.items()):
            if is_over(vote, rules, ctx.now_ms):
                outbox.append(announce(ctx, conversation, vote, last_ballot.get(conversation)))
                book.close(conversation)
        return Outcome(outbox=outbox, state=book.dump(), wake_at_ms=book.next_wake())


def rules_from(settings: dict[str, str]) -> Rules:
    voters = tuple(sorted({n.strip() for n in settings.get("voters", "").split(",") if n.strip()}))
    majority = len(voters) // 2 + 1 if voters else 1
    return Rules(
        voters=voters,
        quorum=positive_int(settings, "quorum", majority),
        deadline_ms=positive_int(settings, "deadline-ms", DEFAULT_DEADLINE_MS),
    )


def positive_int(settings: dict[str, str], key: str, default: int) -> int:
    text = settings.get(key)
    if text is None:
        return default
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"setting {key!r} must be a positive integer, got {text!r}")
    return number


def open_vote(ctx: Context, book: Book, rules: Rules, request: Message) -> Message:
    conversation = request.conversation_id
    if conversation in book.open or conversation in book.decided:
        return reply(ctx, request, Performative.REFUSE, "this conversation already has a vote")
    if len(book.open) >= MAX_OPEN_VOTES:
        return reply(ctx, request, Performative.REFUSE, f"{MAX_OPEN_VOTES} votes are open")
    topic = request.payload[:MAX_TOPIC_CHARS]
    book.open[conversation] = Vote(
        channel=request.channel,
        topic=topic,
        quorum=rules.quorum,
        deadline=ctx.now_ms + rules.deadline_ms,
    )
    proposal = {
        "kind": "proposal",
        "topic": topic,
        "quorum": rules.quorum,
        "deadline_ms": rules.deadline_ms,
    }
    return reply(ctx, request, Performative.PROPOSE, canonical(proposal))


def cast(book: Book, rules: Rules, ballot: Message) -> bool:
    """Record a vote; whether it counted (an open vote, an eligible first-time voter)."""
    vote = book.open.get(ballot.conversation_id)
    if vote is None or ballot.sender in vote.ballots:
        return False
    if rules.voters and ballot.sender not in rules.voters:
        return False
    if not rules.voters and len(vote.ballots) >= MAX_BALLOTS:
        return False
    vote.ballots[ballot.sender] = BALLOTS[ballot.act]
    return True


def is_over(vote: Vote, rules: Rules, now_ms: int) -> bool:
    everyone_voted = bool(rules.voters) and all(v in vote.ballots for v in rules.voters)
    return everyone_voted or now_ms >= vote.deadline


def verdict(vote: Vote) -> tuple[str, int, int]:
    """The outcome, the accept count and the reject count."""
    accepts = sum(1 for choice in vote.ballots.values() if choice == "accept")
    rejects = len(vote.ballots) - accepts
    if accepts >= vote.quorum:
        return "accepted", accepts, rejects
    if accepts + rejects < vote.quorum:
        return "no-quorum", accepts, rejects
    return "rejected", accepts, rejects


def announce(ctx: Context, conversation: str, vote: Vote, last: Message | None) -> Message:
    outcome, accepts, rejects = verdict(vote)
    decision = {
        "kind": "decision",
        "topic": vote.topic,
        "outcome": outcome,
        "votes": vote.ballots,
        "quorum": vote.quorum,
        "accepts": accepts,
        "rejects": rejects,
    }
    return Message(
        id="",
        conversation_id=conversation,
        in_reply_to=last.id if last else None,
        sender=ctx.agent,
        channel=vote.channel,
        act=Performative.INFORM,
        payload=canonical(decision),
        hops=0,
    )


def reply(ctx: Context, message: Message, act: Performative, payload: str) -> Message:
    return Message(
        id="",
        conversation_id=message.conversation_id,
        in_reply_to=message.id,
        sender=ctx.agent,
        channel=message.channel,
        act=act,
        payload=payload,
        hops=0,
    )


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
