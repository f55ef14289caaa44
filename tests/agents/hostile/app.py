"""hostile: a test-only agent that breaks one rule at a time, chosen by its ``mode`` setting.

Modes (any other value, including none, is ``stop-ignorer``):

=================  ==========================================================
``loop``           never returns (spins until fuel or the deadline stops it)
``membomb``        allocates memory until the store's limit traps it
``trap``           raises an exception
``emit-ungranted`` replies on ``secret-ops`` instead of the message's channel
``emit-control``   replies on ``$KV.AGORA_CONTROL.all``
``emit-malformed`` replies on ``build-coord.>``
``forge-sender``   replies as ``maintainer``
``oversized``      replies with a payload of 100,000 characters (past the payload limit,
                   within what an envelope may hold)
``huge``           replies with a payload of 1,000,000 characters (more than any envelope
                   holds)
``flood``          sends 10,000 replies for each message
``bulky``          sends 20 replies of 60,000 characters to each message that answers none
                   (more than one record holds), and none to answers
``raise-hops``     asks for 255 hops on its replies
``bad-reply``      replies "in reply to" ``no-such-id``
``print``          writes a line to stdout and one to stderr, then replies normally
``chatter``        writes 256 KiB to stdout on every call, then replies normally
``spin``           asks to be woken at once, every time, and on every call speaks again in
                   each conversation it was ever handed a message in, in reply and not
``sleep``          sleeps for an hour in a blocking WASI call (no fuel burns meanwhile)
``probe``          tries the filesystem, the environment and the network (``port``
                   setting: a loopback TCP port), and replies with what it found
``hoard``          returns a state of ``state-bytes`` bytes (a setting)
``stop-ignorer``   replies to everything, "stop" included, like chatty
=================  ==========================================================
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

import wit_world
from wit_world.imports.types import Context, Message, Outcome, Performative

OVERSIZED_CHARS = 100_000
HUGE_CHARS = 1_000_000
FLOOD_COPIES = 10_000
BULKY_COPIES = 20
BULKY_CHARS = 60_000
MEMBOMB_CHUNK_BYTES = 16 * 1024 * 1024
MAX_PAYLOAD_CHARS = 200
SLEEP_S = 3600
CHATTER_LINES = 256


class WitWorld(wit_world.WitWorld):
    def handle(self, ctx: Context, state: bytes, inbox: list[Message]) -> Outcome:
        mode = dict(ctx.settings).get("mode", "stop-ignorer")
        if mode == "spin":
            return spin(ctx, state, inbox)
        misbehave(mode, ctx)
        if mode == "bulky":
            inbox = [message for message in inbox if message.in_reply_to is None]
        outbox = [bent for message in inbox for bent in bend(mode, answer(ctx, message))]
        if mode == "probe":
            outbox = [replace(message, payload=probe(ctx)) for message in outbox]
        if mode == "hoard":
            state = bytes(int(dict(ctx.settings)["state-bytes"]))
        return Outcome(outbox=outbox, state=state, wake_at_ms=None)


def misbehave(mode: str, ctx: Context) -> None:
    """The modes that never get as far as replying (and ``print``, which does)."""
    if mode == "loop":
        spins = 0
        while True:
            spins += 1
    if mode == "membomb":
        hoard = []
        while True:
            hoard.append(bytearray(MEMBOMB_CHUNK_BYTES))
    if mode == "trap":
        raise RuntimeError(f"{ctx.agent} trapped on purpose")
    if mode == "chatter":
        for n in range(CHATTER_LINES):
            print(f"{n:04d}" + "x" * 1019)
    if mode == "sleep":
        time.sleep(SLEEP_S)
    if mode == "print":
        print(f"{ctx.agent} says hello on stdout")
        print(f"{ctx.agent} says hello on stderr", file=sys.stderr)


def bend(mode: str, message: Message) -> list[Message]:  # noqa: PLR0911 - one mode each
    """The reply as the mode twists it."""
    if mode == "emit-ungranted":
        return [replace(message, channel="secret-ops")]
    if mode == "emit-control":
        return [replace(message, channel="$KV.AGORA_CONTROL.all")]
    if mode == "emit-malformed":
        return [replace(message, channel="build-coord.>")]
    if mode == "forge-sender":
        return [replace(message, sender="maintainer")]
    if mode == "oversized":
        return [replace(message, payload="x" * OVERSIZED_CHARS)]
    if mode == "huge":
        return [replace(message, payload="x" * HUGE_CHARS)]
    if mode == "flood":
        return [replace(message, payload=f"{message.payload} #{n}") for n in range(FLOOD_COPIES)]
    if mode == "bulky":
        return [replace(message, payload="y" * BULKY_CHARS) for _ in range(BULKY_COPIES)]
    if mode == "raise-hops":
        return [replace(message, hops=255)]
    if mode == "bad-reply":
        return [replace(message, in_reply_to="no-such-id")]
    return [message]


def answer(ctx: Context, message: Message) -> Message:
    text = f"{ctx.agent} heard {message.sender}: {message.payload}"
    return Message(
        id="",
        conversation_id=message.conversation_id,
        in_reply_to=message.id,
        sender=ctx.agent,
        channel=message.channel,
        act=Performative.INFORM,
        payload=text[:MAX_PAYLOAD_CHARS],
        hops=0,
    )


def spin(ctx: Context, state: bytes, inbox: list[Message]) -> Outcome:
    known = json.loads(state or b"{}")  # conversation -> [channel, last message id]
    for message in inbox:
        known[message.conversation_id] = [message.channel, message.id]
    outbox = [
        Message(
            id="",
            conversation_id=conversation,
            in_reply_to=parent,
            sender=ctx.agent,
            channel=channel,
            act=Performative.INFORM,
            payload="and again",
            hops=0,
        )
        for conversation, (channel, last) in known.items()
        for parent in (None, last)
    ]
    return Outcome(outbox=outbox, state=json.dumps(known).encode(), wake_at_ms=0)


def probe(ctx: Context) -> str:
    """What the sandbox lets the agent reach: one ``name=outcome`` per try."""
    port = int(dict(ctx.settings).get("port", "9"))
    found = [f"env={len(os.environ)}"]
    for name, attempt in (
        ("read", lambda: Path("/etc/hostname").read_text()),
        ("list", lambda: list(Path("/").iterdir())),
        ("write", lambda: Path("/probe").write_text("x")),
        ("connect", lambda: socket.socket().connect(("127.0.0.1", port))),
        ("resolve", lambda: socket.getaddrinfo(b"localhost", port)),
    ):
        try:
            attempt()
        except Exception as exc:
            found.append(f"{name}={type(exc).__name__}")
        else:
            found.append(f"{name}=ok")
    return " ".join(found)
