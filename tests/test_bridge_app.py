"""The bridge as a GitHub App: installation tokens, and failed deliveries redelivered.

A label added while the bridge was down is not a comment the catch-up could list; as an
App, the bridge asks GitHub to redeliver what failed, so the kill still happens.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agora.bridge.config import bridge_config
from agora.bridge.service import Bridge
from agora.bridge.standin import GitHubStandIn
from agora.cli.workspace import AgentPlan
from agora.core.envelope import EventKind
from agora.core.keys import Role
from tests.harness import running_host

REPO = "octo/repo"
SECRET = "app-hook-secret"  # noqa: S105 - a test fixture, not a credential
APP_ID = 4711


async def test_failed_deliveries_are_redelivered_when_the_bridge_comes_back(
    tmp_path: Path, components: dict[str, Path]
) -> None:
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
        }
        agents = {"synth-agent": AgentPlan("chatty", ("build-coord",))}
        async with running_host(
            tmp_path / "ws",
            components,
            agents=agents,
            extra={"bridge": section},
            others={"bridge": (Role.BRIDGE, ["build-coord"])},
        ) as h:
            settings = bridge_config(h.session.config, environ={"HOOK": SECRET})
            assert settings is not None

            def bridge_on(port: int) -> Bridge:
                return Bridge(
                    config=replace(settings, listen_port=port),
                    channels=set(h.session.config.channels),
                    key=h.session.key("bridge"),
                    registry=h.session.registry,
                )

            bridge = bridge_on(0)
            await bridge.start(h.client)
            github.set_webhook(bridge.url + "/webhook", SECRET, app_id=APP_ID)
            port = int(bridge.url.rsplit(":", 1)[1])
            await bridge.stop()
            github.add_label(REPO, issue, "agora:kill", by="mona")  # nobody listening
            await github.drain()
            assert [d.status_code for d in github.deliveries if d.event == "issues"] == [0]

            bridge = bridge_on(port)
            await bridge.start(h.client)
            await bridge.caught_up.wait()
            await github.drain()
            await h.running().killswitch.wait_for(lambda s: s.blocks("synth-agent", "build-coord"))
            await bridge.stop()
            await h.settle()
            killed = h.events(EventKind.KILLED)
        assert len(killed) == 1 and killed[0].actor == "bridge"
        redelivered = [d for d in github.deliveries if d.redelivery and d.event == "issues"]
        assert len(redelivered) == 1
    finally:
        await github.stop()
