"""``agora demo``: the whole host loop, end to end, on a real embedded JetStream.

In a fresh folder it makes keys and an ``agora.yaml``, builds the agents (once; later
runs reuse the build), starts ``nats-server`` with JetStream and the host, and then:

1. runs the spike's scenario live: the maintainer asks "ship v0.1?" on ``build-coord``
   and says a secret on ``secret-ops``; the chatty pair answers until the hop budget
   runs out, and no agent ever sees the secret;
2. runs an agreement on ``release``: a coordinator opens a vote, three voters each
   decide by their own rule, the coordinator announces the outcome it counted, and a
   summarizer sums it up;
3. shows that "stop" said in a channel is just a message, and that a kill is not: after
   ``kill --channel build-coord`` nothing more is delivered there;
4. stops, verifies the facts offline, and shows that one changed byte fails.

The pure control core's run of the spike's own simulation is printed beside the live
figures, so the two can be compared.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nats.js import JetStreamContext

from agora.cli.session import (
    Session,
    connected,
    folder_argument,
    open_session,
    run_interruptible,
)
from agora.cli.terminal import terminal_safe
from agora.cli.up_cmd import prepare_host
from agora.cli.workspace import AgentPlan, create_workspace
from agora.core.acts import Performative
from agora.core.control import record_and_switch
from agora.core.envelope import Act, Event, EventKind
from agora.core.errors import ConfigError
from agora.core.factlog import LOG_FILE, read_facts
from agora.core.ids import new_id, now_ms
from agora.core.keys import KeyRegistry, Role
from agora.core.signing import sign_fact
from agora.core.spine import publish_envelope
from agora.core.verify import verify_directory
from agora.host.batch import Delivery
from agora.host.nats_server import EmbeddedNats
from agora.host.reference import run_reference
from agora.host.service import Host

if TYPE_CHECKING:
    from agora.cli.demo_github import StandInGitHub

DEFAULT_FACTS_DIR: Final = Path("agora-demo/facts")
DEMO_MARKER: Final = ".agora-demo"
CHANNELS: Final = ("build-coord", "secret-ops", "release")
SPIKE_HOPS: Final = 3
TOPIC: Final = "ship v0.2: tests pass, changelog reviewed"
VOTERS: Final = {
    "alice-voter": {"approve": "tests pass", "veto": "breaking", "default": "reject"},
    "bob-voter": {"approve": "reviewed,changelog", "veto": "security", "default": "accept"},
    "carol-voter": {"approve": "docs", "veto": "license,breaking", "default": "reject"},
}
AGENTS: Final = {
    "synth-agent": AgentPlan("chatty", ("build-coord",)),
    "relay-agent": AgentPlan("chatty", ("build-coord",)),
    "coordinator": AgentPlan(
        "coordinator",
        ("release",),
        {"voters": ",".join(VOTERS), "quorum": "2", "deadline-ms": "5000"},
        {"remembered": 1024},  # its decision answers the request, maybe long after
    ),
    # the voters and the summarizer heed only the coordinator's proposals and decisions
    **{
        name: AgentPlan("voter", ("release",), {**rule, "coordinator": "coordinator"})
        for name, rule in VOTERS.items()
    },
    "summarizer": AgentPlan("summarizer", ("release",), {"coordinator": "coordinator"}),
}
CHATTY: Final = ("synth-agent", "relay-agent")


def register(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="run the host, an agreement and the GitHub loop end to end, offline"
    )
    demo.add_argument(
        "--facts-dir",
        type=folder_argument,
        default=DEFAULT_FACTS_DIR,
        help="where the demo's facts go (default: agora-demo/facts; keys and config beside it)",
    )
    demo.add_argument("--json", action="store_true", help="end with one JSON summary line")
    demo.set_defaults(run=run)


@dataclass(slots=True)
class Report:
    live: dict[str, object] = field(default_factory=dict)
    kill: dict[str, object] = field(default_factory=dict)
    github: dict[str, int] = field(default_factory=dict)
    decision: dict[str, object] = field(default_factory=dict)
    summary: str = ""
    facts: dict[str, object] = field(default_factory=dict)
    tamper_detected: bool = False


def run(arguments: argparse.Namespace) -> int:
    facts_dir: Path = arguments.facts_dir
    say: Callable[[str], None] = (lambda _: None) if arguments.json else print
    workspace = prepare_workspace(facts_dir)
    report = run_interruptible(_main(workspace, facts_dir.resolve(), say))
    reference = run_reference()
    result = {
        "reference": {
            "scope_blocked": reference.scope_blocked,
            "echo_dropped": reference.echo_dropped,
            "converged_round": reference.converged_round,
            "accepted": reference.accepted,
        },
        "live": report.live,
        "decision": report.decision,
        "summary": report.summary,
        "kill": report.kill,
        "github": report.github,
        "facts": report.facts,
        "tamper_detected": report.tamper_detected,
        "facts_dir": str(facts_dir),
    }
    say(
        "The pure control core, on the spike's own simulation: "
        f"{reference.scope_blocked} scope-blocked, {reference.echo_dropped} echoes dropped, "
        f"converged in round {reference.converged_round}, {reference.accepted} accepted."
    )
    if arguments.json:
        print(json.dumps(result, sort_keys=True))
    ok = (
        bool(report.facts.get("verified"))
        and report.tamper_detected
        and bool(report.github.get("committed_facts_verified"))
    )
    return 0 if ok and report.live.get("converged") else 1


async def _main(workspace: Path, facts_dir: Path, say: Callable[[str], None]) -> Report:
    # the bridge's dependencies load only when they are used (see cli/up_cmd.py)
    from agora.cli.demo_github import start_standin  # noqa: PLC0415

    standin = await start_standin()
    try:
        config_path = create_workspace(
            workspace,
            channels=CHANNELS,
            agents=AGENTS,
            extra={
                "facts": str(facts_dir),
                "bridge": standin.bridge_section("release"),
            },
            others={"bridge": (Role.BRIDGE, ["release"])},
        )
        say(f"Made keys, a key registry and {config_path} in {workspace}.")
        session = open_session(config_path)
        return await run_demo(session, standin=standin, say=say)
    finally:
        await standin.github.stop()


async def run_demo(
    session: Session, *, standin: StandInGitHub, say: Callable[[str], None]
) -> Report:
    report = Report()
    config = session.config
    say("Building the agents into WebAssembly components (only what changed)...")
    host = prepare_host(session, log_line=lambda line: say(f"  {line}"))
    async with (
        EmbeddedNats(data_dir=config.nats.data_dir) as server,
        connected(server.url) as client,
    ):
        say(f"Started nats-server with JetStream at {server.url}.")
        try:  # the host stops before its connection closes, also on Ctrl-C
            await host.start(client)
            await _scenes(
                session, client.jetstream(), host, standin=standin, report=report, say=say
            )
        finally:
            await host.stop()
    _verify(config.facts_dir, session.registry, report, say)
    return report


async def _scenes(
    session: Session,
    js: JetStreamContext,
    host: Host,
    *,
    standin: StandInGitHub,
    report: Report,
    say: Callable[[str], None],
) -> None:
    """Everything the demo shows while the host runs."""
    deliveries: list[Delivery] = []
    for runner in host.runners.values():
        runner.observers.append(deliveries.append)
    say(f"The host runs {len(host.runners)} agents, each in its own wasm sandbox.")
    run = DemoRun(session, js, host, deliveries, report, say)
    await _spike(run)
    await _agreement(run)
    await _stop_and_kill(run)
    from agora.cli.demo_github import github_part  # noqa: PLC0415

    report.github = await github_part(
        session=session,
        host=host,
        standin=standin,
        deliveries=deliveries,
        channel="release",
        say=say,
    )


@dataclass(frozen=True, slots=True)
class DemoRun:
    session: Session
    js: JetStreamContext
    host: Host
    deliveries: list[Delivery]
    report: Report
    say: Callable[[str], None]


async def _spike(run: DemoRun) -> None:
    session, js, host, deliveries, report, say = _unpack(run)
    say("")
    say("1. The spike's scenario. The maintainer asks on #build-coord and tells a secret")
    say("   on #secret-ops, both with a hop budget of 3.")
    await _inject(session, js, "build-coord", Performative.REQUEST, "ship v0.1?", hops=SPIKE_HOPS)
    await _inject(
        session,
        js,
        "secret-ops",
        Performative.INFORM,
        "the deploy key rotates at 02:00",
        hops=SPIKE_HOPS,
    )
    await host.settle()
    chatty = [host.runners[name].counters for name in CHATTY]
    accepted = sum(c["emitted"] for c in chatty)
    echoes = sum(c["self-echo"] for c in chatty)
    spent = sum(c["no-hops"] for c in chatty)
    secret = sum(1 for d in deliveries if d.act.channel == "secret-ops")
    report.live = {
        "accepted": accepted,
        "echo_dropped": echoes,
        "secret_delivered": secret,
        "converged": accepted == 6 and secret == 0,
    }
    say(
        f"   The pair answered each other {accepted} times and then went quiet: each reply "
        "carries one hop less,"
    )
    say(
        f"   and {spent} replies with none left were recorded but delivered to no one. "
        f"{echoes} echoes of their own words were dropped."
    )
    say(f"   The secret was delivered to {secret} agents: none is granted #secret-ops.")


async def _agreement(run: DemoRun) -> None:
    session, js, host, _, _, say = _unpack(run)
    say("")
    say(f'2. An agreement on #release. The maintainer requests: "{TOPIC}".')
    say("   The coordinator proposes it; three voters each apply their own rule.")
    await _inject(session, js, "release", Performative.REQUEST, TOPIC, hops=session.config.hops)
    await host.settle(quiet_s=0.5)
    _read_outcome(session.config.facts_dir, run.report, say)


async def _stop_and_kill(run: DemoRun) -> None:
    session, js, host, deliveries, report, say = _unpack(run)
    say("")
    say('3. The maintainer types "stop" into #build-coord. It is just one more message:')
    before = len(deliveries)
    await _inject(session, js, "build-coord", Performative.INFORM, "stop", hops=1)
    await host.settle()
    stop_delivered = len(deliveries) - before
    say(f"   it was delivered {stop_delivered} times, like any other.")
    say("   Now a kill, out of band: `agora kill --channel build-coord`.")
    event = Event(
        id=new_id("ev"),
        kind=EventKind.KILLED,
        actor=session.config.operator,
        time_ms=now_ms(),
        reason="kill",
        detail="the demo's maintainer stops #build-coord",
        channel="build-coord",
    )
    envelope = sign_fact(event, session.key(session.config.operator))
    await record_and_switch(js, event, envelope)
    await host.killswitch.wait_for(lambda state: state.blocks("synth-agent", "build-coord"))
    before = len(deliveries)
    await _inject(session, js, "build-coord", Performative.REQUEST, "are you there?", hops=3)
    await host.settle()
    after_kill = sum(1 for d in deliveries[before:] if d.act.channel == "build-coord")
    report.kill = {"stop_message_delivered": stop_delivered, "deliveries_after_kill": after_kill}
    say(f"   After the kill, messages delivered on #build-coord: {after_kill}.")


def _unpack(
    run: DemoRun,
) -> tuple[Session, JetStreamContext, Host, list[Delivery], Report, Callable[[str], None]]:
    return run.session, run.js, run.host, run.deliveries, run.report, run.say


async def _inject(
    session: Session,
    js: JetStreamContext,
    channel: str,
    act: Performative,
    text: str,
    *,
    hops: int,
) -> Act:
    speaker = session.config.operator
    ident = new_id("act")
    fact = Act(
        id=ident,
        conversation=ident,
        sender=speaker,
        channel=channel,
        act=act,
        payload=text,
        hops=hops,
        time_ms=now_ms(),
    )
    await publish_envelope(
        js, channel=channel, msg_id=ident, envelope=sign_fact(fact, session.key(speaker))
    )
    return fact


def _read_outcome(facts_dir: Path, report: Report, say: Callable[[str], None]) -> None:
    body_votes: dict[str, str] = {}
    for fact in read_facts(facts_dir):
        if not isinstance(fact, Act) or not fact.payload.startswith("{"):
            continue
        body = json.loads(fact.payload)
        if body.get("kind") == "decision" and fact.sender == "coordinator" and not report.decision:
            report.decision = {
                "topic": body["topic"],
                "outcome": body["outcome"],
                "votes": body["votes"],
                "quorum": body["quorum"],
                "fact": fact.id,
            }
            body_votes = {str(k): str(v) for k, v in body["votes"].items()}
        elif body.get("kind") == "summary" and fact.sender == "summarizer" and not report.summary:
            report.summary = str(body.get("text", ""))
    if report.decision:
        cast: dict[str, str] = body_votes
        votes = ", ".join(f"{k} {v}" for k, v in sorted(cast.items()))
        outcome = report.decision["outcome"]
        say(terminal_safe(f"   The coordinator counted: {votes}; outcome: {outcome}."))
    if report.summary:
        say(terminal_safe(f"   The summarizer wrote: {report.summary}"))  # an agent's words


def _verify(
    facts_dir: Path, registry: KeyRegistry, report: Report, say: Callable[[str], None]
) -> None:
    say("")
    verdict = verify_directory(facts_dir, registry)
    report.facts = {"entries": verdict.entries, "verified": verdict.ok}
    say(
        f"5. Every act delivered, emitted and refused is a signed fact: {verdict.entries} "
        f"in {facts_dir}, and `agora verify` says: {'verified' if verdict.ok else verdict}."
    )
    copy = facts_dir.parent / "facts-tampered"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(facts_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    log = copy / LOG_FILE
    data = bytearray(log.read_bytes())
    position = data.index(b'"payload":"') + len(b'"payload":"') + 4
    data[position] ^= 0x01
    log.write_bytes(bytes(data))
    tampered = verify_directory(copy, registry)
    report.tamper_detected = not tampered.ok
    say(f"   A copy with one byte changed fails: {tampered.problem}.")


def prepare_workspace(facts_dir: Path) -> Path:
    """The demo's folder (the facts directory's parent), with what an earlier demo made
    there removed. Anything else in it stops the demo before it touches a thing."""
    workspace = facts_dir.parent
    made = {DEMO_MARKER, ".agora", "agora.yaml", "keys.yaml", facts_dir.name}
    made |= {"facts-from-github", "facts-tampered"}
    found = sorted(p.name for p in workspace.iterdir()) if workspace.exists() else []
    others = [name for name in found if name not in made or DEMO_MARKER not in found]
    if others:
        raise ConfigError(
            f"{workspace} already holds files the demo did not make ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}): choose an empty or new --facts-dir parent"
        )
    for name in found:
        path = workspace / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    workspace.mkdir(parents=True, exist_ok=True)
    marker = workspace / DEMO_MARKER
    marker.write_text("made by agora demo; removed by the next run\n", encoding="utf-8")
    return workspace
