"""``agora watch``, ``agora log`` and ``agora inject``: reading and speaking on channels.

Every act shown is verified first; one that does not verify is shown as refused, with
the reason, never as if it had been said.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, Final

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError

from agora.cli.session import (
    add_config_option,
    agora_connection,
    declared_channel,
    open_session,
    run_interruptible,
)
from agora.cli.terminal import terminal_safe
from agora.core.acts import parse_act
from agora.core.admission import admit
from agora.core.envelope import Act
from agora.core.errors import AgoraError, InputError
from agora.core.factlog import LOG_FILE, read_facts
from agora.core.ids import new_id, now_ms
from agora.core.keys import KeyRegistry
from agora.core.received import MSG_ID_HEADER
from agora.core.signing import sign_fact
from agora.core.spine import (
    FRESH_FOR_MS,
    STREAM,
    WINDOW_MS,
    channel_of,
    channel_subject,
)
from agora.host.controls import Verdict, screen_replay

LOG_BATCH: Final = 256
LOG_WAIT_S: Final = 0.5
SHOWN_PAYLOAD_CHARS: Final = 400


def register(commands: Any) -> None:
    watch = commands.add_parser("watch", help="show acts on channels as they happen")
    watch.add_argument("channels", nargs="+", metavar="CHANNEL")
    add_config_option(watch)
    watch.set_defaults(run=run_watch)

    history = commands.add_parser("log", help="print a channel's history")
    history.add_argument("channel", metavar="CHANNEL")
    history.add_argument("--json", action="store_true", help="one verified act per line, as JSON")
    add_config_option(history)
    history.set_defaults(run=run_log)

    inject = commands.add_parser("inject", help="send a signed act to a channel")
    inject.add_argument("channel", metavar="CHANNEL")
    inject.add_argument("act", metavar="ACT", help="a FIPA performative, e.g. request, inform")
    inject.add_argument("text", metavar="TEXT")
    inject.add_argument("--as", dest="speaker", help="the identity that speaks (default: operator)")
    inject.add_argument("--reply-to", help="the id of the act this answers")
    inject.add_argument(
        "--conversation",
        help="conversation id (default: the answered act's with --reply-to, else a new one)",
    )
    inject.add_argument("--hops", type=int, help="hop budget (default: defaults.hops)")
    add_config_option(inject)
    inject.set_defaults(run=run_inject)


def describe(data: bytes, subject: str, registry: KeyRegistry) -> tuple[str, dict[str, Any] | None]:
    """A readable line for one channel message, safe to show on a terminal (whatever the
    sender put in it, it is one line), and its JSON form if it verified."""
    try:
        fact = admit(data, registry, channel=channel_of(subject)).fact
    except InputError as exc:
        return terminal_safe(f"REFUSED on {subject}: {exc}"), None
    if not isinstance(fact, Act):  # pragma: no cover - admit refuses events on channels
        return terminal_safe(f"REFUSED on {subject}: not an act"), None
    when = dt.datetime.fromtimestamp(fact.time_ms / 1000, tz=dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    reply = f" re {fact.in_reply_to}" if fact.in_reply_to else ""
    payload = (
        fact.payload
        if len(fact.payload) <= SHOWN_PAYLOAD_CHARS
        else (fact.payload[:SHOWN_PAYLOAD_CHARS] + "...")
    )
    line = (
        f"{when} #{fact.channel} {fact.sender} {fact.act.value} "
        f"(hops {fact.hops}, {fact.id}{reply}): {payload}"
    )
    return terminal_safe(line), fact.to_json()


def run_watch(arguments: argparse.Namespace) -> int:
    session = open_session(arguments.config)
    # a channel named twice is watched once: each act is shown once
    channels = list(dict.fromkeys(declared_channel(session.config, c) for c in arguments.channels))

    async def watch() -> None:
        done = asyncio.Event()  # the reader went away, or the connection did

        async def closed() -> None:
            done.set()

        async with agora_connection(session.config, on_close=closed) as client:
            js = client.jetstream()
            lost: list[BrokenPipeError] = []  # the reader went away: stop watching
            for channel in channels:

                async def show(message: Any) -> None:
                    line, _ = describe(message.data, message.subject, session.registry)
                    try:
                        print(line, flush=True)
                    except BrokenPipeError as exc:
                        lost.append(exc)
                        done.set()

                await js.subscribe(
                    channel_subject(channel),
                    stream=STREAM,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.NEW,
                    cb=show,
                )
            print(f"watching {', '.join('#' + c for c in channels)} (Ctrl-C to stop)", flush=True)
            await done.wait()
            if lost:
                raise lost[0]
            raise AgoraError(
                "lost the connection to NATS: the watch ended (is the server still running?)"
            )

    run_interruptible(watch())
    return 0


def run_log(arguments: argparse.Namespace) -> int:
    session = open_session(arguments.config)
    channel = declared_channel(session.config, arguments.channel)

    async def history() -> None:
        async with agora_connection(session.config) as client:
            js = client.jetstream()
            subscription = await js.pull_subscribe(
                channel_subject(channel),
                stream=STREAM,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.ALL,
                    ack_policy=AckPolicy.NONE,
                    inactive_threshold=30.0,
                ),
            )
            while True:
                try:
                    messages = await subscription.fetch(LOG_BATCH, timeout=LOG_WAIT_S)
                except (FetchTimeoutError, TimeoutError):
                    return
                for message in messages:
                    line, obj = describe(message.data, message.subject, session.registry)
                    if arguments.json:
                        print(json.dumps(obj if obj is not None else {"refused": line}))
                    else:
                        print(line)
                if messages[-1].metadata.num_pending == 0:
                    return

    run_interruptible(history())
    return 0


def _reply_conversation(fact_id: str, conversation: str | None, facts_dir: Path) -> str | None:
    """The conversation a reply to ``fact_id`` goes in: ``conversation`` if given, else
    the answered act's (an agent answers only in the conversation it was handed, and a
    vote is counted in its own). A reply must answer a recorded fact (the recorder
    refuses any other)."""
    if not (facts_dir / LOG_FILE).exists():  # recorded elsewhere: that recorder judges
        if conversation is None:
            raise InputError(
                f"--reply-to {fact_id!r}: there is no fact log in {facts_dir} to find the "
                "conversation of the act it answers: give it with --conversation"
            )
        return conversation
    answered = next((fact for fact in read_facts(facts_dir) if fact.id == fact_id), None)
    if answered is None:
        raise InputError(
            f"--reply-to {fact_id!r} is no fact in {facts_dir}: a reply must answer a recorded act"
        )
    if conversation is None and isinstance(answered, Act):
        return answered.conversation
    return conversation


def run_inject(arguments: argparse.Namespace) -> int:
    session = open_session(arguments.config)
    config = session.config
    speaker = arguments.speaker or config.operator
    hops = config.hops if arguments.hops is None else arguments.hops
    channel = declared_channel(config, arguments.channel)
    identity = session.registry.get(speaker)
    if not identity.may_use(channel):
        raise InputError(f"{speaker!r} is not granted channel {channel!r} in the key registry")
    conversation = arguments.conversation
    if arguments.reply_to is not None:  # before the act's time is taken: it can be slow
        conversation = _reply_conversation(arguments.reply_to, conversation, config.facts_dir)
    act_id = new_id("act")
    act = Act(
        id=act_id,
        conversation=conversation or act_id,
        sender=speaker,
        channel=channel,
        act=parse_act(arguments.act),
        payload=arguments.text,
        hops=hops,
        time_ms=now_ms(),
        in_reply_to=arguments.reply_to,
    )
    envelope = sign_fact(act, session.key(speaker))

    async def send() -> int | None:
        """Publish; when the stream stored the act (ms since the epoch), if it says."""
        async with agora_connection(config) as client:
            js = client.jetstream()
            ack = await js.publish(
                channel_subject(channel), envelope, headers={MSG_ID_HEADER: act.id}
            )
            print(act.id, flush=True)  # published: whatever follows, its id is known
            try:
                async with asyncio.timeout(2.0):
                    stored = await js.get_msg(ack.stream, ack.seq)
            except Exception:  # only the check below is lost
                return None
            return int(stored.time.timestamp() * 1000) if stored.time else None

    stored_ms = asyncio.run(send())
    return 0 if stored_ms is None else _judged_fresh(act, stored_ms)


def _judged_fresh(act: Act, stored_ms: int) -> int:
    """0 if every host will take the act as fresh, else 1 and why not (it was published
    and is recorded, but every host refuses to deliver it: a clock set wrong)."""
    verdict = screen_replay(
        fact_id=act.id,
        msg_id=act.id,
        signed_ms=act.time_ms,
        stored_ms=stored_ms,
        fresh_for_ms=FRESH_FOR_MS,
        window_ms=WINDOW_MS,
    )
    if verdict is Verdict.DELIVER:
        return 0
    off_s = (act.time_ms - stored_ms) / 1000
    print(
        f"agora: the act is recorded, but every host refuses it as stale: it was signed at "
        f"a time {abs(off_s):.0f} s {'ahead of' if off_s > 0 else 'behind'} the NATS "
        "server's clock (hosts take an act signed up to "
        f"{(WINDOW_MS - FRESH_FOR_MS) // 1000} s ahead and {FRESH_FOR_MS // 1000} s behind); "
        "set this machine's clock right and send it again",
        file=sys.stderr,
    )
    return 1
