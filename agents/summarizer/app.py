"""summarizer: follows each conversation and sums it up when a decision is announced.

For every conversation it sees it counts the messages and the acts, notes who took part
and the first request's payload (the topic). When its coordinator announces a decision
(an ``inform`` from the ``coordinator`` setting's agent, the sender the host verified,
whose payload is JSON with ``"kind": "decision"``) it answers that message with an
``inform`` whose payload is canonical JSON of kind ``"summary"``: ``conversation``,
``text`` (plain sentences), ``messages``, ``participants``, ``acts`` and ``outcome``.
Each conversation is summed up on its first decision only. It keeps the 64 most recently
active conversations, and names the first 32 participants of each.

These bounds keep its state under the host's 256 KiB (262,144 bytes), whatever it is
sent. Names and ids are at most 64 characters of ``[A-Za-z0-9_-]`` and the state is
compact JSON, where a character takes at most 6 bytes (a control character, which is
escaped). At its largest a conversation takes 3,608 bytes: 32 participants of 67 bytes
(2,145 with the list's brackets), a topic of 80 characters (467), an outcome of 40
(242), a count for each of the 22 acts (614, with counts of 15 digits: more messages
than it could be handed in decades) and 140 for its id, its message count and the keys.
64 of them take 230,913 bytes.

Settings: ``coordinator`` (default ``coordinator``): whose decisions it sums up.
``every`` (default 0): when above 0, a conversation is also summed up, without an
outcome, each time its message count reaches a multiple of ``every`` (a value that is
no whole number of at least 0 is said in the host log and taken as 0).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

import wit_world
from wit_world.imports.types import Context, Message, Outcome, Performative

DEFAULT_COORDINATOR = "coordinator"
# At these bounds the state is at most 230,913 bytes: the module's docstring has the sums.
MAX_CONVERSATIONS = 64
MAX_PARTICIPANTS = 32  # named per conversation
MAX_OUTCOME_CHARS = 40
SHOWN_TOPIC_CHARS = 80  # a topic is kept as shown
# Parsing JSON nested about a thousand deep exhausts the wasm call stack, a trap no
# ``except`` can catch; a decision holds two objects and its topic (at most 200 characters).
MAX_BRACKETS = 256


@dataclass
class Thread:
    messages: int = 0
    acts: dict[str, int] = field(default_factory=dict)
    participants: list[str] = field(default_factory=list)
    topic: str | None = None
    outcome: str | None = None

    def add(self, message: Message) -> None:
        act = act_name(message.act)
        self.messages += 1
        self.acts[act] = self.acts.get(act, 0) + 1
        if message.sender not in self.participants and len(self.participants) < MAX_PARTICIPANTS:
            self.participants.append(message.sender)
        if self.topic is None and message.act == Performative.REQUEST:
            self.topic = shorten(message.payload)


class WitWorld(wit_world.WitWorld):
    def handle(self, ctx: Context, state: bytes, inbox: list[Message]) -> Outcome:
        settings = dict(ctx.settings)
        every = every_from(settings)
        coordinator = settings.get("coordinator", "").strip() or DEFAULT_COORDINATOR
        threads = load(state)
        outbox: list[Message] = []
        for message in inbox:
            thread = threads.pop(message.conversation_id, None) or Thread()
            threads[message.conversation_id] = thread  # most recently active last
            thread.add(message)
            decision = decision_in(message, coordinator)
            if decision is not None and thread.outcome is None:
                thread.outcome = sound(str(decision["outcome"]))[:MAX_OUTCOME_CHARS]
                if thread.topic is None and isinstance(decision.get("topic"), str):
                    thread.topic = shorten(sound(decision["topic"]))
                outbox.append(summary(ctx, message, thread, decision))
            elif every and thread.messages % every == 0:
                outbox.append(summary(ctx, message, thread, None))
        while len(threads) > MAX_CONVERSATIONS:
            del threads[next(iter(threads))]
        return Outcome(outbox=outbox, state=dump(threads), wake_at_ms=None)


def every_from(settings: dict[str, str]) -> int:
    text = settings.get("every", "0")
    try:
        every = int(text)
    except ValueError:
        every = -1
    if every < 0:
        warn(f"setting 'every' must be a whole number (0: off), got {text!r}: using 0")
        return 0
    return every


def warn(text: str) -> None:
    print(text, file=sys.stderr)  # the host copies it into its log


def load(state: bytes) -> dict[str, Thread]:
    if not state:
        return {}
    return {conversation: Thread(**data) for conversation, data in json.loads(state).items()}


def dump(threads: dict[str, Thread]) -> bytes:
    # Compact and not escaped to ASCII, which takes 12 bytes for some characters
    state = {c: asdict(t) for c, t in threads.items()}
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()


def decision_in(message: Message, coordinator: str) -> dict[str, object] | None:
    """The decision a message announces, if it is the coordinator's and announces one."""
    if message.act != Performative.INFORM or message.sender != coordinator:
        return None
    payload = parsed(message.payload)
    if not isinstance(payload, dict) or payload.get("kind") != "decision":
        return None
    return payload if isinstance(payload.get("outcome"), str) else None


def parsed(payload: str) -> object:
    """The JSON value of a payload; None if it is not JSON or too deeply nested to read."""
    if payload.count("[") + payload.count("{") > MAX_BRACKETS:
        return None
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


def sound(text: str) -> str:
    """``text`` with any lone surrogate (JSON can escape one, a WIT string cannot hold it)
    replaced by ``?``."""
    return text.encode("utf-8", "replace").decode()


def summary(
    ctx: Context, message: Message, thread: Thread, decision: dict[str, object] | None
) -> Message:
    body: dict[str, object] = {
        "kind": "summary",
        "conversation": message.conversation_id,
        "text": describe(message.conversation_id, thread, decision),
        "messages": thread.messages,
        "participants": sorted(thread.participants),
        "acts": thread.acts,
    }
    if decision is not None:
        body["outcome"] = thread.outcome
    return Message(
        id="",
        conversation_id=message.conversation_id,
        in_reply_to=message.id,
        sender=ctx.agent,
        channel=message.channel,
        act=Performative.INFORM,
        payload=json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        hops=0,
    )


def describe(conversation: str, thread: Thread, decision: dict[str, object] | None) -> str:
    topic = f'on "{shorten(thread.topic)}"' if thread.topic else f"in conversation {conversation}"
    people = count(len(thread.participants), "participant")
    size = f"{count(thread.messages, 'message')} from {people}"
    if decision is None:
        acts = ", ".join(f"{n} {act}" for act, n in sorted(thread.acts.items()))
        return f"Conversation {topic} so far: {size} ({acts})."
    accepts, rejects, quorum = (whole(decision, key) for key in ("accepts", "rejects", "quorum"))
    tally = f"{accepts} accept to {rejects} reject (quorum {quorum})"
    return f"Vote {topic}: {thread.outcome}, {tally}. {size}."


def whole(decision: dict[str, object], key: str) -> int:
    value = decision.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def shorten(text: str) -> str:
    return text if len(text) <= SHOWN_TOPIC_CHARS else text[: SHOWN_TOPIC_CHARS - 3] + "..."


def count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def act_name(act: Performative) -> str:
    return act.name.lower().replace("_", "-")
