"""``agora up``: run the host (its agents, the kill switch and the recorder) and, when
``agora.yaml`` has a ``bridge:`` section, the GitHub bridge, until stopped.

Everything is checked before anything starts: the configuration, the key registry, the
private keys and the agents' components (built if a source changed). Without
``nats.url`` an embedded nats-server with JetStream is started on loopback, its data
kept in ``nats.data_dir`` so a restart picks up where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agora.bridge.config import BridgeConfig, bridge_config
from agora.cli.agents_cmd import (  # SOURCE_WIT: the benchmarks build with it
    SOURCE_WIT,  # noqa: F401
    contract_in,
)
from agora.cli.session import Session, add_config_option, connected, open_session
from agora.core.document import Node
from agora.core.errors import ConfigError
from agora.core.keys import Role, SigningKey
from agora.host.builder import build_agents, find_agents
from agora.host.config import DEFAULT_AGENTS_DIR, Config, with_agents
from agora.host.nats_server import EmbeddedNats
from agora.host.service import Host, HostKeys, startup_heap_frozen

if TYPE_CHECKING:
    from agora.bridge.service import Bridge

log = logging.getLogger("agora.up")


def register(commands: Any) -> None:
    up = commands.add_parser(
        "up",
        help="run the host with its agents (and the bridge, if configured) until interrupted",
    )
    add_config_option(up)
    up.add_argument(
        "--no-record",
        action="store_true",
        help="do not write the fact log (another host process records)",
    )
    up.add_argument(
        "--agent",
        action="append",
        metavar="NAME",
        dest="agents",
        help="run only this agent of the configuration (repeat for more); the others "
        "run in other host processes on the same NATS",
    )
    up.set_defaults(run=run_up)


def run_up(arguments: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    session = open_session(arguments.config)
    if arguments.agents:
        session = replace(session, config=with_agents(session.config, arguments.agents))
    bridge = bridge_config(session.config)  # its secrets are read now, before anything starts
    served = None if bridge is None else (bridge, bridge_signing_key(session, bridge))
    asyncio.run(_serve(session, served, record=not arguments.no_record))
    return 0


def bridge_signing_key(session: Session, bridge: BridgeConfig) -> SigningKey:
    """The bridge's key, checked as the agents' are before anything starts: registered
    with role bridge, granted every channel ``bridge.links`` links (what it says there
    is signed by it, and a host refuses a channel its signer is not granted)."""
    config, name = session.config, bridge.identity
    where = f"{config.path}: bridge.identity"
    if name not in session.registry:
        raise ConfigError(
            f"{where}: {name!r} is not registered in {config.registry}: run `agora keys new "
            f"{name} --role bridge --channel CHANNEL` for each channel it speaks on"
        )
    identity = session.registry.get(name)
    if identity.role is not Role.BRIDGE:
        raise ConfigError(
            f"{where}: {name!r} has role {identity.role.value}, expected bridge (hosts "
            "refuse events a bridge signs with any other): name a key made with "
            "`agora keys new NAME --role bridge`"
        )
    missing = sorted(c for c in bridge.links if not identity.may_use(c))
    if missing:
        raise ConfigError(
            f"{where}: {name!r} is not granted {', '.join(missing)}, which bridge.links "
            f"links to an issue (granted: {', '.join(sorted(identity.channels)) or 'none'}): "
            f"add to identities.{name}.channels in {config.registry.name}"
        )
    return session.key(name)


def wit_dir(config: Config) -> Path:
    """The contract to build against: the project's own ``wit/``, else agora's."""
    return contract_in(config.root)


def check_sources(config: Config) -> None:
    """Every agent's component must have its source under ``agents_dir``: a mistake is
    refused naming the file, the key and what is there, before anything is built."""
    if not config.agents:
        return
    where = str(config.path)
    if not config.agents_dir.is_dir():
        raise Node(where, "agents_dir", str(config.agents_dir)).error(
            "the folder of the agents' sources, one folder with app.py per component "
            f"(default: {DEFAULT_AGENTS_DIR})",
            f"{str(config.agents_dir)!r}, which is not a folder",
        )
    known = find_agents(config.agents_dir)
    for agent in config.agents.values():
        if agent.component not in known:
            close = difflib.get_close_matches(agent.component, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise Node(where, f"agents.{agent.name}.component", agent.component).error(
                f"a component in {config.agents_dir} (a folder holding app.py): one of "
                f"{', '.join(known) or 'none, the folder holds none'}{hint}"
            )


def prepare_host(
    session: Session, *, record: bool = True, log_line: Callable[[str], None] | None = None
) -> Host:
    """Build (if needed) every component the configuration names, and load the keys."""
    config = session.config
    check_sources(config)
    names = sorted({agent.component for agent in config.agents.values()})
    components = (
        build_agents(
            config.agents_dir, config.build_dir, wit_dir(config), names, log=log_line or log.info
        )
        if names
        else {}
    )
    keys = HostKeys(
        host=session.key(config.host_name),
        agents={name: session.key(name) for name in config.agents},
    )
    return Host(
        config=config,
        registry=session.registry,
        keys=keys,
        components=components,
        record=record,
    )


@asynccontextmanager
async def nats_for(config: Config) -> AsyncIterator[str]:
    """The configured NATS URL, or an embedded server's for as long as the block runs."""
    if config.nats.url is not None:
        yield config.nats.url
        return
    async with EmbeddedNats(data_dir=config.nats.data_dir) as server:
        yield server.url


async def _serve(
    session: Session, bridge_settings: tuple[BridgeConfig, SigningKey] | None, *, record: bool
) -> None:
    host = prepare_host(session, record=record)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with nats_for(session.config) as url, connected(url, reconnect=True) as client:
        await host.start(client)
        bridge: Bridge | None = None
        if bridge_settings is not None:
            # githubkit and pydantic load only when a bridge is configured (about 28 MB)
            from agora.bridge.service import Bridge  # noqa: PLC0415

            settings, key = bridge_settings
            bridge = Bridge(
                config=settings,
                channels=set(session.config.channels),
                key=key,
                registry=session.registry,
                replicas=session.config.nats.replicas,
                facts=host.recorder,
            )
            await bridge.start(client)
        log.info(
            "agora is up: %d agents on %d channels; NATS at %s; facts in %s",
            len(host.runners),
            len(session.config.channels),
            url if session.config.nats.url is None else "the configured server",
            session.config.facts_dir if record else "(another host)",
        )
        try:
            with startup_heap_frozen():
                await stop.wait()
        finally:
            log.info("stopping")
            try:
                if bridge is not None:
                    await bridge.stop()
            finally:
                await host.stop()  # whatever the bridge's stop raised
