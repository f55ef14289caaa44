"""The whole GitHub loop for tests: the stand-in, the bridge, the host and its agents.

The stand-in sends real signed webhooks over HTTP to the bridge's aiohttp receiver; the
bridge injects signed acts into the real JetStream the host's agents read; the host's
recorder writes the facts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agora.bridge.catchup import CATCH_UP_EVERY_S
from agora.bridge.config import BridgeConfig, bridge_config
from agora.bridge.deliveries import DEFAULT_PATIENCE, Patience
from agora.bridge.service import Bridge
from agora.bridge.standin import GitHubStandIn
from agora.cli.workspace import AgentPlan
from agora.core.keys import Role
from tests.harness import Harness, running_host

REPO = "octo/repo"
SECRET = "webhook-secret-for-tests"  # noqa: S105 - a test fixture, not a credential
HUMAN = "mona"
BOT = "agora-bridge[bot]"


class FakeClock:
    """Time that passes only when someone waits: a minute of pacing costs nothing."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class Loop:
    host: Harness
    github: GitHubStandIn
    bridge: Bridge
    issue: int
    token: str
    patience: Patience = DEFAULT_PATIENCE
    catch_up_every_s: float = CATCH_UP_EVERY_S

    async def delivered(self) -> None:
        """Wait until the stand-in sent its webhooks and the host settled."""
        await self.github.drain()
        await self.host.settle()

    async def restart_bridge(self, **changes: Any) -> None:
        """Stop the bridge and start a new one on the same address (GitHub's hook URL),
        its configuration changed by ``changes``."""
        port = int(self.bridge.url.rsplit(":", 1)[1])
        await self.bridge.stop()
        config = replace(self.bridge.config, listen_port=port, **changes)
        self.bridge = await _start_bridge(
            self.host, config, patience=self.patience, catch_up_every_s=self.catch_up_every_s
        )

    async def stop_bridge(self) -> None:
        """Stop the bridge; :meth:`restart_bridge` starts one again at the same address."""
        port = int(self.bridge.url.rsplit(":", 1)[1])
        await self.bridge.stop()
        self.bridge.url = f"http://127.0.0.1:{port}"


async def _start_bridge(
    host: Harness,
    config: BridgeConfig,
    clock: FakeClock | None = None,
    *,
    patience: Patience = DEFAULT_PATIENCE,
    catch_up_every_s: float = CATCH_UP_EVERY_S,
) -> Bridge:
    timing: dict[str, Any] = {} if clock is None else {"clock": clock, "sleep": clock.sleep}
    bridge = Bridge(
        **timing,
        patience=patience,
        catch_up_every_s=catch_up_every_s,
        config=config,
        channels=set(host.session.config.channels),
        key=host.session.key(config.identity),
        registry=host.session.registry,
        facts=host.running().recorder,
    )
    await bridge.start(host.client)
    return bridge


@asynccontextmanager
async def github_loop(
    root: Path,
    components: Mapping[str, Path],
    *,
    agents: Mapping[str, AgentPlan],
    bridge: Mapping[str, Any] | None = None,
    clock: FakeClock | None = None,
    patience: Patience = DEFAULT_PATIENCE,
    catch_up_every_s: float = CATCH_UP_EVERY_S,
) -> AsyncIterator[Loop]:
    github = GitHubStandIn() if clock is None else GitHubStandIn(clock=clock)
    base_url = await github.start()
    github.add_user(HUMAN, association="MEMBER")
    github.add_user("drive-by", association="NONE")
    github.add_user(BOT, type="Bot", association="COLLABORATOR")  # may push the facts
    github.create_repo(REPO)
    issue = github.create_issue(REPO, "Coordination", "agents talk here", by=HUMAN)
    token = github.issue_token(BOT)
    section: dict[str, Any] = {
        "webhook_secret": {"env": "HOOK_SECRET"},
        "listen": {"port": 0},
        "github": {"api_url": base_url, "token": {"env": "GH_TOKEN"}, "login": BOT},
        "links": {"build-coord": f"{REPO}#{issue}"},
        "mirror": ["build-coord"],
        **(bridge or {}),
    }
    try:
        async with running_host(
            root,
            components,
            agents=agents,
            extra={"bridge": section},
            others={"bridge": (Role.BRIDGE, ["build-coord", "secret-ops"])},
        ) as host:
            config = bridge_config(
                host.session.config, environ={"HOOK_SECRET": SECRET, "GH_TOKEN": token}
            )
            assert config is not None
            running = await _start_bridge(
                host, config, clock, patience=patience, catch_up_every_s=catch_up_every_s
            )
            github.set_webhook(running.url + "/webhook", SECRET)
            loop = Loop(host, github, running, issue, token, patience, catch_up_every_s)
            try:
                yield loop
            finally:
                await loop.bridge.stop()
    finally:
        await github.stop()


async def until(
    holds: Callable[[], bool], *, timeout_s: float = 20.0, what: str = "the condition"
) -> None:
    """Wait until ``holds()`` is true (work the bridge puts off is not awaited by
    :meth:`Loop.delivered`)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not holds():
        assert asyncio.get_running_loop().time() < deadline, f"{what} never came true"
        await asyncio.sleep(0.05)


async def mirrored(loop: Loop, *, timeout_s: float = 20.0) -> None:
    """Wait until the mirror has taken every act and refreshed the status comment."""
    await loop.delivered()
    mirror = loop.bridge.mirror
    assert mirror is not None
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not mirror.idle():
        assert asyncio.get_running_loop().time() < deadline, "the mirror did not catch up"
        await asyncio.sleep(0.05)
    await asyncio.sleep(loop.bridge.config.status_every_s * 2 + 0.1)
