"""coordinator: runs one vote per request and announces the verdict it computes.

A ``request`` opens a vote in its conversation: the coordinator answers it with a
``propose`` whose payload is ``{"kind": "proposal", "topic": ..., "quorum": ...,
"deadline_ms": ...}``. A ballot is an ``accept-proposal`` or ``reject-proposal`` on the
vote's channel that answers the proposal; a sender's first ballot is the one that counts.
(The host stamps the proposal's id, so the coordinator never learns it; but it is handed
every message on its channels except its own, so a ballot that answers a message it was
handed, such as the request, another ballot or someone else's proposal, is no ballot on
its proposal.) The vote is decided when every expected voter has voted, or when its
deadline passes (the coordinator asks the host to wake it then, so a silent electorate
still gets an answer); a ballot handed over after the deadline changes nothing. The
verdict answers the request, as an ``inform`` whose payload is canonical JSON of kind
``"decision"``:

- ``accepted``: at least ``quorum`` accept votes;
- ``no-quorum``: fewer than ``quorum`` votes cast in all;
- ``rejected``: anything else.

A conversation is decided once: late votes and repeated requests change nothing (it
remembers the last 512 decided conversations).

What it keeps is bounded so that its state stays under the host's 256 KiB (262,144
bytes), whatever is sent. Names and ids are at most 64 characters of ``[A-Za-z0-9_-]``,
so an id listed in the state takes at most 67 bytes of JSON: the 512 decided
conversations and the 256 ids of messages heard in open votes take at most 768 * 67 =
51,456 bytes, and 64 more cover the state's keys and brackets. The 210,624 bytes left
are the open votes' (``OPEN_VOTES_BYTES``): before a vote is opened or a ballot counted,
the bytes it adds are weighed against them. A request that does not fit is refused, as
is one while 64 votes are open or while its sender has ``votes-per-sender`` open (so
that no one sender can take every vote); a ballot that does not fit is not counted, as
a ballot past the 64th is not when anyone may vote. A vote at its largest (64-character
conversation, request id and sender, a 128-character channel, a 200-character topic of control
characters at 6 bytes each) takes about 1,630 bytes before its ballots and a ballot at
most 77, so the 64 votes always fit, with some 1,380 ballots among them.

Settings (one that is wrong is said in the host log and replaced, never fatal):

- ``voters``: comma-separated names. When set, only they may vote, and the vote ends as
  soon as all of them have voted. Unset: anyone may vote until the deadline.
- ``quorum``: accept votes needed (default: a majority of ``voters``, or 1; at least 1).
- ``deadline-ms``: how long a vote stays open, in milliseconds (default 5000; from 1 to a
  week).
- ``votes-per-sender``: how many votes one sender may hold open at once (default 8; from
  1 to 64). Every request brought from GitHub comes from the bridge's identity.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

import wit_world
from wit_world.imports.types import Context, Message, Outcome, Performative

DEFAULT_DEADLINE_MS = 5000
MAX_DEADLINE_MS = 7 * 24 * 60 * 60 * 1000  # a week
MAX_OPEN_VOTES = 64
DEFAULT_VOTES_PER_SENDER = 8  # so that one sender cannot hold every vote
MAX_DECIDED = 512  # decided conversations remembered, so none is announced twice
MAX_BALLOTS = 64  # votes kept per vote when anyone may vote
MAX_HEARD = 256  # ids of recent messages handed over in open votes' conversations
MAX_TOPIC_CHARS = 200
# The state's bound, drawn in the module's docstring: the host quarantines an agent whose
# state is larger than MAX_STATE_BYTES. An id in a JSON list: 64 characters, its quotes
# and a comma.
MAX_STATE_BYTES = 256 * 1024
LISTED_ID_BYTES = 64 + 3
OPEN_VOTES_BYTES = MAX_STATE_BYTES - (MAX_DECIDED + MAX_HEARD) * LISTED_ID_BYTES - 64
BALLOTS = {Performative.ACCEPT_PROPOSAL: "accept", Performative.REJECT_PROPOSAL: "reject"}


@dataclass(frozen=True)
class Rules:
    voters: tuple[str, ...]
    quorum: int
    deadline_ms: int
    votes_per_sender: int = DEFAULT_VOTES_PER_SENDER


@dataclass
class Vote:
    channel: str
    topic: str
    quorum: int
    deadline: int
    ballots: dict[str, str] = field(default_factory=dict)
    request: str | None = None  # the id of the request (None in state saved before)
    requester: str | None = None  # who sent the request (None in state saved before)


@dataclass
class Book:
    open: dict[str, Vote] = field(default_factory=dict)
    decided: list[str] = field(default_factory=list)
    heard: list[str] = field(default_factory=list)
    # At least the bytes ``open`` takes in the state; take() keeps it to OPEN_VOTES_BYTES
    open_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.open_bytes = sum(entry_bytes(c, asdict(v)) for c, v in self.open.items())

    @classmethod
    def load(cls, state: bytes) -> Book:
        if not state:
            return cls()
        data = json.loads(state)
        votes = {conversation: Vote(**vote) for conversation, vote in data["open"].items()}
        return cls(open=votes, decided=data["decided"], heard=data.get("heard", []))

    def dump(self) -> bytes:
        data = {
            "open": {c: asdict(v) for c, v in self.open.items()},
            "decided": self.decided,
            "heard": self.heard[-MAX_HEARD:],
        }
        return canonical(data).encode()

    def take(self, size: int) -> bool:
        """Whether ``size`` more bytes of open votes fit in the state; if so they are taken."""
        if self.open_bytes + size > OPEN_VOTES_BYTES:
            return False
        self.open_bytes += size
        return True

    def close(self, conversation: str) -> None:
        self.open_bytes -= entry_bytes(conversation, asdict(self.open.pop(conversation)))
        self.decided = [*self.decided, conversation][-MAX_DECIDED:]

    def next_wake(self) -> int | None:
        return min((vote.deadline for vote in self.open.values()), default=None)


class WitWorld(wit_world.WitWorld):
    def handle(self, ctx: Context, state: bytes, inbox: list[Message]) -> Outcome:
        rules = rules_from(dict(ctx.settings))
        book = Book.load(state)
        outbox = close_finished(ctx, book, rules)  # first, so that a late ballot is late
        for message in inbox:
            if message.act == Performative.REQUEST:
                outbox.append(open_vote(ctx, book, rules, message))
            elif message.act in BALLOTS:
                cast(book, rules, message)
            if message.conversation_id in book.open:
                book.heard.append(message.id)
        outbox += close_finished(ctx, book, rules)
        return Outcome(outbox=outbox, state=book.dump(), wake_at_ms=book.next_wake())


def rules_from(settings: dict[str, str]) -> Rules:
    voters = tuple(sorted({n.strip() for n in settings.get("voters", "").split(",") if n.strip()}))
    majority = len(voters) // 2 + 1 if voters else 1
    return Rules(
        voters=voters,
        quorum=whole_number(settings, "quorum", majority, low=1),
        deadline_ms=whole_number(
            settings, "deadline-ms", DEFAULT_DEADLINE_MS, low=1, high=MAX_DEADLINE_MS
        ),
        votes_per_sender=whole_number(
            settings, "votes-per-sender", DEFAULT_VOTES_PER_SENDER, low=1, high=MAX_OPEN_VOTES
        ),
    )


def whole_number(
    settings: dict[str, str], key: str, default: int, *, low: int, high: int | None = None
) -> int:
    """A setting that is a whole number from ``low`` to ``high``. A wrong one is said in
    the host log: one out of range is brought into it, any other (``5000.0``, ``0x10``,
    ``1e3``) gives the default."""
    text = settings.get(key)
    if text is None:
        return default
    try:
        number = int(text)
    except ValueError:
        warn(f"setting {key!r} must be a whole number, got {text!r}: using {default}")
        return default
    kept = max(low, number if high is None else min(number, high))
    if kept != number:
        limits = f"from {low} to {high}" if high is not None else f"at least {low}"
        warn(f"setting {key!r} must be {limits}, got {text!r}: using {kept}")
    return kept


def warn(text: str) -> None:
    print(text, file=sys.stderr)  # the host copies it into its log


def open_vote(ctx: Context, book: Book, rules: Rules, request: Message) -> Message:
    conversation = request.conversation_id
    if conversation in book.open or conversation in book.decided:
        return reply(ctx, request, Performative.REFUSE, "this conversation already has a vote")
    held = sum(1 for vote in book.open.values() if vote.requester == request.sender)
    if held >= rules.votes_per_sender:
        most = rules.votes_per_sender
        said = f"{request.sender} already has {held} votes open (at most {most} per sender)"
        return reply(ctx, request, Performative.REFUSE, said)
    if len(book.open) >= MAX_OPEN_VOTES:
        return reply(ctx, request, Performative.REFUSE, f"{MAX_OPEN_VOTES} votes are open")
    topic = request.payload[:MAX_TOPIC_CHARS]
    vote = Vote(
        channel=request.channel,
        topic=topic,
        quorum=rules.quorum,
        deadline=ctx.now_ms + rules.deadline_ms,
        request=request.id,
        requester=request.sender,
    )
    size = entry_bytes(conversation, asdict(vote))
    if not book.take(size):
        said = (
            f"no room for another vote: the open votes take {book.open_bytes} of the "
            f"{OPEN_VOTES_BYTES} bytes kept for them and this one needs {size}"
        )
        return reply(ctx, request, Performative.REFUSE, said)
    book.open[conversation] = vote
    proposal = {
        "kind": "proposal",
        "topic": topic,
        "quorum": rules.quorum,
        "deadline_ms": rules.deadline_ms,
    }
    return reply(ctx, request, Performative.PROPOSE, canonical(proposal))


def cast(book: Book, rules: Rules, ballot: Message) -> None:
    """Count a ballot on an open vote's proposal from an eligible first-time voter."""
    vote = book.open.get(ballot.conversation_id)
    if vote is None or ballot.sender in vote.ballots or not answers_proposal(book, vote, ballot):
        return
    if rules.voters and ballot.sender not in rules.voters:
        return
    if not rules.voters and len(vote.ballots) >= MAX_BALLOTS:
        return
    choice = BALLOTS[ballot.act]
    if book.take(entry_bytes(ballot.sender, choice)):
        vote.ballots[ballot.sender] = choice


def answers_proposal(book: Book, vote: Vote, ballot: Message) -> bool:
    """Whether a ballot is on the vote's channel and answers a message the coordinator was
    not handed (of those in the conversation, only its own: the proposal)."""
    parent = ballot.in_reply_to
    return (
        ballot.channel == vote.channel
        and parent is not None
        and parent != vote.request
        and parent not in book.heard
    )


def close_finished(ctx: Context, book: Book, rules: Rules) -> list[Message]:
    """Announce and close every vote that is over."""
    over = [c for c, vote in book.open.items() if is_over(vote, rules, ctx.now_ms)]
    decisions = [announce(ctx, conversation, book.open[conversation]) for conversation in over]
    for conversation in over:
        book.close(conversation)
    return decisions


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


def announce(ctx: Context, conversation: str, vote: Vote) -> Message:
    """The decision, answering the request: the host takes its hop budget from there."""
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
        in_reply_to=vote.request,
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


def entry_bytes(key: str, value: object) -> int:
    """The bytes ``key: value`` adds to an object of the state, with a byte to spare: as an
    object of its own, its two braces stand for the comma before it."""
    return len(canonical({key: value}).encode())
