"""The facts committed to the repository (Git Data API, or a local checkout) verify."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agora.bridge.commit import FactsCommitter
from agora.bridge.config import FactsCommit
from agora.cli.workspace import AgentPlan
from agora.core.factlog import FactsSnapshot
from agora.core.verify import verify_directory
from tests.bridge_harness import HUMAN, REPO, github_loop

SYNTH = {"synth-agent": AgentPlan("chatty", ("build-coord",))}


def _write(files: dict[str, bytes], into: Path) -> Path:
    for relative, data in files.items():
        path = into / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return into


async def test_facts_are_committed_through_the_git_data_api_and_verify(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # committed only when the test says so: the committer's own round (once a second,
    # when due) could otherwise take the second comment's facts first
    rarely = {"every_facts": 1_000_000, "every_s": 3600}
    settings = {"facts": {"commit": "api", "repo": REPO, **rarely}}
    async with github_loop(tmp_path / "ws", components, agents=SYNTH, bridge=settings) as loop:
        loop.github.comment(REPO, loop.issue, "first", by=HUMAN)
        await loop.delivered()
        committer = loop.bridge.committer
        assert committer is not None
        first = await committer.commit()
        loop.github.comment(REPO, loop.issue, "second", by=HUMAN)
        await loop.delivered()
        second = await committer.commit()
        assert await committer.commit() is None  # nothing new: no empty commit
        files = loop.github.files_at(REPO, "main")
        registry = loop.host.session.registry
        head = loop.github.head(REPO)
    assert first and second and head == second
    facts = {k.removeprefix("facts/"): v for k, v in files.items() if k.startswith("facts/")}
    assert "log.jsonl" in facts and "coordination.yaml" in facts
    assert not any(name in (".lock", ".position") for name in facts)
    assert "README.md" in files  # committed on top of the branch, not instead of it
    report = verify_directory(_write(facts, tmp_path / "checked"), registry)
    assert report.ok, report.problem
    assert report.entries == facts["log.jsonl"].count(b"\n")


async def test_facts_can_be_committed_into_a_local_checkout(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    checkout = _git_checkout(tmp_path / "repo")
    settings = {"facts": {"commit": "local", "checkout": str(checkout)}}
    async with github_loop(tmp_path / "ws", components, agents=SYNTH, bridge=settings) as loop:
        loop.github.comment(REPO, loop.issue, "hello", by=HUMAN)
        await loop.delivered()
        assert loop.bridge.committer is not None
        sha = await loop.bridge.committer.commit()
        registry = loop.host.session.registry
    log = _git(checkout, "log", "--format=%H %s")
    assert log.startswith(f"{sha} agora: facts up to ")
    assert verify_directory(checkout / "facts", registry).ok


def _git(checkout: Path, *arguments: str) -> str:
    return subprocess.run(
        ["git", "-C", str(checkout), *arguments], capture_output=True, text=True, check=True
    ).stdout


def _git_checkout(path: Path) -> Path:
    path.mkdir()
    _git(path, "init", "--quiet", "-b", "main")
    _git(path, "config", "user.email", "agora@example.invalid")
    _git(path, "config", "user.name", "agora")
    return path


def test_a_commit_is_due_after_n_facts_or_after_the_interval() -> None:
    class Source:
        size = 0
        failure: str | None = None

        def snapshot(self) -> FactsSnapshot:
            raise AssertionError("not taken")

    now = [0.0]
    source = Source()
    committer = FactsCommitter(
        settings=FactsCommit("api", REPO, "main", "facts", 60.0, 500, None),
        source=source,
        client=None,
        writer=None,
        clock=lambda: now[0],
    )
    assert not committer.due()  # nothing recorded
    source.size = 499
    assert not committer.due()  # fewer than every_facts, and the interval has not passed
    source.size = 500
    assert committer.due()
    source.size = 1
    now[0] = 59.0
    assert not committer.due()
    now[0] = 60.0
    assert committer.due()
    source.failure = "the fact log could not be made durable"
    assert not committer.due()  # a stopped recorder's facts may not be on the disk
