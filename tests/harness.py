"""A real host on a real embedded JetStream, for tests: workspace, server, host, helpers.

Everything is real: nats-server with JetStream, wasmtime running the built components,
the recorder writing the fact log. The harness only adds conveniences: injecting signed
acts, killing and resuming, reading the facts back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from agora.cli.session import Session, connected, open_session
from agora.cli.workspace import AgentPlan, create_workspace
from agora.core.acts import Performative
from agora.core.control import record_and_switch
from agora.core.envelope import Act, Event, EventKind, Fact
from agora.core.factlog import read_facts
from agora.core.ids import new_id, now_ms
from agora.core.keys import Role
from agora.core.signing import sign_fact
from agora.core.spine import AGENTS_BUCKET, publish_envelope
from agora.core.verify import verify_directory
from agora.host.agent_record import AgentRecord
from agora.host.batch import Delivery
from agora.host.config import with_agents
from agora.host.nats_server import EmbeddedNats
from agora.host.record_store import RecordStore
from agora.host.service import Host, HostKeys


@dataclass
class Harness:
    session: Session
    client: Client
    components: Mapping[str, Path]
    host: Host | None = None
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def js(self) -> JetStreamContext:
        return self.client.jetstream()

    @property
    def url(self) -> str:
        """The NATS server's URL, for a connection of a test's own."""
        where = self.client.connected_url
        if where is None:
            raise AssertionError("the harness's client is not connected")
        return f"nats://{where.hostname}:{where.port}"

    @property
    def facts_dir(self) -> Path:
        return self.session.config.facts_dir

    def running(self) -> Host:
        if self.host is None:
            raise AssertionError("no host is running")
        return self.host

    async def start_host(self, agents: list[str] | None = None) -> Host:
        """Start a host running ``agents`` (default: all in the configuration)."""
        config = self.session.config
        chosen = list(config.agents) if agents is None else agents
        keys = HostKeys(
            host=self.session.key(config.host_name),
            agents={name: self.session.key(name) for name in chosen},
        )
        trimmed = with_agents(config, chosen)
        host = Host(
            config=trimmed,
            registry=self.session.registry,
            keys=keys,
            components=self.components,
        )
        await host.start(self.client)
        for runner in host.runners.values():
            runner.observers.append(self.deliveries.append)
        self.host = host
        return host

    async def stop_host(self, *, graceful: bool = True) -> None:
        if self.host is not None:
            await self.host.stop(graceful=graceful)
            self.host = None

    async def inject(
        self,
        channel: str,
        text: str,
        *,
        act: Performative = Performative.REQUEST,
        hops: int = 3,
        sender: str = "maintainer",
        conversation: str | None = None,
        reply_to: str | None = None,
    ) -> Act:
        ident = new_id("act")
        fact = Act(
            id=ident,
            conversation=conversation or ident,
            sender=sender,
            channel=channel,
            act=act,
            payload=text,
            hops=hops,
            time_ms=now_ms(),
            in_reply_to=reply_to,
        )
        envelope = sign_fact(fact, self.session.key(sender))
        await publish_envelope(self.js, channel=channel, msg_id=ident, envelope=envelope)
        return fact

    async def switch(
        self,
        kind: EventKind,
        *,
        agent: str | None = None,
        channel: str | None = None,
        by: str = "maintainer",
    ) -> Event:
        event = Event(
            id=new_id("ev"),
            kind=kind,
            actor=by,
            time_ms=now_ms(),
            reason=kind.value,
            agent=agent,
            channel=channel,
        )
        envelope = sign_fact(event, self.session.key(by))
        await record_and_switch(self.js, event, envelope)
        return event

    async def settle(self) -> None:
        await self.running().settle(quiet_s=0.3)

    async def record_store(self, agent: str, *, max_bytes: int | None = None) -> RecordStore:
        """The agent's saved record, as its host reads and writes it (``max_bytes``: as
        a host whose server takes that much per message would)."""
        kv = await self.js.key_value(AGENTS_BUCKET)
        limit = self.client.max_payload if max_bytes is None else max_bytes
        return RecordStore(self.js, kv, agent, max_bytes=limit, key=self.session.key(agent))

    async def outbox_parts(self, agent: str) -> list[str]:
        """The keys of ``agent``'s outbox parts in the bucket."""
        return await (await self.record_store(agent)).part_keys()

    async def record(self, agent: str) -> AgentRecord:
        return await (await self.record_store(agent)).load()

    def delivered_to(self, agent: str) -> list[Act]:
        return [d.act for d in self.deliveries if d.agent == agent]

    def facts(self) -> list[Fact]:
        return read_facts(self.facts_dir)

    def acts_by(self, sender: str) -> list[Act]:
        return [f for f in self.facts() if isinstance(f, Act) and f.sender == sender]

    def events(self, kind: EventKind, agent: str | None = None) -> list[Event]:
        return [
            f
            for f in self.facts()
            if isinstance(f, Event) and f.kind is kind and (agent is None or f.agent == agent)
        ]

    def per_subject(self, kind: EventKind, agent: str | None = None) -> list[tuple[Event, str]]:
        """Each act an event of ``kind`` concerns, with the event (one event covers a batch)."""
        return [(e, subject) for e in self.events(kind, agent) for subject in e.subjects]

    def verify(self) -> None:
        report = verify_directory(self.facts_dir, self.session.registry)
        assert report.ok, str(report.problem)


@asynccontextmanager
async def running_host(
    root: Path,
    components: Mapping[str, Path],
    *,
    agents: Mapping[str, AgentPlan],
    channels: tuple[str, ...] = ("build-coord", "secret-ops"),
    start: bool = True,
    extra: Mapping[str, Any] | None = None,
    others: Mapping[str, tuple[Role, list[str]]] | None = None,
    verify: bool = True,
) -> AsyncIterator[Harness]:
    """A workspace in ``root`` with a running JetStream and (unless ``start`` is False)
    a host; on the way out the host stops and the facts must verify."""
    config_path = create_workspace(
        root, channels=channels, agents=agents, extra=extra, others=others
    )
    session = open_session(config_path)
    async with (
        EmbeddedNats(data_dir=session.config.nats.data_dir) as server,
        connected(server.url) as client,
    ):
        harness = Harness(session=session, client=client, components=components)
        if start:
            await harness.start_host()
        try:
            yield harness
        finally:
            await harness.stop_host()
    if verify:
        harness.verify()
