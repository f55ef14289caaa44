"""``agora kill`` and ``agora resume``: the out-of-band control path.

A kill is a ``killed`` event signed by an operator (by default the configured one),
written to the control bucket, where every host sees it before its next delivery, and
published as a fact. ``resume`` writes a ``resumed`` event under the same key;
``resume --all`` writes one under every key whose kill or quarantine is in force, so it
lifts them all (not only a kill of everything). Nothing said on a channel can do either.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from agora.cli.session import (
    Session,
    add_config_option,
    connected,
    declared_channel,
    open_session,
    running_url,
)
from agora.core.admission import admit
from agora.core.control import ALL_KEY, control_key, record_and_switch
from agora.core.envelope import Event, EventKind
from agora.core.errors import InputError
from agora.core.ids import new_id, now_ms
from agora.core.keys import KeyRegistry, Role
from agora.core.signing import sign_fact
from agora.host.killswitch import KillSwitch


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
        parser.add_argument("--reason", default="", help="a sentence for the record")
        add_config_option(parser)
        parser.set_defaults(run=run_switch, kind=kind)


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


async def switches_in_force(js: JetStreamContext, registry: KeyRegistry) -> dict[str, Event]:
    """Every kill and quarantine in force, by control key, as every host sees them: only
    values that verify against ``registry`` count."""
    switch = KillSwitch(registry)
    try:
        await switch.start(js)
    except BucketNotFoundError:
        return {}  # no host has run on this server yet: nothing was ever killed
    try:
        return dict(switch.state.stopped)
    finally:
        await switch.stop()


def describe_switch(event: Event) -> str:
    """``killed by maintainer: too chatty``: who stopped a target and what they said."""
    return f"{event.kind.value} by {event.actor}: {event.detail or event.reason}"


def run_switch(arguments: argparse.Namespace) -> int:
    session = open_session(arguments.config)
    if arguments.all and arguments.kind is EventKind.RESUMED:
        return _resume_everything(session, arguments)
    event, envelope = switch_event(session, arguments)

    async def send() -> None:
        async with connected(running_url(session.config)) as client:
            js = client.jetstream()
            await record_and_switch(js, event, envelope)

    asyncio.run(send())
    print(
        f"{event.kind.value}: {control_key(agent=event.agent, channel=event.channel)} ({event.id})"
    )
    return 0


def _resume_everything(session: Session, arguments: argparse.Namespace) -> int:
    """``resume --all``: lift every kill and quarantine in force (of everything, of an
    agent, of a channel), each with a resume of its own; ``all`` last, so that what was
    stopped by several switches starts again at once."""
    signed_switch(session, arguments, agent=None, channel=None)  # the signer, checked first

    async def send() -> list[tuple[str, Event, Event]]:
        lifted: list[tuple[str, Event, Event]] = []
        async with connected(running_url(session.config)) as client:
            js = client.jetstream()
            in_force = await switches_in_force(js, session.registry)
            for key in sorted(in_force, key=lambda key: (key == ALL_KEY, key)):
                stopped = in_force[key]
                event, envelope = signed_switch(
                    session, arguments, agent=stopped.agent, channel=stopped.channel
                )
                await record_and_switch(js, event, envelope)
                lifted.append((key, stopped, event))
        return lifted

    lifted = asyncio.run(send())
    for key, stopped, event in lifted:
        print(f"resumed: {key}, {describe_switch(stopped)} ({event.id})")
    if not lifted:
        print("nothing is killed or quarantined: nothing to resume")
    return 0
