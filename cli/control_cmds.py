"""``agora kill`` and ``agora resume``: the out-of-band control path.

A kill is a ``killed`` event signed by an operator (by default the configured one),
written to the control bucket, where every host sees it before its next delivery, and
published as a fact. ``resume`` writes a ``resumed`` event under the same key;
``resume --all`` writes one under every key whose kill or quarantine is in force, so it
lifts them all (not only a kill of everything). Nothing said on a channel can do either.

Once written, the bucket is read back as every host reads it: an event that is not in
force there (an event under the same key signed later, by an operator whose clock is
ahead, outranks it) ends the command with an error naming the event that is, and a
resume that leaves its target stopped by another key (a kill of everything, say) says
so.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from agora.cli.session import (
    Session,
    add_config_option,
    agora_connection,
    declared_channel,
    open_session,
)
from agora.cli.terminal import show, terminal_safe
from agora.core.admission import admit
from agora.core.control import ALL_KEY, control_key, key_of_event, record_and_switch
from agora.core.envelope import MAX_TEXT_FIELD_CHARS, Event, EventKind
from agora.core.errors import AgoraError, InputError
from agora.core.ids import new_id, now_ms
from agora.core.keys import KeyRegistry, Role
from agora.core.signing import sign_fact
from agora.host.killswitch import BLOCKING_KINDS, KillSwitch


def register(commands: Any) -> None:
    for name, kind, words in (
        ("kill", EventKind.KILLED, "stop delivering to an agent, a channel or everything"),
        ("resume", EventKind.RESUMED, "undo a kill or a quarantine"),
    ):
        parser = commands.add_parser(name, help=words)
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--agent", help="one agent")
        target.add_argument("--channel", help="one channel (every agent on it)")
        target.add_argument(
            "--all",
            action="store_true",
            help="kill: every agent on every channel; resume: lift every kill and quarantine "
            "in force",
        )
        parser.add_argument(
            "--as", dest="speaker", help="the operator who signs (default: operator)"
        )
        parser.add_argument(
            "--reason",
            type=reason_text,
            default="",
            help=f"a sentence for the record (at most {MAX_TEXT_FIELD_CHARS} characters)",
        )
        add_config_option(parser)
        parser.set_defaults(run=run_switch, kind=kind)


def reason_text(text: str) -> str:
    """``--reason``: what the event's ``detail`` may hold."""
    if len(text) > MAX_TEXT_FIELD_CHARS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_TEXT_FIELD_CHARS} characters, got {len(text)}"
        )
    return text


def switch_event(session: Session, arguments: argparse.Namespace) -> tuple[Event, bytes]:
    """The signed event, refused here if every host would ignore it (an unknown agent
    or channel, or a signer who may not switch anything)."""
    registry = session.registry
    agents = sorted(n for n in registry.names if registry.get(n).role is Role.AGENT)
    if arguments.agent is not None and arguments.agent not in agents:
        raise InputError(
            f"no agent {arguments.agent!r} in the key registry: the agents are "
            f"{', '.join(agents) or 'none'}"
        )
    if arguments.channel is not None:
        declared_channel(session.config, arguments.channel)
    return signed_switch(session, arguments, agent=arguments.agent, channel=arguments.channel)


def signed_switch(
    session: Session, arguments: argparse.Namespace, *, agent: str | None, channel: str | None
) -> tuple[Event, bytes]:
    """A kill or resume of one target, signed by the operator, refused here if every host
    would ignore it (a signer who may not switch anything)."""
    speaker = arguments.speaker or session.config.operator
    kind: EventKind = arguments.kind
    key = control_key(agent=agent, channel=channel)
    event = Event(
        id=new_id("ev"),
        kind=kind,
        actor=speaker,
        time_ms=now_ms(),
        reason="kill" if kind is EventKind.KILLED else "resume",
        detail=arguments.reason or f"{kind.value} {key} from the command line",
        agent=agent,
        channel=channel,
    )
    envelope = sign_fact(event, session.key(speaker))
    try:
        admit(envelope, session.registry)
    except InputError as exc:
        raise InputError(f"every host would ignore this {kind.value} event: {exc}") from exc
    return event, envelope


async def switch_events(js: JetStreamContext, registry: KeyRegistry) -> dict[str, Event]:
    """Each control key's switch event in force, a resume too, as every host sees them:
    only values that verify against ``registry`` count, and under each key the event
    signed last (that a resume may lift it) wins."""
    in_force: dict[str, Event] = {}

    def taken(key: str, event: Event) -> None:
        in_force[key] = event

    switch = KillSwitch(registry)
    switch.listeners.append(taken)
    try:
        await switch.start(js)
    except BucketNotFoundError:
        return {}  # no host has run on this server yet: nothing was ever killed
    finally:
        await switch.stop()
    return in_force


def stopping(in_force: dict[str, Event]) -> dict[str, Event]:
    """The kills and quarantines among ``in_force``, by control key."""
    return {key: event for key, event in in_force.items() if event.kind in BLOCKING_KINDS}


async def switches_in_force(js: JetStreamContext, registry: KeyRegistry) -> dict[str, Event]:
    """Every kill and quarantine in force, by control key, as every host sees them: only
    values that verify against ``registry`` count."""
    return stopping(await switch_events(js, registry))


def describe_switch(event: Event) -> str:
    """``killed by maintainer: too chatty``: who stopped a target and what they said."""
    return f"{event.kind.value} by {event.actor}: {event.detail or event.reason}"


def signed_at(event: Event) -> str:
    """When ``event`` was signed, in UTC, and how far ahead of this machine's clock."""
    when = dt.datetime.fromtimestamp(event.time_ms / 1000, tz=dt.UTC)
    shown = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ahead_s = (event.time_ms - now_ms()) / 1000
    return f"{shown} ({ahead_s:.0f} s ahead of this machine's clock)" if ahead_s >= 1 else shown


def not_in_force(event: Event, in_force: dict[str, Event]) -> AgoraError | None:
    """None if every host applies ``event`` (it is in force under its key), else the
    error that says which event they apply instead, and when that one was signed."""
    key = key_of_event(event)
    held = in_force.get(key)
    if held is not None and held.id == event.id:
        return None
    written = f"the {event.kind.value} of {key} ({event.id}) is recorded, but no host applies it"
    if held is None:
        return AgoraError(f"{written}: the control bucket does not hold it any more")
    if (held.time_ms, held.id) > (event.time_ms, event.id):
        why = (
            f"{held.kind.value} {held.id} by {held.actor}, signed later at {signed_at(held)}, "
            "is in force (hosts keep the event signed last: check the clock of whoever "
            "signed it, and this machine's)"
        )
    else:
        why = (
            f"{held.kind.value} {held.id} by {held.actor}, signed at {signed_at(held)}, "
            f"stays in force: {event.actor} may not lift it"
        )
    return AgoraError(f"{written}: {why}")  # made safe to show where it is shown


def still_stopped_by(
    event: Event, stopped: dict[str, Event], registry: KeyRegistry
) -> dict[str, Event]:
    """The kills and quarantines under other keys that still stop what ``event``
    resumed: everything's, and for an agent, those of the channels it is granted."""

    def stops(key: str) -> bool:
        if key == ALL_KEY:
            return True
        kind, _, name = key.partition(".")
        return (
            event.agent is not None
            and kind == "channel"
            and registry.get(event.agent).may_use(name)
        )

    own = key_of_event(event)
    return {key: held for key, held in sorted(stopped.items()) if key != own and stops(key)}


def _resume_option(key: str) -> str:
    """The ``agora resume`` option that lifts the switch under ``key``."""
    if key == ALL_KEY:
        return "--all"
    kind, _, name = key.partition(".")
    return f"--{kind} {name}"


def warn_still_stopped(event: Event, others: dict[str, Event]) -> None:
    target = key_of_event(event)
    for key, held in others.items():
        print(
            terminal_safe(
                f"agora: warning: {target} is still stopped by {key}, "
                f"{describe_switch(held)} ({held.id}); `agora resume {_resume_option(key)}` "
                "lifts it"
            ),
            file=sys.stderr,
        )


def run_switch(arguments: argparse.Namespace) -> int:
    session = open_session(arguments.config)
    if arguments.all and arguments.kind is EventKind.RESUMED:
        return _resume_everything(session, arguments)
    event, envelope = switch_event(session, arguments)

    async def send() -> dict[str, Event]:
        async with agora_connection(session.config) as client:
            js = client.jetstream()
            await record_and_switch(js, event, envelope)
            return await switch_events(js, session.registry)

    in_force = asyncio.run(send())
    error = not_in_force(event, in_force)
    if error is not None:
        raise error
    print(f"{event.kind.value}: {key_of_event(event)} ({event.id})")
    if event.kind is EventKind.RESUMED:
        warn_still_stopped(event, still_stopped_by(event, stopping(in_force), session.registry))
    return 0


def _resume_everything(session: Session, arguments: argparse.Namespace) -> int:
    """``resume --all``: lift every kill and quarantine in force (of everything, of an
    agent, of a channel), each with a resume of its own; ``all`` last, so that what was
    stopped by several switches starts again at once."""
    signed_switch(session, arguments, agent=None, channel=None)  # the signer, checked first

    async def send() -> tuple[list[tuple[str, Event, Event]], dict[str, Event]]:
        lifted: list[tuple[str, Event, Event]] = []
        async with agora_connection(session.config) as client:
            js = client.jetstream()
            in_force = await switches_in_force(js, session.registry)
            for key in sorted(in_force, key=lambda key: (key == ALL_KEY, key)):
                stopped = in_force[key]
                event, envelope = signed_switch(
                    session, arguments, agent=stopped.agent, channel=stopped.channel
                )
                await record_and_switch(js, event, envelope)
                lifted.append((key, stopped, event))
            return lifted, await switch_events(js, session.registry)

    lifted, now_in_force = asyncio.run(send())
    if not lifted:
        print("nothing is killed or quarantined: nothing to resume")
        return 0
    refused: list[str] = []
    for key, stopped, event in lifted:
        error = not_in_force(event, now_in_force)
        if error is None:
            show(f"resumed: {key}, {describe_switch(stopped)} ({event.id})")
        else:
            refused.append(str(error))
    if refused:
        raise AgoraError("; ".join(refused))
    return 0
