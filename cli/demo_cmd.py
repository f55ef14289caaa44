"""``agora demo``: the foundation, end to end, on a real embedded JetStream.

It makes named keys, starts ``nats-server`` with JetStream, publishes the spike's two
seed messages as signed acts (plus a repeat and a forgery), reads the channel stream back
through a durable consumer, verifies every envelope before it is recorded, records the
forgery as a refusal, signs a checkpoint, verifies the facts offline, and shows that a
copy with one flipped byte fails verification.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from agora.core.acts import Performative
from agora.core.envelope import Act, Event, EventKind
from agora.core.errors import AgoraError, ConfigError
from agora.core.factlog import LOG_FILE, FactLog
from agora.core.keys import KeyRegistry, Role, SigningKey, write_private_key
from agora.core.signing import sign_fact, verify_envelope
from agora.core.verify import verify_directory
from agora.host.nats_server import EmbeddedNats
from agora.host.spine import (
    CHANNEL_STREAM,
    channel_of,
    channel_subject,
    ensure_channel_stream,
    publish_envelope,
)

DEFAULT_FACTS_DIR: Final = Path("agora-demo/facts")
DEMO_MARKER: Final = ".agora-demo"
RECORDER: Final = "recorder"
FETCH_TIMEOUT_S: Final = 2.0


def register(commands: Any) -> None:
    demo = commands.add_parser("demo", help="run the whole loop on a local JetStream")
    demo.add_argument(
        "--facts-dir",
        type=Path,
        default=DEFAULT_FACTS_DIR,
        help="where the demo's facts go (default: agora-demo/facts; keys go beside it)",
    )
    demo.add_argument("--json", action="store_true", help="end with one JSON summary line")
    demo.set_defaults(run=run)


@dataclass(slots=True)
class Summary:
    published: int = 0
    duplicates_dropped: int = 0
    refused: int = 0
    recorded: int = 0
    verified: bool = False
    tamper_detected: bool = False
    tamper_problem: str = ""
    checkpoint_root: str = ""
    channels: dict[str, int] = field(default_factory=dict)


def run(arguments: argparse.Namespace) -> int:
    facts_dir: Path = arguments.facts_dir
    say: Callable[[str], None] = (lambda _: None) if arguments.json else print
    summary = asyncio.run(run_demo(facts_dir=facts_dir, say=say))
    if arguments.json:
        print(json.dumps(_to_json(summary, facts_dir), sort_keys=True))
    return 0 if summary.verified and summary.tamper_detected else 1


async def run_demo(*, facts_dir: Path, say: Callable[[str], None]) -> Summary:
    workspace = _fresh_workspace(facts_dir)
    summary = Summary()
    keys = {
        name: SigningKey.generate(name)
        for name in ("maintainer", "synth-agent", "relay-agent", "host")
    }
    registry = KeyRegistry(
        [
            keys["maintainer"].identity(Role.OPERATOR, ["build-coord", "secret-ops"]),
            keys["synth-agent"].identity(Role.AGENT, ["build-coord"]),
            keys["relay-agent"].identity(Role.AGENT, ["build-coord"]),
            keys["host"].identity(Role.HOST, ["*"]),
        ]
    )
    for key in keys.values():
        write_private_key(key, workspace / ".agora" / "keys")
    registry.save(workspace / "keys.yaml")
    say(f"Made four named Ed25519 keys; the public halves are in {workspace / 'keys.yaml'}.")

    async with EmbeddedNats(data_dir=workspace / "nats") as server:
        say(f"Started nats-server with JetStream at {server.url}.")
        client = await nats.connect(server.url)
        try:
            js = client.jetstream()
            await ensure_channel_stream(js)
            await _publish_seed(js, keys, summary, say)
            with FactLog.open(facts_dir, signer=keys["host"]) as log:
                await _record(
                    js=js, registry=registry, log=log, host=keys["host"], summary=summary, say=say
                )
                summary.checkpoint_root = log.checkpoint().root.hex()
        finally:
            await client.close()

    report = verify_directory(facts_dir, registry)
    summary.verified = report.ok
    say(f"agora verify: {'OK' if report.ok else report.problem} ({report.entries} facts).")
    summary.tamper_detected, summary.tamper_problem = _tamper_check(facts_dir, registry)
    say(f"A copy with one flipped byte fails: {summary.tamper_problem}")
    say(f"Check it yourself: agora verify {facts_dir} --keys {workspace / 'keys.yaml'}")
    return summary


async def _publish_seed(
    js: Any, keys: dict[str, SigningKey], summary: Summary, say: Callable[[str], None]
) -> None:
    now = int(time.time() * 1000)
    request = Act(
        id="m1", conversation="c1", sender="maintainer", channel="build-coord",
        act=Performative.REQUEST, payload="ship v0.1?", hops=3, time_ms=now,
    )  # fmt: skip
    secret = Act(
        id="m2", conversation="c2", sender="maintainer", channel="secret-ops",
        act=Performative.INFORM, payload="the deploy key rotates at midnight", hops=3,
        time_ms=now,
    )  # fmt: skip
    for act in (request, secret):
        if await publish_envelope(
            js, channel=act.channel, msg_id=act.id, envelope=sign_fact(act, keys["maintainer"])
        ):
            summary.published += 1
            say(f"maintainer -> {act.channel}: {act.act.value} {act.payload!r} (signed, hops 3)")
    repeated = await publish_envelope(
        js,
        channel="build-coord",
        msg_id=request.id,
        envelope=sign_fact(request, keys["maintainer"]),
    )
    if not repeated:
        summary.duplicates_dropped += 1
        say("The same message sent again was dropped by JetStream (same Nats-Msg-Id).")
    intruder = SigningKey.generate("maintainer")
    forged = Act(
        id="m3", conversation="c1", sender="maintainer", channel="build-coord",
        act=Performative.CONFIRM, payload="ship it now", hops=3, time_ms=now,
    )  # fmt: skip
    await js.publish(channel_subject("build-coord"), sign_fact(forged, intruder))
    summary.published += 1
    say("Someone without a registered key sent a message claiming to be maintainer.")


async def _record(
    *,
    js: Any,
    registry: KeyRegistry,
    log: FactLog,
    host: SigningKey,
    summary: Summary,
    say: Callable[[str], None],
) -> None:
    """Read the channel stream through a durable consumer; verify, then record each."""
    subscription = await js.pull_subscribe(
        "agora.ch.*",
        durable=RECORDER,
        stream=CHANNEL_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_deliver=5, ack_wait=30),
    )
    messages = await subscription.fetch(batch=100, timeout=FETCH_TIMEOUT_S)
    for message in messages:
        channel = channel_of(message.subject)
        try:
            verified = verify_envelope(message.data, registry)
        except AgoraError as exc:
            refusal = Event(
                id=f"refused-{message.metadata.sequence.stream}",
                kind=EventKind.REFUSED,
                actor=host.name,
                time_ms=int(time.time() * 1000),
                reason="bad-signature",
                detail=str(exc)[:500],
                channel=channel,
            )
            log.append(sign_fact(refusal, host), refusal)
            summary.refused += 1
            say(f"Refused before anyone saw it, and recorded as a fact: {exc}")
        else:
            log.append(message.data, verified.fact)
            summary.channels[channel] = summary.channels.get(channel, 0) + 1
            say(f"Verified and recorded {verified.fact.id} from {verified.signer.name}.")
        summary.recorded += 1
        await message.ack()


def _tamper_check(facts_dir: Path, registry: KeyRegistry) -> tuple[bool, str]:
    copy = facts_dir.parent / "facts-tampered"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(facts_dir, copy)
    log = copy / LOG_FILE
    data = bytearray(log.read_bytes())
    position = data.index(b'"payload":"') + len(b'"payload":"') + 4
    data[position] ^= 0x01
    log.write_bytes(bytes(data))
    report = verify_directory(copy, registry)
    return (not report.ok, str(report.problem))


def _fresh_workspace(facts_dir: Path) -> Path:
    """The demo's folder (the facts directory's parent), emptied if a demo made it."""
    workspace = facts_dir.parent
    marker = workspace / DEMO_MARKER
    if workspace.exists() and any(workspace.iterdir()):
        if not marker.exists():
            raise ConfigError(
                f"{workspace} already holds files the demo did not make: "
                "choose an empty or new --facts-dir parent"
            )
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by agora demo; removed by the next run\n", encoding="utf-8")
    return workspace


def _to_json(summary: Summary, facts_dir: Path) -> dict[str, object]:
    return {
        "facts_dir": str(facts_dir),
        "published": summary.published,
        "duplicates_dropped": summary.duplicates_dropped,
        "refused": summary.refused,
        "channels": summary.channels,
        "facts": {"entries": summary.recorded, "verified": summary.verified},
        "tamper_detected": summary.tamper_detected,
        "checkpoint_root": summary.checkpoint_root,
    }
