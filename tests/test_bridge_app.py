"""The bridge as a GitHub App: installation tokens, and failed deliveries redelivered.

A comment's deletion while the bridge was down is nothing the catch-up could list; as
an App, the bridge asks GitHub to redeliver what failed, oldest first, so it is
recorded deleted. A label event the catch-up found already is judged once, however it
comes again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agora.bridge.config import BridgeConfig, bridge_config
from agora.bridge.service import Bridge
from agora.bridge.standin import Fault, GitHubStandIn
from agora.cli.workspace import AgentPlan
from agora.core.envelope import EventKind
from agora.core.keys import Role
from tests.harness import Harness, running_host

REPO = "octo/repo"
SECRET = "app-hook-secret"  # noqa: S105 - a test fixture, not a credential
APP_ID = 4711


@dataclass
class AppLoop:
    """The stand-in, a host and a bridge that acts as a GitHub App."""

    github: GitHubStandIn
    host: Harness
    issue: int
    settings: BridgeConfig
    bridge: Bridge | None = None
    port: int = 0

    async def start_bridge(self) -> Bridge:
        """Start the bridge (again, at the address GitHub posts to) and let it catch up."""
        self.bridge = Bridge(
            config=replace(self.settings, listen_port=self.port),
            channels=set(self.host.session.config.channels),
            key=self.host.session.key("bridge"),
            registry=self.host.session.registry,
        )
        await self.bridge.start(self.host.client)
        self.port = int(self.bridge.url.rsplit(":", 1)[1])
        await self.bridge.caught_up.wait()
        await self.github.drain()
        await self.host.settle()
        return self.bridge

    async def stop_bridge(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
            self.bridge = None


@asynccontextmanager
async def app_loop(tmp_path: Path, components: dict[str, Path]) -> AsyncIterator[AppLoop]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "app.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    github = GitHubStandIn(hook_timeout_s=1.0)
    url = await github.start()
    try:
        github.add_user("mona", association="MEMBER")
        github.create_repo(REPO)
        issue = github.create_issue(REPO, "Coordination", "", by="mona")
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        github.register_app(APP_ID, public)
        installation = github.install(APP_ID, REPO)
        section = {
            "webhook_secret": {"env": "HOOK"},
            "listen": {"port": 0},
            "github": {
                "api_url": url,
                "app": {
                    "id": APP_ID,
                    "private_key": {"file": str(pem)},
                    "installation": installation,
                },
                "login": "agora-bridge[bot]",
            },
            "links": {"build-coord": f"{REPO}#{issue}"},
            "mirror": [],
        }
        agents = {"synth-agent": AgentPlan("chatty", ("build-coord",))}
        async with running_host(
            tmp_path / "ws",
            components,
            agents=agents,
            extra={"bridge": section},
            others={"bridge": (Role.BRIDGE, ["build-coord", "secret-ops"])},
        ) as host:
            settings = bridge_config(host.session.config, environ={"HOOK": SECRET})
            assert settings is not None
            loop = AppLoop(github, host, issue, settings)
            bridge = await loop.start_bridge()
            github.set_webhook(bridge.url + "/webhook", SECRET, app_id=APP_ID)
            try:
                yield loop
            finally:
                await loop.stop_bridge()
    finally:
        await github.stop()


async def test_failed_deliveries_are_redelivered_when_the_bridge_comes_back(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with app_loop(tmp_path, components) as app:
        github = app.github
        await app.stop_bridge()
        github.add_label(REPO, app.issue, "agora:kill", by="mona")  # nobody listening
        await github.drain()
        assert [d.status_code for d in github.deliveries if d.event == "issues"] == [0]
        await app.start_bridge()
        await app.host.running().killswitch.wait_for(
            lambda s: s.blocks("synth-agent", "build-coord")
        )
        await app.stop_bridge()
        await app.host.settle()
        killed = app.host.events(EventKind.KILLED)
    assert len(killed) == 1 and killed[0].actor == "bridge"
    redelivered = [d for d in github.deliveries if d.redelivery and d.event == "issues"]
    assert len(redelivered) == 1


async def test_a_comment_made_and_deleted_while_the_bridge_was_down_is_recorded_deleted(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # Redelivered oldest first, as it happened: the act, then its deletion pointing at it
    # (newest first, the deletion found no act yet and the creation spoke unretracted).
    async with app_loop(tmp_path, components) as app:
        github = app.github
        await app.stop_bridge()
        comment = github.comment(REPO, app.issue, "oops, wrong issue: ship to prod", by="mona")
        github.delete_comment(REPO, comment, by="mona")
        await github.drain()
        await app.start_bridge()
        acts = app.host.acts_by("bridge")
        deleted = app.host.events(EventKind.DELETED)
    assert [act.id for act in acts] == [f"act-gh-comment-{comment}"]
    assert [event.subjects for event in deleted] == [(acts[0].id,)]
    redelivered = [d.action for d in github.deliveries if d.redelivery]
    assert redelivered == ["created", "deleted"]


async def test_a_rate_limit_or_a_refused_redelivery_does_not_stop_the_others(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with app_loop(tmp_path, components) as app:
        github = app.github
        other = github.create_issue(REPO, "Secrets", "", by="mona")
        await github.drain()
        await app.stop_bridge()
        github.add_label(REPO, app.issue, "agora:kill", by="mona")  # its redelivery refused
        github.add_label(REPO, other, "agora:channel:secret-ops", by="mona")
        await github.drain()
        github.inject(Fault.too_many_requests(retry_after=1, method="GET", path="/deliveries$"))
        github.inject(Fault(422, "Validation Failed", method="POST", path="/attempts$"))
        await app.start_bridge()
        linked = [e for e in app.host.events(EventKind.NOTE) if e.reason == "linked"]
        killed = app.host.events(EventKind.KILLED)
    assert len(linked) == 1 and linked[0].channel == "secret-ops"  # only redelivered
    # the kill's redelivery was refused, but the catch-up found its label event
    assert [e.data["delivery"].startswith("event_") for e in killed] == [True]
    redelivered = [(d.event, d.action) for d in github.deliveries if d.redelivery]
    assert redelivered == [("issues", "labeled")]  # the link's; the kill's was refused
    assert github.pending_faults == []  # the rate limit and the refusal were both met
