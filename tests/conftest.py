"""Shared fixtures: named keys, a registry, and builders for acts and fact logs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from agora.core.envelope import Act, Event
from agora.core.factlog import FactLog
from agora.core.keys import KeyRegistry, Role, SigningKey
from agora.core.signing import sign_fact
from agora.host.builder import build_agents
from agora.host.nats_server import EmbeddedNats
from tests.factories import make_act, make_event
from tests.watchdog import report_to, watched

AGENTS = ("synth-agent", "relay-agent")

# CI machines are shared: judge properties on their examples, never on wall-clock time.
settings.register_profile("agora", deadline=None)
settings.load_profile("agora")


def pytest_configure(config: pytest.Config) -> None:
    """pytest does not capture fd 2 while it configures: keep a copy for the watchdog."""
    del config
    report_to(2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """Every test, its setup and teardown included, runs under the watchdog."""
    del item
    with watched():
        yield


@pytest.fixture(scope="session")
def keys() -> dict[str, SigningKey]:
    names = ("maintainer", *AGENTS, "host", "bridge")
    return {name: SigningKey.generate(name) for name in names}


@pytest.fixture(scope="session")
def registry(keys: dict[str, SigningKey]) -> KeyRegistry:
    return KeyRegistry(
        [
            keys["maintainer"].identity(Role.OPERATOR, ["build-coord", "secret-ops"]),
            *(keys[name].identity(Role.AGENT, ["build-coord"]) for name in AGENTS),
            keys["host"].identity(Role.HOST, ["*"]),
            keys["bridge"].identity(Role.BRIDGE, ["build-coord"]),
        ]
    )


FactsBuilder = Callable[..., Path]


@pytest.fixture
def build_facts(tmp_path: Path, keys: dict[str, SigningKey]) -> Iterator[FactsBuilder]:
    """Build a facts directory of ``count`` facts with a checkpoint every ``every``."""

    def build(count: int = 12, *, every: int = 5, name: str = "facts") -> Path:
        directory = tmp_path / name
        with FactLog.open(directory, signer=keys["host"]) as log:
            previous: str | None = None
            for index in range(count):
                if index % 4 == 3:
                    fact: Act | Event = make_event(subjects=(previous,) if previous else ())
                    signer = keys["host"]
                else:
                    sender = AGENTS[index % 2]
                    fact = make_act(sender=sender, payload=f"message {index}", in_reply_to=previous)
                    signer = keys[sender]
                log.append(sign_fact(fact, signer), fact)
                previous = fact.id
                if every and (index + 1) % every == 0:
                    log.checkpoint()
        return directory

    yield build


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(data_dir=tmp_path / "nats") as server:
        yield server


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def components() -> dict[str, Path]:
    """Every shipped component and the test-only ``hostile`` one, built (once) for real."""
    wit = ROOT / "wit"
    shipped = build_agents(ROOT / "agents", ROOT / "agents" / "build", wit, log=lambda _: None)
    hostile = build_agents(
        ROOT / "tests" / "agents", ROOT / "tests" / "agents" / "build", wit, log=lambda _: None
    )
    return {**shipped, **hostile}
