"""The demo's GitHub part, on the local GitHub stand-in (real HTTP, real signed webhooks).

A maintainer asks for a release vote in a comment on the issue linked to ``release``;
the bridge injects it as a signed act; the agents vote; the decision and the summary
land on the issue as comments, beside one status comment edited in place. A drive-by
comment from someone who may not speak is refused. Then the kill label goes on the
issue: the channel stops, and a further request reaches no agent. Finally the facts are
committed to the repository through the Git Data API and verified as committed.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from agora.bridge.config import bridge_config
from agora.bridge.service import Bridge
from agora.bridge.standin import GitHubStandIn
from agora.cli.session import Session
from agora.core.verify import verify_directory
from agora.host.batch import Delivery
from agora.host.service import Host

REPO: Final = "octo/agora-demo"
HUMAN: Final = "mona"
BOT: Final = "agora-bridge[bot]"
SECRET_ENV: Final = "AGORA_DEMO_WEBHOOK_SECRET"  # noqa: S105 - a variable name
TOKEN_ENV: Final = "AGORA_DEMO_GITHUB_TOKEN"  # noqa: S105 - a variable name
REQUEST: Final = "/agora request ship v0.3: tests pass, changelog reviewed"
WAIT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class StandInGitHub:
    """The stand-in, set up with a repository, an issue and the bridge's credentials."""

    github: GitHubStandIn
    url: str
    issue: int
    environ: dict[str, str]

    def bridge_section(self, channel: str) -> dict[str, Any]:
        return {
            "webhook_secret": {"env": SECRET_ENV},
            "listen": {"port": 0},
            "github": {"api_url": self.url, "token": {"env": TOKEN_ENV}, "login": BOT},
            "links": {channel: f"{REPO}#{self.issue}"},
            "mirror": [channel],
            "pacing": {"status_every_s": 0.5},
            "facts": {"commit": "api", "repo": REPO, "every_facts": 1_000_000, "every_s": 86400},
        }


async def start_standin() -> StandInGitHub:
    github = GitHubStandIn()
    url = await github.start()
    github.add_user(HUMAN, association="MEMBER")
    github.add_user("drive-by", association="NONE")
    github.add_user(BOT, type="Bot", association="COLLABORATOR")
    github.create_repo(REPO)
    issue = github.create_issue(REPO, "Release coordination", "The agents vote here.", by=HUMAN)
    environ = {SECRET_ENV: "demo-webhook-secret", TOKEN_ENV: github.issue_token(BOT)}
    return StandInGitHub(github=github, url=url, issue=issue, environ=environ)


async def github_part(
    *,
    session: Session,
    host: Host,
    standin: StandInGitHub,
    deliveries: list[Delivery],
    channel: str,
    say: Callable[[str], None],
) -> dict[str, int]:
    settings = bridge_config(session.config, environ=standin.environ)
    if settings is None:  # pragma: no cover - the demo writes the section itself
        raise RuntimeError("the demo's configuration has no bridge section")
    bridge = Bridge(
        config=settings,
        channels=set(session.config.channels),
        key=session.key(settings.identity),
        registry=session.registry,
        facts=host.recorder,
    )
    github = standin.github
    if host.client is None:  # pragma: no cover - the host is started first
        raise RuntimeError("the host is not connected")
    await bridge.start(host.client)
    github.set_webhook(bridge.url + "/webhook", standin.environ[SECRET_ENV])
    try:
        say("")
        say(f"4. GitHub (a local stand-in at {standin.url}). {REPO}#{standin.issue} is linked")
        say(f"   to #{channel}. {HUMAN} comments: {REQUEST!r}")
        github.comment(REPO, standin.issue, REQUEST, by=HUMAN)
        github.comment(REPO, standin.issue, "me too!", by="drive-by")
        mirror = bridge.mirror
        assert mirror is not None  # noqa: S101 - the demo mirrors its channel
        await github.drain()
        await host.settle()
        await _until(mirror.idle, "the mirror")
        say("   The bridge signed it as an act and the agents voted. The channel's decisions")
        say(f"   and summaries landed on the issue as {mirror.posted} comments, beside one")
        say("   status comment edited in place.")
        say("   A comment from someone who may not speak was refused, and recorded.")
        say(f"   {HUMAN} adds the label agora:kill.")
        github.add_label(REPO, standin.issue, "agora:kill", by=HUMAN)
        await _until(
            lambda: host.killswitch.state.stopped_by("coordinator", channel) is not None,
            "the kill",
        )
        before = len(deliveries)
        github.comment(REPO, standin.issue, "/agora request ship v0.4 right now", by=HUMAN)
        await github.drain()
        await _until(
            lambda: bridge.inbound is not None and bridge.inbound.counters.injected >= 2,
            "the request",
        )
        await host.settle()
        after_kill = sum(1 for d in deliveries[before:] if d.act.channel == channel)
        say(f"   Another request arrives as a signed act, and reaches {after_kill} agents.")
        committer = bridge.committer
        assert committer is not None  # noqa: S101 - the demo commits through the API
        await committer.commit()
        committed = _verify_committed(github, session, say)
        inbound = bridge.inbound
        assert inbound is not None  # noqa: S101 - started with the bridge
        return {
            "comments_posted": mirror.posted,
            "injected": inbound.counters.injected,
            "refused": inbound.counters.refused,
            "killed": inbound.counters.killed,
            "deliveries_after_kill": after_kill,
            "commits": len(committer.commits),
            "committed_facts_verified": committed,
        }
    finally:
        await bridge.stop()


async def _until(done: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not done():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the demo waited {WAIT_S:.0f} s for {what}")
        await asyncio.sleep(0.05)


def _verify_committed(github: GitHubStandIn, session: Session, say: Callable[[str], None]) -> bool:
    files = github.files_at(REPO, "main")
    checked = session.config.root / "facts-from-github"
    shutil.rmtree(checked, ignore_errors=True)
    for name, data in files.items():
        if name.startswith("facts/"):
            path = checked / name.removeprefix("facts/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    report = verify_directory(checked, session.registry)
    say(
        f"   The facts were committed to {REPO} through the Git Data API: "
        f"{report.entries} facts, {'verified' if report.ok else report.problem}."
    )
    return report.ok
